"""Momentum attention (MoAttn) end to end: chosen through the model spec and the pretraining flags and kept by a
checkpoint; the KV cache (preallocated and list, token by token and in chunks), scoring and generation equal full
forwards with momentum on; the comparison command trains two arms that differ only in attention, reproducibly."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.scoring import score_after_prefix
from metalm import Decoder, DecoderConfig, MetaLM
from metalm.decoder import PreallocatedKVCache
from metalm.presets import PRESETS
from metalm.spec import SpecError, resolve_spec
from tests.conftest import tiny_llama
from train.config import ConfigError
from train.pretraining import parse_pretrain_config


def momentum_decoder(positions: str = "rotary", eta: float = 0.8, n_kv_heads: int = 2) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=61,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        max_seq_len=64,
        positions=positions,
        init_std=0.2,
        attention="momentum",
        momentum_eta=eta,
    )
    return Decoder(cfg).eval()


def ids(b: int = 2, t: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 61, (b, t), generator=torch.Generator().manual_seed(seed))


def test_momentum_changes_the_output():
    """The equalities below are not vacuous: the momentum term moves the logits well beyond rounding."""
    dec = momentum_decoder()
    x = ids()
    with torch.no_grad():
        with_momentum = dec(x).logits
        dec.cfg.attention = "sdpa"
        without = dec(x).logits
    assert (with_momentum - without).abs().max() > 0.1


# ---- the KV cache, scoring and generation with momentum on ----


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 15), max_size=6, unique=True),
    preallocated=st.booleans(),
    pad=st.integers(0, 5),
    positions=st.sampled_from(["learned", "rotary", "sinusoidal"]),
    eta=st.floats(0.05, 0.95),
)
def test_cached_decoding_in_chunks_equals_a_full_forward(cuts, preallocated, pad, positions, eta):
    """Any split of the sequence into chunks (one token each is the split at every position), run one chunk at a
    time through either cache, with a left-padded row, gives the full forward's logits at every real position."""
    dec = momentum_decoder(positions, eta)
    x = ids()
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    bounds = [0, *sorted(cuts), 16]
    cache = PreallocatedKVCache(dec.cfg.n_layers, 16) if preallocated else None
    pieces = []
    with torch.no_grad():
        full = dec(x, attention_mask=mask).logits
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            out = dec(x[:, lo:hi], attention_mask=mask[:, :hi], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.past_key_values
    real = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[real], full[real], atol=1e-4, rtol=1e-4)


def test_token_by_token_decoding_equals_a_full_forward_for_both_caches():
    dec = momentum_decoder()
    x = ids()
    with torch.no_grad():
        full = dec(x).logits
        for cache in (PreallocatedKVCache(dec.cfg.n_layers, 16), None):
            pieces = []
            for t in range(16):
                out = dec(x[:, t : t + 1], past_key_values=cache, use_cache=True)
                pieces.append(out.logits)
                cache = out.past_key_values
            torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=1e-4)


def test_padding_inside_a_row_is_not_counted_in_the_momentum_decay():
    """Padding between real keys (a shared prefix cache, then a left-padded context) adds nothing and does not
    lengthen the decay: the momentum of the real keys alone, ``sum_j eta^(t - j) v_j`` over real positions."""
    from metalm.attention import momentum_term

    v = torch.randn(1, 2, 9, 4)
    real = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    padded = momentum_term(v, 4, 0.7, real)
    alone = momentum_term(v[:, :, real[0]], 4, 0.7, None)
    torch.testing.assert_close(padded, alone, atol=1e-6, rtol=1e-5)


def test_left_padding_gives_the_unpadded_logits_with_momentum():
    """Padding keys add nothing to the momentum, so a left-padded row reads as the row alone."""
    dec = momentum_decoder("learned")
    x = ids(b=1, t=10)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(dec(padded, attention_mask=mask).logits[:, 3:], dec(x).logits, atol=1e-5, rtol=0)


def full_forward_logprob(dec: Decoder, context: list[int], continuation: list[int]) -> float:
    """The continuation's summed log-probability from one plain forward over context + continuation."""
    seq = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = dec(seq).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(context) - 1 + i, tok]) for i, tok in enumerate(continuation))


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    n_options=st.integers(1, 3),
    option_len=st.integers(1, 4),
    prefix_len=st.integers(0, 4),
    seed=st.integers(0, 1000),
)
def test_scoring_after_a_prefix_equals_full_forwards_with_momentum(lengths, n_options, option_len, prefix_len, seed):
    """``score_after_prefix`` (contexts left-padded into one batch, each run once, options over its cache, and an
    optional shared prefix cache) gives each option the log-probability of a full forward over the whole text."""
    dec = momentum_decoder("rotary")
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, 61, (prefix_len,), generator=gen).tolist()
    contexts = [torch.randint(0, 61, (n,), generator=gen).tolist() for n in lengths]
    options = [
        [torch.randint(0, 61, (1 + (option_len + j) % 4,), generator=gen).tolist() for j in range(n_options)]
        for _ in contexts
    ]
    width = max(lengths)
    batch = torch.zeros(len(contexts), width, dtype=torch.long)
    mask = torch.zeros(len(contexts), width, dtype=torch.long)
    for b, c in enumerate(contexts):
        batch[b, width - len(c) :] = torch.tensor(c)
        mask[b, width - len(c) :] = 1
    past = None
    with torch.no_grad():
        if prefix:
            past = dec(torch.tensor([prefix]), use_cache=True).past_key_values
        scores = score_after_prefix(dec, dec.embed(batch), mask, options, prefix=past)
    for b, c in enumerate(contexts):
        for j, option in enumerate(options[b]):
            expected = full_forward_logprob(dec, prefix + c, option)
            assert scores[b][j].logprob == pytest.approx(expected, abs=1e-3)
            assert scores[b][j].n_tokens == len(option)


