"""The ICL-vs-finetuning analysis (analysis/icl_finetuning.py): its metrics on constructed cases, finetuning that
moves only the key and value rows, the probe's pre-softmax scores, and the study and its command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis.icl_finetuning import (
    METRICS,
    Example,
    Setup,
    finetune_kv,
    kendall,
    kendall_per_layer,
    kv_rows,
    read,
    rec2ftp,
    run_study,
    simam,
    simaou,
    simaou_random,
    summarize,
)
from metalm.decoder import Decoder
from metalm.probes import probe


def basis(d: int, i: int, sign: float = 1.0) -> np.ndarray:
    e = np.zeros(d)
    e[i] = sign
    return e


def test_simaou_is_one_for_the_same_update_and_zero_for_orthogonal_updates():
    d = 8
    zsl = np.stack([basis(d, 0)] * 2)[None]  # (N=1, L=2, d)
    icl = np.stack([basis(d, 1)] * 2)[None]
    same = np.stack([basis(d, 1) * 3.0] * 2)[None]  # scale does not matter: each output is unit-scaled first
    orthogonal = np.stack([basis(d, 1, -1.0)] * 2)[None]  # (-e1 - e0) . (e1 - e0) = 0
    np.testing.assert_allclose(simaou(zsl, icl, same), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(simaou(zsl, icl, orthogonal), [0.0, 0.0], atol=1e-12)


def test_simam_is_one_for_identical_and_zero_for_orthogonal_scores():
    rng = np.random.default_rng(0)
    a = [[rng.normal(size=(3, n)) for _ in range(2)] for n in (4, 7)]  # 2 examples of different lengths, 2 layers
    np.testing.assert_allclose(simam(a, a), [1.0, 1.0], atol=1e-12)
    x = [[np.tile(basis(4, 0), (3, 1))] * 2]
    y = [[np.tile(basis(4, 2), (3, 1))] * 2]
    np.testing.assert_allclose(simam(x, y), [0.0, 0.0], atol=1e-12)


def test_kendall_of_identical_rankings_is_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    assert kendall(x, x) == pytest.approx(1.0)
    assert kendall(x, 2 * x + 5) == pytest.approx(1.0)  # a monotone map (the softmax too) keeps the ranking
    assert kendall(x, -x) == pytest.approx(-1.0)
    maps = [rng.normal(size=(3, 15)) for _ in range(4)]
    np.testing.assert_allclose(kendall_per_layer(maps, maps), [1.0, 1.0, 1.0])


def test_random_baselines_are_near_zero():
    rng = np.random.default_rng(2)
    zsl, icl = rng.normal(size=(200, 3, 256)), rng.normal(size=(200, 3, 256))
    assert np.abs(simaou_random(zsl, icl, np.random.default_rng(3))).max() < 0.02
    icl_maps = [rng.normal(size=(3, 60)) for _ in range(200)]
    taus = kendall_per_layer(icl_maps, [rng.random(a.shape) for a in icl_maps])
    assert np.abs(taus).max() < 0.02


def test_rec2ftp_counts_what_icl_recovers_of_what_ft_fixed():
    zsl = [False, False, False, False, True]
    ft = [True, True, True, False, True]
    icl = [True, False, True, True, False]
    assert rec2ftp(zsl, icl, ft) == pytest.approx(2 / 3)
    assert rec2ftp([True, True], [False, True], [True, True]) is None


def tiny_decoder(family: str) -> Decoder:
    from conftest import tiny_gpt2, tiny_llama

    model = tiny_gpt2() if family == "gpt2" else tiny_llama()
    return _from_transformers(model)


def _from_transformers(model) -> Decoder:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return Decoder.from_hf(tmp)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_finetuning_moves_only_the_key_and_value_rows(family):
    dec = tiny_decoder(family)
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    tuned, queries = finetune_kv(dec, [[5, 9, 14, 3, 7], [11, 2, 40, 8]], lr=0.5)
    for k, v in dec.state_dict().items():  # the model analysed stays as it was
        assert torch.equal(v, before[k]), k
    rows = kv_rows(tuned)
    for k, v in tuned.state_dict().items():
        if ".attn.qkv." not in k:
            assert torch.equal(v, before[k]), f"{k} changed"
            continue
        q_rows = slice(0, rows.start)
        assert torch.equal(v[q_rows], before[k][q_rows]), f"query rows of {k} changed"
        assert not torch.equal(v[rows], before[k][rows]), f"key/value rows of {k} did not move"
    assert len(queries) == 2 and queries[0][0].shape == (5, dec.cfg.n_heads * dec.cfg.head_dim)


def test_probe_scores_are_the_pre_softmax_attention():
    dec = tiny_decoder("llama")
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with probe(dec, positions=[-1, -3], record=("attn_scores", "attn_weights")) as seen:
        dec(ids)
    for scores, weights in zip(seen.attn_scores, seen.attn_weights, strict=True):
        torch.testing.assert_close(scores.softmax(-1), weights)
        assert torch.isinf(scores[0, :, 1, -2:]).all()  # position 3 does not see positions 4 and 5


def char_encode(text: str) -> list[int]:
    return [3 + ord(c) % 90 for c in text]


def test_study_end_to_end_on_a_tiny_decoder():
    dec = tiny_decoder("gpt2")
    demos = [Example("good day", 1), Example("bad day", 0), Example("fine", 1)]
    tests = [Example(t, i % 2) for i, t in enumerate(["so good", "so bad", "ok", "awful"])]
    study = run_study(dec, char_encode, Setup([" no", " yes"], demos, tests), lr=0.1)
    result = summarize(study)
    layers = dec.cfg.n_layers
    assert set(result["per_layer"]) == set(METRICS)
    for name, values in result["per_layer"].items():
        assert len(values) == layers and all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in values), name
    n_demo = sum(len(char_encode(d.text + [" no", " yes"][d.label])) for d in demos)
    assert study.train_queries.shape[:2] == (layers, n_demo)
    assert study.icl[0].demo_scores.shape == (layers, n_demo)
    assert all(0 <= a <= 1 for a in result["accuracy"].values())


def test_finetuning_with_zero_step_reads_as_zero_shot():
    dec = tiny_decoder("llama")
    setup = Setup([" no", " yes"], [Example("good", 1)], [Example("bad", 0), Example("fine", 1)])
    study = run_study(dec, char_encode, setup, lr=0.0)
    for z, f in zip(study.zsl, study.ft, strict=True):
        np.testing.assert_array_equal(z.attn_output, f.attn_output)
        np.testing.assert_array_equal(z.logprobs, f.logprobs)


def test_command_on_the_world(pretrained, world, tmp_path):
    from analysis.icl_vs_ft import main

    out = tmp_path / "out"
    args = ["--checkpoint", str(pretrained), "--task", "world-entail", "--world", str(world), "--shots", "2"]
    result = main(args + ["--limit", "3", "--out", str(out), "--name", "w"])
    saved = json.loads((out / "w.json").read_text())
    assert saved["n"] == 3 and saved["k"] == 2 and len(saved["demonstrations"]) == 2
    assert saved["per_layer"] == result["per_layer"]
    assert (out / "w.png").stat().st_size > 0
    assert "| w | 2 |" in (out / "table.md").read_text()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--shots", "0"], "--shots 0"),
        (["--lr", "0"], "--lr 0"),
        (["--task", "sst2"], "--task sst2 needs --data"),
    ],
)
def test_command_refuses_bad_flags(bad, message, tmp_path):
    from analysis.icl_vs_ft import main

    args = ["--checkpoint", str(tmp_path), "--task", "world-entail", "--world", str(tmp_path)]
    with pytest.raises(SystemExit, match=message):
        main(args + bad)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reading_after_a_cached_prefix_equals_the_full_forward(family):
    dec = tiny_decoder(family)
    context, query = [5, 9, 14, 3, 7, 21, 30], [11, 2, 40]
    words = [[6], [12, 13]]
    with torch.no_grad():
        past = dec(torch.tensor([context]), use_cache=True).past_key_values
    demo = list(range(len(context)))
    full = read(dec, context + query, len(query), words, demo)
    cached = read(dec, context + query, len(query), words, demo, prefix=(len(context), past))
    np.testing.assert_allclose(cached.logprobs, full.logprobs, atol=1e-5)
    np.testing.assert_allclose(cached.attn_output, full.attn_output, atol=1e-5)
    np.testing.assert_allclose(cached.demo_scores, full.demo_scores, atol=1e-5)
    for a, b in zip(cached.query_scores, full.query_scores, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_table_averages_studies_that_differ_only_in_seed():
    from analysis.icl_finetuning import markdown

    def result(seed: int, simaou_mean: float) -> dict:
        per_layer = {m: [0.0] for m in METRICS}
        return {
            "name": f"s{seed}",
            "task": "sst2",
            "checkpoint": "assets/smollm2",
            "k": 8,
            "lr": 1e-3,
            "seed": seed,
            "n": 10,
            "layers": 1,
            "accuracy": {"zsl": 0.5, "icl": 0.6, "ft": 0.7},
            "rec2ftp": None if seed else 0.5,
            "zsl_wrong_ft_right": 2,
            "zsl_wrong_ft_right_icl_right": 1,
            "mean": dict.fromkeys(METRICS, 0.0) | {"simaou": simaou_mean},
            "per_layer": per_layer,
        }

    table = markdown([result(0, 0.2), result(1, 0.4)])
    accuracy = "0.500 ± 0.000 / 0.600 ± 0.000 / 0.700 ± 0.000"
    assert f"| sst2, smollm2, k=8, lr=0.001 | 0,1 | {accuracy} | 0.500 ± 0.000 | 0.300 ± 0.100 |" in table
    assert "Mean ± std" not in markdown([result(0, 0.2)])
