#!/usr/bin/env python
"""Per-token generation latency against context length: HGRN2 (recurrent state) against fairseq's transformer_lm.

Usage: python benchmarks/decode_latency.py [--quick] [--contexts 256 512 ...] [--arch ARCH] [--steps N]
                                           [--beams N] [--threads N] [--out-dir DIR]

Both models have the same width (``--width``, 512), depth (``--layers``, 6) and vocabulary (``--vocab``, 50,264:
WikiText-103's GPT-2 BPE), tied embeddings, fp32, eval mode, one prompt. ``transformer_lm`` keeps its defaults
otherwise (8 heads, FFN 2048, sinusoidal positions) and gets ``--decoder-input-dim``/``--decoder-output-dim`` equal
to the width, so that it has no extra projections.

For each context length C, each model first reads a prompt of C tokens into its incremental state (HGRN2: the
chunked op, which hands over its recurrent state; the transformer: its key/value cache, filled in chunks through
fairseq's own layers and checked against a full forward once), then makes ``--steps`` single-token decoding steps
with fairseq's ``incremental_state``. All contexts are prefilled first; each round of steps then runs one step of
every (context, model) pair, so that a change of machine load hits every measurement alike. A step is what fairseq's sequence generator runs per token: the decoder on the prefix (of which only the
new token is computed) and the logits. The median step time is reported, with the state each model carries.
``--beams N`` decodes N hypotheses of the prompt at once, as beam search does: the prompt is read once and its
state copied to the N rows by each decoder's ``reorder_incremental_state`` (fairseq's own, for the transformer).

It prints a table with the ratios and writes ``decode_latency.csv`` and ``decode_latency.png`` to ``--out-dir``.
"""
import argparse
import csv
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fairseq_hgrn2.models  # noqa: E402,F401  (registers the architectures)
from fairseq import options  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.models import ARCH_MODEL_REGISTRY  # noqa: E402

logger = logging.getLogger("decode_latency")
IncrementalState = dict


def make_dictionary(size: int) -> Dictionary:
    dictionary = Dictionary()  # 4 specials
    for i in range(size - len(dictionary)):
        dictionary.add_symbol(f"tok{i}")
    return dictionary