def test_greedy_generation_with_the_cache_equals_argmax_of_full_forwards():
    dec = momentum_decoder("learned")
    prompt = ids(b=1, t=6)
    with torch.no_grad():
        out = dec.generate(prompt, max_new_tokens=8)
        seq = prompt
        for _ in range(8):
            nxt = dec(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out[:, : seq.shape[1]], seq)


# ---- the attention choice through the spec, the flags and checkpoints ----


def test_a_spec_chooses_momentum_and_a_checkpoint_keeps_it(tmp_path):
    spec = {"preset": "tiny-gpt", "decoder": {"dim": 32, "n_layers": 1, "attention": "momentum", "momentum_eta": 0.6}}
    torch.manual_seed(0)
    model, _ = MetaLM.from_spec(spec, vocab_size=300, max_seq_len=32)
    assert (model.decoder.cfg.attention, model.decoder.cfg.momentum_eta) == ("momentum", 0.6)
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "spec.json").read_text())
    assert saved["decoder"]["attention"] == "momentum" and saved["decoder"]["momentum_eta"] == 0.6
    again = MetaLM.from_pretrained(tmp_path / "ckpt")
    assert (again.decoder.cfg.attention, again.decoder.cfg.momentum_eta) == ("momentum", 0.6)
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(again.decoder(x).logits, model.eval().decoder(x).logits)


def test_a_pretrained_decoder_takes_the_attention_fields_but_no_shape_fields(tmp_path):
    path = tmp_path / "llama"
    tiny_llama().save_pretrained(path)
    model, _ = MetaLM.from_spec({"decoder": {"from_hf": str(path), "attention": "momentum", "momentum_eta": 0.5}})
    assert model.decoder.cfg.attention == "momentum" and model.decoder.cfg.momentum_eta == 0.5
    assert all(block.attn.cfg is model.decoder.cfg for block in model.decoder.blocks)
    with pytest.raises(SpecError, match=r"fields \['dim'\] beside a pretrained decoder"):
        resolve_spec({"decoder": {"from_hf": str(path), "dim": 8, "attention": "momentum"}}, PRESETS)
    with pytest.raises(SpecError, match="momentum_eta = 1.5"):
        MetaLM.from_spec({"decoder": {"from_hf": str(path), "momentum_eta": 1.5}})


def test_pretraining_flags_and_yaml_set_the_attention(tmp_path):
    cfg = parse_pretrain_config(["--preset", "tiny-gpt", "--attention", "momentum", "--momentum_eta", "0.7"])
    assert cfg.spec()["decoder"]["attention"] == "momentum" and cfg.spec()["decoder"]["momentum_eta"] == 0.7
    assert "attention" not in parse_pretrain_config(["--preset", "tiny-gpt"]).spec()["decoder"]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: tiny-gpt\nmodel: {decoder: {attention: momentum, momentum_eta: 0.3}}\n")
    spec = parse_pretrain_config(["--config", str(yaml_file)]).spec()
    assert (spec["decoder"]["attention"], spec["decoder"]["momentum_eta"]) == ("momentum", 0.3)
    over = parse_pretrain_config(["--config", str(yaml_file), "--attention", "sdpa"]).spec()
    assert (over["decoder"]["attention"], over["decoder"]["momentum_eta"]) == ("sdpa", 0.3)
    with pytest.raises(ConfigError, match="attention = 'fast': expected one of auto, sdpa"):
        parse_pretrain_config(["--attention", "fast"])
    with pytest.raises(ConfigError, match="momentum_eta = 1.0: expected at least 0 and below 1"):
        parse_pretrain_config(["--momentum_eta", "1"])


# ---- the comparison command ----


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small world of this module's own: pretraining writes its tokenizer and shards into the world directory."""
    from data.world import generate_world

    out = tmp_path_factory.mktemp("w") / "world"
    return generate_world(out, seed=3, n_train=40, n_val=12, n_test=2, n_heldout=4, n_docs=20)


@pytest.fixture(scope="module")
def compared(world, tmp_path_factory):
    """A miniature comparison on the session's small world: two seeds, a few steps, one short trial."""
    from analysis.moattn import CompareSettings, compare_attention, write_results

    root = tmp_path_factory.mktemp("moattn")
    s = CompareSettings(
        world=str(world),
        runs=str(root / "runs"),
        seeds=[0, 1],
        decoder={"dim": 32, "n_layers": 1, "n_heads": 2},
        steps=3,
        seq_len=64,
        batch_size=4,
        eval_batches=2,
        shots=[0, 1],
        trials=1,
        limit=6,
    )
    results = compare_attention(s)
    write_results(results, root / "out")
    return s, results, root


