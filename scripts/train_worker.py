#!/usr/bin/env python3
"""One training process under torchrun: fairseq-train with the rank layout taken from torchrun's environment.

fairseq 0.12 guesses the distributed layout from the CUDA device count, which is wrong on CPUs (no devices) and
for several nodes with one process each (it then decides the world has one process). Passing the layout that
torchrun exports (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) explicitly works in every case. On CPU the
processes talk through gloo and use fairseq's own DDP wrapper, because torch's DDP wants device ids.

Usage (scripts/script_lm.sh runs it): torchrun ... scripts/train_worker.py [--cpu] FAIRSEQ_TRAIN_ARGS...
"""
import os
import sys


def distributed_flags(cpu: bool) -> list:
    """fairseq-train flags describing this process's place in the torchrun job."""
    try:
        world_size, rank, local_rank = (os.environ[k] for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except KeyError as missing:
        sys.exit(f"error: {missing} is not set; run this through torchrun (scripts/script_lm.sh does)")
    flags = [
        "--distributed-world-size", world_size,
        "--distributed-rank", rank,
        "--device-id", local_rank,
        "--distributed-init-method", "env://",
        "--distributed-no-spawn",
        # Every rank reads checkpoint_last.pt itself. Otherwise rank 0 sends it to the others through
        # torch.save/torch.load, and torch >= 2.6 (weights_only) refuses the omegaconf config inside: resuming
        # with several processes crashed. Resuming already needs the save dir on every node (a shared disk).
        "--load-checkpoint-on-all-dp-ranks",
    ]
    if cpu:
        flags += ["--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    return flags


def main() -> None:
    from fairseq_cli.train import cli_main

    args = sys.argv[1:]
    sys.argv = [sys.argv[0], *args, *distributed_flags("--cpu" in args)]
    cli_main()


if __name__ == "__main__":
    main()
