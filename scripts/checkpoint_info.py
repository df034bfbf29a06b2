#!/usr/bin/env python3
"""Print what a fairseq checkpoint of the plugin holds, as one JSON object.

    python scripts/checkpoint_info.py CHECKPOINT [--field NAME]

Fields: arch, token_mixer, expand_ratio, params (distinct parameters: tied embeddings count once),
num_updates, tokens_per_sample. With --field, prints only that value.
"""
import argparse
import json
import logging
import sys


def checkpoint_info(path: str) -> dict:
    """Architecture, expand ratio, parameter count and progress of the checkpoint at ``path``."""
    logging.disable(logging.WARNING)  # importing fairseq logs noise about optional packages
    import torch
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
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
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--field", help="print only this field")
    args = parser.parse_args()
    try:
        info = checkpoint_info(args.checkpoint)
    except (OSError, RuntimeError, KeyError) as err:
        print(f"error: cannot read checkpoint {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    print(info[args.field] if args.field else json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
