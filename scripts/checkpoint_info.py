#!/usr/bin/env python3
"""Print what a fairseq checkpoint of the plugin holds, as one JSON object.

    python scripts/checkpoint_info.py CHECKPOINT [--field NAME]

Fields: arch, token_mixer, expand_ratio, params (distinct parameters: tied embeddings count once),
num_updates, tokens_per_sample, vocab (dictionary entries). With --field, prints only that value. With --data
DATA_DIR, also checks that the checkpoint's vocabulary is that of DATA_DIR/dict.txt. A missing, truncated or
mismatched checkpoint gives a one-line error and exit status 2.
"""
import argparse
import json
import logging
import sys


def checkpoint_info(path: str) -> dict:
    """Architecture, expand ratio, parameter count and progress of the checkpoint at ``path``."""
    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    import torch

    from fairseq_hgrn2.checkpoints import model_summary, read_checkpoint

    state = read_checkpoint(path)  # CheckpointError when missing or unreadable
    model_cfg, task_cfg = state["cfg"]["model"], state["cfg"]["task"]
    # torch.save keeps storage sharing, so a tied input/output embedding loads as one tensor under two names
    distinct = {t.data_ptr(): t.numel() for t in state["model"].values() if isinstance(t, torch.Tensor)}
    history = state.get("optimizer_history") or [{}]
    return {
        "arch": model_cfg.get("arch", model_cfg.get("_name")),
        "token_mixer": model_cfg.get("token_mixer"),
        "expand_ratio": model_cfg.get("expand_ratio"),
        "params": sum(distinct.values()),
        "num_updates": int(history[-1].get("num_updates", 0)),
        "tokens_per_sample": task_cfg.get("tokens_per_sample"),
        "vocab": model_summary(state)["vocab"],
    }


def check_data(path: str, info: dict, data_dir: str) -> None:
    """Raise CheckpointError unless the checkpoint's vocabulary has the size of ``data_dir``'s dictionary."""
    from fairseq.data import Dictionary

    from fairseq_hgrn2.checkpoints import CheckpointError, describe_mismatch

    vocab = len(Dictionary.load(f"{data_dir}/dict.txt"))  # the entries of dict.txt plus fairseq's 4 specials
    problem = describe_mismatch(path, {"vocab": info["vocab"]}, {"vocab": vocab})
    if problem:
        raise CheckpointError(problem)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--field", help="print only this field")
    parser.add_argument("--data", metavar="DATA_DIR", help="check the vocabulary against DATA_DIR/dict.txt")
    args = parser.parse_args()
    from fairseq_hgrn2.checkpoints import CheckpointError

    try:
        info = checkpoint_info(args.checkpoint)
        if args.data:
            check_data(args.checkpoint, info, args.data)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, KeyError) as err:
        print(f"error: cannot read checkpoint {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    print(info[args.field] if args.field else json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