def test_the_two_arms_differ_only_in_attention(compared):
    from analysis.moattn import arm_config

    s, _, _ = compared
    a, b = arm_config(s, "sdpa", 1).to_dict(), arm_config(s, "momentum", 1).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"attention", "out"}
    assert (a["attention"], b["attention"]) == ("sdpa", "momentum")
    spec_a, spec_b = arm_config(s, "sdpa", 1).spec(), arm_config(s, "momentum", 1).spec()
    spec_a["decoder"].pop("attention"), spec_b["decoder"].pop("attention")
    assert spec_a == spec_b


def test_each_seed_starts_both_arms_from_the_same_weights(compared):
    """Same seed, same initial weights: the arms' first-step losses differ only through the momentum itself, and
    each run's checkpoint records its attention."""
    _, results, _ = compared
    for run in results["runs"]:
        saved = MetaLM.from_pretrained(run["run"] + "/final")
        assert saved.decoder.cfg.attention == run["arm"]
    from analysis.moattn import arm_config
    from data.tokenizer import Tokenizer
    from train.pretraining import build_model

    s = compared[0]
    tok = Tokenizer.load(results["runs"][0]["run"] + "/final")
    first, second = (build_model(arm_config(s, arm, 1), tok).state_dict() for arm in ("sdpa", "momentum"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_results_have_every_figure_and_files(compared):
    s, results, root = compared
    saved = json.loads((root / "out" / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    assert len(saved["runs"]) == 2 * len(s.seeds)
    for arm in ("sdpa", "momentum"):
        row = saved["summary"]["arms"][arm]
        assert set(row) == {"val_ppl", *(f"{t}/{k}shot" for t in ("world-entail", "world-choice") for k in (0, 1))}
        for name, fig in row.items():
            assert len(fig["seeds"]) == 2 and fig["std"] >= 0
            assert fig["mean"] == pytest.approx(sum(fig["seeds"]) / 2)
            if name != "val_ppl":
                assert all(0 <= v <= 1 for v in fig["seeds"])
    for run in saved["runs"]:
        assert run["val_ppl"] == pytest.approx(2.718281828 ** run["val_loss"], rel=1e-6)
    diff = saved["summary"]["momentum_minus_sdpa"]["val_ppl"]
    by = {(r["arm"], r["seed"]): r["val_ppl"] for r in saved["runs"]}
    assert diff["seeds"] == pytest.approx([by["momentum", s_] - by["sdpa", s_] for s_ in (0, 1)])
    table = (root / "out" / "results.md").read_text()
    assert "validation perplexity" in table and "world-choice accuracy, k = 1" in table
    assert (root / "out" / "moattn.png").stat().st_size > 1000


def test_a_seed_reproduces_its_run(compared, tmp_path):
    from dataclasses import replace

    from analysis.moattn import run_arm

    s, results, _ = compared
    again = run_arm(replace(s, runs=str(tmp_path)), "momentum", 1)
    first = next(r for r in results["runs"] if (r["arm"], r["seed"]) == ("momentum", 1))
    assert again["val_loss"] == pytest.approx(first["val_loss"], abs=1e-6)
    assert again["icl"] == first["icl"]


def test_bad_settings_are_refused():
    from analysis.moattn import CompareSettings, arm_config

    with pytest.raises(ValueError, match="distinct seeds"):
        CompareSettings(seeds=[1, 1])
    with pytest.raises(ValueError, match="eta = 1.0"):
        CompareSettings(eta=1.0)
    with pytest.raises(ValueError, match="the arms set them"):
        CompareSettings(decoder={"attention": "eager"})
    with pytest.raises(ValueError, match="arm 'eager'"):
        arm_config(CompareSettings(), "eager", 0)


def test_the_command_line_builds_the_settings_and_refuses_bad_flags(monkeypatch, capsys):
    import analysis.moattn as moattn
    from analysis.compare_attention import main

    seen = []

    def stop(settings):
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(moattn, "compare_attention", stop)
    with pytest.raises(SystemExit):
        main(["--seeds", "3,4", "--steps", "7", "--decoder", "{dim: 64}", "--eta", "0.5", "--shots", "0,2"])
    s = seen[0]
    assert (s.seeds, s.steps, s.decoder, s.eta, s.shots) == ([3, 4], 7, {"dim": 64}, 0.5, [0, 2])
    for bad, message in (
        (["--decoder", "[1, 2]"], "expected a YAML mapping"),
        (["--seeds", "a,b"], "expected comma-separated integers"),
        (["--eta", "1.5"], "eta = 1.5"),
        (["--decoder", "{attention: eager}"], "the arms set them"),
    ):
        with pytest.raises(SystemExit):
            main(bad)
        assert message in capsys.readouterr().err
