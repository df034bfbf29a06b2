#!/usr/bin/env python3
"""Check a training launch and work out its batch layout; scripts/script_lm.sh calls this before starting.

    python scripts/launch_plan.py --arch ARCH --gpus N [--nodes M] [--cpu-procs P] [--global-batch G]
                                  [--batch-size B] [--checkpoint checkpoint_last.pt] [--init-checkpoint CKPT]
                                  [--data DATA_DIR]
    python scripts/launch_plan.py --list-archs

Checks that ARCH is one of the plugin's architectures, that the global batch splits evenly over the processes,
and that this machine has the GPUs asked for. On success prints one line, ``DEVICE PROCS_PER_NODE BATCH
UPDATE_FREQ DONE_UPDATES`` (the updates in --checkpoint, 0 without one), and explains the layout on stderr; on
failure prints a one-line error and exits 2. One process does all of it: importing fairseq takes seconds.

A checkpoint given (--checkpoint if it exists, --init-checkpoint always) must be readable, hold ARCH and, with --data,
have the vocabulary of DATA_DIR/dict.txt: a truncated file, another architecture's model or another dictionary is
refused here, before anything is written.
"""
import argparse
import logging
import os
import sys

from fairseq_hgrn2.checkpoints import CheckpointError


def architectures() -> list:
    """The registered architecture names, from the plugin's table (the single source of truth)."""
    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    from fairseq_hgrn2.models.hgrn2_lm import ARCHITECTURES

    return list(ARCHITECTURES)


def check_checkpoint(path: str, arch: str, data_dir: str = None) -> dict:
    """checkpoint_info of ``path``; raises CheckpointError unless it is readable, holds a model of ``arch`` and
    (given ``data_dir``) has the vocabulary of its dict.txt."""
    from checkpoint_info import check_data, checkpoint_info

    info = checkpoint_info(path)
    if info["arch"] != arch:
        raise CheckpointError(
            f"checkpoint {path} holds a {info['arch']} model, not {arch}: give its architecture, "
            "or move the checkpoint away (or set SAVE_ROOT to another folder) to train a new model"
        )
    if data_dir:
        check_data(path, info, data_dir)
    return info


def batch_layout(global_batch: int, workers: int, max_batch: int) -> tuple:
    """(sequences per process per step, --update-freq) so that workers x batch x update_freq == global_batch.

    Takes the largest per-process batch not above ``max_batch`` that divides the per-process share, so memory
    stays bounded and the global batch stays exact. Raises ValueError when no exact layout exists.
    """
    if global_batch % workers:
        raise ValueError(
            f"a global batch of {global_batch} sequences cannot be split evenly over {workers} processes; "
            f"use a process count that divides {global_batch}"
        )
    per_worker = global_batch // workers
    batch = max(b for b in range(1, min(max_batch, per_worker) + 1) if per_worker % b == 0)
    return batch, per_worker // batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list-archs", action="store_true", help="print the architecture names and exit")
    parser.add_argument("--arch")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node; 0 trains on CPU")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--cpu-procs", type=int, default=1, help="processes per node when --gpus is 0")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="most sequences per process per step")
    parser.add_argument("--checkpoint", help="a checkpoint to resume from, if it exists: its updates are reported")
    parser.add_argument("--init-checkpoint", help="a checkpoint the run starts from (--finetune-from-model)")
    parser.add_argument("--data", help="the data dir of the run: checkpoints must have its dictionary")
    args = parser.parse_args()

    if args.list_archs:
        print(" ".join(architectures()))
        return 0

    # cheapest checks first: the batch needs no import, the GPU count needs torch, the architectures fairseq
    device = "cuda" if args.gpus > 0 else "cpu"
    procs = args.gpus if args.gpus > 0 else args.cpu_procs
    workers = procs * args.nodes
    try:
        batch, update_freq = batch_layout(args.global_batch, workers, args.batch_size)
    except ValueError as err:
        unit = "GPUs" if device == "cuda" else "CPU processes"
        print(f"error: {procs} {unit} x {args.nodes} node(s): {err}", file=sys.stderr)
        return 2

    if device == "cuda":
        import torch

        found = torch.cuda.device_count()
        if found < args.gpus:
            why = "" if found else " (CUDA is not available; NUM_GPUS=0 trains on CPU)"
            print(f"error: asked for {args.gpus} GPUs but this machine has {found}{why}", file=sys.stderr)
            return 2

    names = architectures()
    if args.arch not in names:
        print(f"error: unknown architecture '{args.arch}'; choose one of: {' '.join(names)}", file=sys.stderr)
        return 2

    done_updates = 0
    try:
        if args.init_checkpoint:
            check_checkpoint(args.init_checkpoint, args.arch, args.data)
        if args.checkpoint and os.path.exists(args.checkpoint):
            done_updates = check_checkpoint(args.checkpoint, args.arch, args.data)["num_updates"]
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"[launch_plan] {args.global_batch} sequences per update = {workers} processes ({procs} {device} x "
        f"{args.nodes} node(s)) x {batch} sequences x --update-freq {update_freq}",
        file=sys.stderr,
    )
    print(device, procs, batch, update_freq, done_updates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