def build_model(arch: str, dictionary: Dictionary, flags):
    """A model exactly as fairseq-train would build it from ``--arch arch flags``, in eval mode."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["unused-data-dir", "--task", "language_modeling", "--arch", arch, *flags])
    cfg = convert_namespace_to_omegaconf(args)  # fills every field of the model's dataclass, as fairseq-train does
    task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return ARCH_MODEL_REGISTRY[arch].build_model(cfg.model, task).eval()


@torch.no_grad()
def prefill_transformer(decoder, prompt: torch.Tensor, chunk: int = 512) -> IncrementalState:
    """Fill the key/value caches of fairseq's TransformerDecoder with ``prompt`` (``[B, C]``), ``chunk`` at a time.

    fairseq's decoder reads only the last token when given an ``incremental_state``, so the prompt goes through
    its layers here, with the causal mask of each chunk against everything cached before it.
    """
    state: IncrementalState = {}
    positions = decoder.embed_positions(prompt)  # [B, C, width]: positions 1..C of the whole prompt
    C = prompt.size(1)
    for start in range(0, C, chunk):
        end = min(C, start + chunk)
        x = decoder.embed_scale * decoder.embed_tokens(prompt[:, start:end])  # [B, c, width]
        if decoder.project_in_dim is not None:
            x = decoder.project_in_dim(x)
        x = x + positions[:, start:end]
        if decoder.layernorm_embedding is not None:
            x = decoder.layernorm_embedding(x)
        x = x.transpose(0, 1)  # [B, c, width] -> [c, B, width], fairseq's layer layout
        # row i (token start + i) sees cached columns 0 .. start + i
        mask = torch.full((end - start, end), float("-inf")).triu(start + 1)  # [c, end]
        for layer in decoder.layers:
            x, _, _ = layer(x, incremental_state=state, self_attn_mask=mask)
    return state


@torch.no_grad()
def prefill_hgrn2(decoder, prompt: torch.Tensor) -> IncrementalState:
    """Read ``prompt`` (``[B, C]``) into the recurrent states: the chunked op hands over its final state."""
    state: IncrementalState = {}
    decoder.extract_features(prompt, incremental_state=state)  # features only: the prompt's logits are not needed
    return state


def state_bytes(state: IncrementalState) -> int:
    """Bytes of every tensor held in a fairseq ``incremental_state``."""
    return sum(t.numel() * t.element_size() for saved in state.values() for t in saved.values() if t is not None)


@torch.no_grad()
def check_transformer_prefill(decoder, vocab: int) -> float:
    """Max abs difference between a step after ``prefill_transformer`` and the full forward (a 300-token prompt)."""
    tokens = torch.randint(4, vocab, (1, 301), generator=torch.Generator().manual_seed(1))
    full, _ = decoder(tokens)  # [1, 301, vocab]
    state = prefill_transformer(decoder, tokens[:, :300], chunk=128)
    step, _ = decoder(tokens, incremental_state=state)  # [1, 1, vocab]
    return (step[0, -1] - full[0, -1]).abs().max().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: width 64, 2 layers, vocab 1000, C in {32, 96}")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--arch", default="hgrn2_lm_outproduct_128", help="the HGRN2 architecture")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=50264)
    parser.add_argument("--steps", type=int, default=40, help="timed decoding steps per model and context")
    parser.add_argument("--beams", type=int, default=1, help="rows decoded per step (beam search's beam)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.contexts, args.width, args.layers, args.vocab, args.steps = [32, 96], 64, 2, 1000, 3
        if args.arch == "hgrn2_lm_outproduct_128":
            args.arch = "hgrn2_lm_outproduct_16"
    if min(args.contexts) < 1 or min(args.steps, args.threads, args.beams) < 1 or args.vocab <= 4:
        logger.error("error: contexts, --steps, --beams and --threads must be positive and --vocab above 4")
        return 2
    if args.arch not in ARCH_MODEL_REGISTRY or not args.arch.startswith("hgrn2_lm"):
        logger.error("error: unknown HGRN2 architecture %r", args.arch)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dictionary = make_dictionary(args.vocab)
    longest = max(args.contexts) + args.steps + 8
    shared = ["--decoder-embed-dim", str(args.width), "--decoder-layers", str(args.layers), "--dropout", "0",
              "--share-decoder-input-output-embed", "--tokens-per-sample", str(longest)]
    try:
        hgrn2 = build_model(args.arch, dictionary, shared)
    except ValueError as error:
        logger.error("error: %s", error)
        return 2
    transformer = build_model(
        "transformer_lm", dictionary,
        shared + ["--decoder-input-dim", str(args.width), "--decoder-output-dim", str(args.width),
                  "--max-target-positions", str(longest)],
    )
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("hgrn2", hgrn2), ("transformer", transformer))}
    logger.info(
        "torch %s, %d thread(s); %s %s params, transformer_lm %s params (width %d, %d layers, vocab %d)",
        torch.__version__, torch.get_num_threads(), args.arch, f"{params['hgrn2']:,}", f"{params['transformer']:,}",
        args.width, args.layers, args.vocab,
    )
    diff = check_transformer_prefill(transformer.decoder, args.vocab)
    if diff > 1e-3:
        logger.error("error: the transformer's chunked prefill differs from its full forward by %.2e", diff)
        return 1
    logger.info("transformer prefill check: max abs diff %.1e against the full forward", diff)

    decoders = {"hgrn2": hgrn2.decoder, "transformer": transformer.decoder}
    prefill = {"hgrn2": prefill_hgrn2, "transformer": prefill_transformer}
    # every context is prefilled first and kept; the timed steps then go round all contexts and both models, one
    # step each per round, so that a change of machine load hits every measurement alike
    runs = {}
    for context in args.contexts:
        gen = torch.Generator().manual_seed(context)
        tokens = torch.randint(4, args.vocab, (1, context + args.steps + 2), generator=gen)  # [1, C + steps + 2]
        for name, decoder in decoders.items():
            start = time.perf_counter()
            state = prefill[name](decoder, tokens[:, :context])
            if args.beams > 1:  # the prompt's state, copied to every beam
                decoder.reorder_incremental_state_scripting(state, torch.zeros(args.beams, dtype=torch.long))
            runs[context, name] = dict(tokens=tokens, state=state, prefill_s=time.perf_counter() - start, times=[])
        logger.info("C=%d prefilled: hgrn2 %.2f s, transformer %.2f s", context,
                    runs[context, "hgrn2"]["prefill_s"], runs[context, "transformer"]["prefill_s"])
    with torch.no_grad():
        for step in range(args.steps + 2):  # 2 warm-up rounds
            for context in args.contexts:
                for name, decoder in decoders.items():
                    run = runs[context, name]
                    # the whole prefix, as fairseq's generators pass it: [beams, C + step + 1]
                    prefix = run["tokens"][:, : context + step + 1].expand(args.beams, -1)
                    start = time.perf_counter()
                    logits, _ = decoder(prefix, incremental_state=run["state"])  # [beams, 1, vocab]
                    logits.log_softmax(-1)
                    if step >= 2:
                        run["times"].append(time.perf_counter() - start)

    rows = []
    for context in args.contexts:
        hgrn2_run, transformer_run = runs[context, "hgrn2"], runs[context, "transformer"]
        ms = {name: 1e3 * statistics.median(runs[context, name]["times"]) for name in decoders}
        rows.append(
            dict(
                context=context, beams=args.beams, hgrn2_ms=round(ms["hgrn2"], 3), transformer_ms=round(ms["transformer"], 3),
                transformer_over_hgrn2=round(ms["transformer"] / ms["hgrn2"], 2),
                hgrn2_state_kib=round(state_bytes(hgrn2_run["state"]) / 1024, 1),
                transformer_cache_kib=round(state_bytes(transformer_run["state"]) / 1024, 1),
                hgrn2_prefill_s=round(hgrn2_run["prefill_s"], 3),
                transformer_prefill_s=round(transformer_run["prefill_s"], 3),
            )
        )
    first = rows[0]["hgrn2_ms"]
    for row in rows:
        row["hgrn2_over_first_context"] = round(row["hgrn2_ms"] / first, 3)

    header = list(rows[0])
    widths = [max(len(h), 8) + 2 for h in header]
    lines = ["".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["".join(str(r[h]).rjust(w) for h, w in zip(header, widths)) for r in rows]
    logger.info("\n%s", "\n".join(lines))
    logger.info(
        "latency of one decoding step for %d beam(s), median of %d steps; transformer_over_hgrn2 > 1: HGRN2 is faster; "
        "hgrn2_over_first_context: HGRN2's latency relative to the shortest context (%d)",
        args.beams, args.steps, rows[0]["context"],
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_beam{args.beams}" if args.beams > 1 else ""
    csv_path, png_path = args.out_dir / f"decode_latency{suffix}.csv", args.out_dir / f"decode_latency{suffix}.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, png_path, args)
    logger.info("wrote %s and %s", csv_path, png_path)
    return 0


def plot(rows, path: Path, args) -> None:
    """Per-token latency and decoding state size against the context length (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = [r["context"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    ax_t.plot(contexts, [r["hgrn2_ms"] for r in rows], marker="o", label=args.arch)  # ms per step of all beams
    ax_t.plot(contexts, [r["transformer_ms"] for r in rows], marker="o", label="transformer_lm")
    ax_m.plot(contexts, [r["hgrn2_state_kib"] / 1024 for r in rows], marker="o", label=f"{args.arch} state")
    ax_m.plot(contexts, [r["transformer_cache_kib"] / 1024 for r in rows], marker="o", label="transformer_lm KV cache")
    for ax, ylabel in ((ax_t, "ms per decoding step (all beams)"), (ax_m, "decoding state (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"Generation, {args.beams} beam(s), CPU ({args.threads} thread(s)): width {args.width}, {args.layers} layers, "
        f"vocab {args.vocab}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # fairseq configures logging on import
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    sys.exit(main())
