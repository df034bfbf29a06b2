"""Recurrent incremental decoding: token-by-token logits, prefill, beam reordering, constant state, generation tools."""
import csv
import importlib.util
import re
import sys

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

import fairseq_hgrn2.modules.token_mixer as token_mixer_module
from conftest import REPO, USER_DIR, run_cli
from test_model import ARCH_NAMES, build

VOCAB = 1000
LAYERS = 2
# fairseq's tools and torch's thread pool crawl on a few shared cores: one thread is 100x faster there
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(arch: str, seed: int = 0):
    """fp32 model in eval mode, width 64 (128 for e = 128, which must divide the width), dropout 0."""
    torch.manual_seed(seed)
    width = "128" if arch.endswith("_128") else "64"
    model = build(arch, "--decoder-embed-dim", width, "--decoder-layers", str(LAYERS), "--dropout", "0", vocab=VOCAB)
    with torch.no_grad():  # bounds that differ by channel, not the uniform ones of the initialisation
        model.decoder.lower_bounds.gamma_logits.normal_(0, 1)
    return model.eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(4, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


class CountOps:
    """Counts the calls of the chunked op and of the recurrent step made by the token mixers."""

    def __init__(self, monkeypatch):
        self.chunk, self.step = [], 0
        chunk, step = token_mixer_module.hgrn2_recurrence, token_mixer_module.hgrn2_recurrent_step

        def counted_chunk(*args, **kwargs):
            self.chunk.append(kwargs.get("output_final_state", False))
            return chunk(*args, **kwargs)

        def counted_step(*args, **kwargs):
            self.step += 1
            return step(*args, **kwargs)

        monkeypatch.setattr(token_mixer_module, "hgrn2_recurrence", counted_chunk)
        monkeypatch.setattr(token_mixer_module, "hgrn2_recurrent_step", counted_step)


@pytest.mark.parametrize("arch", ARCH_NAMES)
@torch.no_grad()
def test_token_by_token_equals_full_forward(arch, monkeypatch):
    model = small_model(arch)
    x = tokens(2, 70)  # crosses a 64-token chunk of the full forward
    full, _ = model(x)  # [2, 70, vocab]
    ops = CountOps(monkeypatch)
    state = {}
    for t in range(x.shape[1]):
        # fairseq's generators pass the whole prefix; only its last token may be computed
        logits, _ = model.decoder(x[:, : t + 1], incremental_state=state)
        assert logits.shape == (2, 1, VOCAB)
        diff = (logits[:, 0] - full[:, t]).abs().max().item()
        assert diff <= 1e-4, f"position {t}: max abs diff {diff:.2e}"
    assert ops.chunk == [] and ops.step == LAYERS * x.shape[1]


@pytest.mark.parametrize("arch", ARCH_NAMES)
@torch.no_grad()
def test_prefill_then_step_equals_full_forward(arch, monkeypatch):
    model = small_model(arch)
    x = tokens(3, 75)
    prompt = 67  # longer than a chunk, with a ragged last chunk
    full, _ = model(x)
    ops = CountOps(monkeypatch)
    state = {}
    prefill, _ = model.decoder(x[:, :prompt], incremental_state=state)
    assert ops.chunk == [True] * LAYERS and ops.step == 0  # the chunked op, handing over its final state
    steps = [model.decoder(x[:, : t + 1], incremental_state=state)[0] for t in range(prompt, x.shape[1])]
    assert ops.chunk == [True] * LAYERS and ops.step == LAYERS * (x.shape[1] - prompt)
    decoded = torch.cat([prefill, *steps], dim=1)  # [3, 75, vocab]
    assert decoded.shape == full.shape
    diff = (decoded - full).abs().max().item()
    assert diff <= 1e-4, f"max abs diff {diff:.2e}"


@pytest.mark.parametrize("arch", ["hgrn2_lm_outproduct_4", "hgrn2_lm_expand2"])
@torch.no_grad()
def test_mixer_continues_a_saved_state_over_several_tokens(arch):
    model = small_model(arch)
    mixer, lower_bound = model.decoder.layers[1].token_mixer, model.decoder.lower_bounds()[1]
    x = torch.randn(2, 90, mixer.embed_dim, generator=torch.Generator().manual_seed(4))
    full, _ = mixer(x, lower_bound)
    state = {}
    parts = [mixer(x[:, a:b], lower_bound, incremental_state=state)[0] for a, b in ((0, 40), (40, 41), (41, 90))]
    diff = (torch.cat(parts, dim=1) - full).abs().max().item()  # prompt, one step, then 49 tokens at once
    assert diff <= 1e-5, f"max abs diff {diff:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_half_precision_decoding_keeps_an_fp32_state(dtype):
    model = small_model("hgrn2_lm_outproduct_16").to(dtype)
    x = tokens(2, 30)
    full, _ = model(x)
    state = {}
    prefill, _ = model.decoder(x[:, :20], incremental_state=state)
    steps = [model.decoder(x[:, : t + 1], incremental_state=state)[0] for t in range(20, 30)]
    decoded = torch.cat([prefill, *steps], dim=1)  # [2, 30, vocab]
    assert decoded.dtype == dtype
    assert all(saved["state"].dtype == torch.float32 for saved in state.values())
    assert (decoded.float() - full.float()).abs().max().item() <= 0.05  # logits of size ~4, half-precision rounding


TRITON_DECODE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from test_decoding import small_model, tokens
model, x = small_model("hgrn2_lm_outproduct_16"), tokens(2, 8)
with torch.no_grad():
    full, _ = model(x)  # the torch backend
    state = {}
    with_triton = lambda prefix: model.decoder(prefix, incremental_state=state)[0]
    import os; os.environ["HGRN2_BACKEND"] = "triton"
    decoded = torch.cat([with_triton(x[:, :5])] + [with_triton(x[:, : t + 1]) for t in range(5, 8)], dim=1)
print("max_abs_diff", (decoded - full).abs().max().item())
"""


@pytest.mark.skipif(not importlib.util.find_spec("triton"), reason="triton is not installed")
def test_decoding_through_the_triton_kernels_under_the_interpreter():
    """The GPU route (Triton chunked prefill and step kernel), run by the Triton interpreter in its own process."""
    proc = run_cli(
        [sys.executable, "-c", TRITON_DECODE, REPO / "tests"],
        env={**SINGLE_THREAD, "TRITON_INTERPRET": "1", "HGRN2_BACKEND": "torch"},
    )
    assert "backend on cpu: triton" in proc.stderr, proc.stderr[-2000:]
    diff = float(re.search(r"max_abs_diff (\S+)", proc.stdout).group(1))
    assert diff <= 1e-4, f"max abs diff {diff:.2e}"


def state_tensors(state):
    return {key: tuple(t.shape) for key, saved in state.items() for name, t in saved.items() if t is not None}


@pytest.mark.parametrize("arch", ["hgrn2_lm_outproduct_16", "hgrn2_lm_expand2"])
@torch.no_grad()
def test_state_has_the_same_size_at_context_10_and_1000(arch):
    model = small_model(arch)
    shapes = {}
    for context in (10, 1000):
        x = tokens(2, context + 1)
        state = {}
        model.decoder(x[:, :context], incremental_state=state)
        model.decoder(x, incremental_state=state)
        shapes[context] = state_tensors(state)
    assert shapes[10] == shapes[1000]
    mixer = model.decoder.layers[0].token_mixer
    H, K, V = mixer.state_shape
    expected = (2, H, K, V) if arch != "hgrn2_lm_expand2" else (2, 2 * 64, 1, 1)  # expand2: the 2d-vector
    assert sorted(shapes[1000].values()) == [expected] * LAYERS
    assert model.decoder.decoding_state_numel(state) == LAYERS * 2 * H * K * V


@pytest.mark.parametrize("arch", ["hgrn2_lm_outproduct_8", "hgrn2_lm_expand2"])
@torch.no_grad()
def test_reorder_incremental_state_matches_decoding_each_beam_separately(arch):
    model = small_model(arch)
    x = tokens(4, 20)  # 4 beams with different histories
    cont = tokens(4, 6, seed=2)  # the tokens each beam reads after the reordering
    new_order = torch.tensor([2, 0, 2, 3])  # beam search keeps beam 2 twice and drops beam 1
    state = {}
    model.decoder(x[:, :12], incremental_state=state)
    for t in range(12, 20):
        model.decoder(x[:, : t + 1], incremental_state=state)
    model.decoder.reorder_incremental_state_scripting(state, new_order)
    history = torch.cat([x.index_select(0, new_order), cont], dim=1)  # [4, 26]
    joint = torch.cat([model.decoder(history[:, : t + 1], incremental_state=state)[0] for t in range(20, 26)], 1)
    # then fairseq shrinks the batch when a sentence finishes
    model.decoder.reorder_incremental_state_scripting(state, torch.tensor([3, 1]))
    shrunk = model.decoder(torch.cat([history[[3, 1]], cont[[3, 1], :1]], 1), incremental_state=state)[0]
    for row in range(4):
        alone = {}
        model.decoder(history[row : row + 1, :12], incremental_state=alone)
        outs = [model.decoder(history[row : row + 1, : t + 1], incremental_state=alone)[0] for t in range(12, 26)]
        separate = torch.cat(outs[8:], dim=1)  # [1, 6, vocab]
        assert (joint[row] - separate[0]).abs().max().item() <= 1e-4, f"beam {row}"
        if row in (3, 1):
            extra = model.decoder(torch.cat([history[row : row + 1], cont[row : row + 1, :1]], 1), incremental_state=alone)
            assert (shrunk[[3, 1].index(row)] - extra[0][0]).abs().max().item() <= 1e-4, f"shrunk beam {row}"


@torch.no_grad()
def test_beam_search_with_the_state_equals_beam_search_recomputing_the_prefix():
    model = small_model("hgrn2_lm_outproduct_16")
    dictionary = model.decoder.dictionary
    prefix = tokens(2, 5, seed=3)
    sample = {"net_input": {"src_tokens": prefix, "src_lengths": torch.full((2,), 5)}}

    def beam_search(incremental: bool):
        generator = SequenceGenerator([model], dictionary, beam_size=4, max_len_a=0, max_len_b=14, min_len=14)
        generator.model.has_incremental = incremental  # False: fairseq recomputes the whole prefix every step
        return generator.generate([model], sample, prefix_tokens=prefix, bos_token=dictionary.eos())

    with_state, recomputed = beam_search(True), beam_search(False)
    for hyps_state, hyps_full in zip(with_state, recomputed):
        assert len(hyps_state) == 4
        for a, b in zip(hyps_state, hyps_full):
            assert torch.equal(a["tokens"], b["tokens"])
            assert torch.equal(a["tokens"][:5], hyps_state[0]["tokens"][:5])
            assert (a["positional_scores"] - b["positional_scores"]).abs().max().item() <= 1e-4


# --- the tools, on a tiny trained model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("decode_ckpt")
    run_cli(
        [
            "fairseq-train", tiny_data_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
            "--arch", "hgrn2_lm_outproduct_16", "--decoder-embed-dim", "64", "--decoder-layers", "2",
            "--tokens-per-sample", "64", "--cpu", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "1024",
            "--max-update", "3", "--save-dir", save_dir, "--no-epoch-checkpoints", "--no-save-optimizer-state",
            "--disable-validation", "--share-decoder-input-output-embed", "--log-format", "simple",
        ],
        env=SINGLE_THREAD,
    )
    return save_dir / "checkpoint_last.pt"


def hypotheses(output: str, kind: str = "H"):
    """``{sentence id: [hypothesis words, ...]}`` from fairseq-generate/interactive ``H-<id>`` lines."""
    found = {}
    for line in output.splitlines():
        match = re.match(rf"{kind}-(\d+)\t(?:\S+\t)?(.*)$", line)
        if match:
            found.setdefault(int(match.group(1)), []).append(match.group(2).split())
    return found


def test_fairseq_generate_beam_4(trained, tiny_data_bin):
    proc = run_cli(
        [
            "fairseq-generate", tiny_data_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
            "--path", trained, "--cpu", "--gen-subset", "valid", "--beam", "4", "--nbest", "4",
            "--prefix-size", "3", "--max-len-a", "0", "--max-len-b", "10", "--min-len", "10", "--batch-size", "16",
            "--tokens-per-sample", "64", "--sample-break-mode", "eos",
        ],
        env=SINGLE_THREAD,
    )
    hyps, targets = hypotheses(proc.stdout), hypotheses(proc.stdout, "T")
    assert len(targets) > 10 and hyps.keys() == targets.keys(), proc.stdout[-2000:]
    for sid, beams in hyps.items():
        assert len(beams) == 4
        for words in beams:  # the prefix, then 7 generated words
            assert words[:3] == targets[sid][0][:3] and len(words) == 10, (sid, words)


def test_fairseq_interactive(trained, tiny_data_bin, tmp_path):
    (tmp_path / "prompts.txt").write_text("w3 w4 w5\nw60\n")
    proc = run_cli(
        [
            "fairseq-interactive", tiny_data_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
            "--path", trained, "--cpu", "--beam", "4", "--nbest", "2", "--max-len-b", "9", "--min-len", "9",
            "--tokens-per-sample", "64", "--input", tmp_path / "prompts.txt",
        ],
        env=SINGLE_THREAD,
    )
    hyps = hypotheses(proc.stdout)
    assert sorted(hyps) == [0, 1], proc.stdout[-2000:]
    for sid, prompt in ((0, ["w3", "w4", "w5"]), (1, ["w60"])):
        assert len(hyps[sid]) == 2
        for words in hyps[sid]:
            assert words[: len(prompt)] == prompt and len(words) == 9


def test_hub_from_pretrained_then_sample(trained, tiny_data_bin):
    from fairseq_hgrn2.models.hgrn2_lm import HGRN2LanguageModel

    lm = HGRN2LanguageModel.from_pretrained(
        str(trained.parent), checkpoint_file=trained.name, data_name_or_path=str(tiny_data_bin)
    ).eval()
    beam = lm.sample(["w3 w4 w5", "w60"], beam=4, max_len_b=8, min_len=8)
    sampled = lm.sample("w3 w4 w5", beam=1, sampling=True, sampling_topk=10, max_len_b=8, min_len=8)
    for prompt, text in (("w3 w4 w5", beam[0]), ("w60", beam[1]), ("w3 w4 w5", sampled)):
        assert text.split()[: len(prompt.split())] == prompt.split() and len(text.split()) == 8, text


def test_decode_latency_benchmark_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("decode_latency", REPO / "benchmarks/decode_latency.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert benchmark.main(["--quick", "--beams", "0", "--out-dir", str(tmp_path / "bad")]) == 2
    with open(tmp_path / "decode_latency.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["context"]) for r in rows] == [32, 96]
    assert all(float(r["hgrn2_ms"]) > 0 and float(r["transformer_ms"]) > 0 for r in rows)
    # the recurrent state does not grow with the context; the transformer's key/value cache does
    assert rows[0]["hgrn2_state_kib"] == rows[1]["hgrn2_state_kib"]
    assert float(rows[1]["transformer_cache_kib"]) > 2 * float(rows[0]["transformer_cache_kib"])
    assert (tmp_path / "decode_latency.png").stat().st_size > 0
