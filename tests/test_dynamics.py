"""analysis.dynamics: the Jensen-Shannon divergence and SVCCA distance have the properties their definitions
promise, the per-head and per-layer comparisons read a real decoder through the probes, and a tiny finetuning
moves them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.dynamics import (
    attention_js,
    compare,
    read_layers,
    seed_consistency,
    svcca_correlations,
    svcca_distance,
)
from data.batch import Batch
from metalm import DecoderConfig, MetaLM, MetaLMConfig


def _dists(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).softmax(-1)


def test_js_is_symmetric_zero_on_identical_and_bounded_by_ln2():
    from analysis.dynamics import js_divergence

    p, q = _dists((50, 7), 0), _dists((50, 7), 1)
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    assert float(js_divergence(p, p).abs().max()) < 1e-12
    assert float(js_divergence(p, q).min()) > 0
    assert float(js_divergence(p, q).max()) <= math.log(2)
    disjoint_p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    disjoint_q = torch.tensor([[0.0, 0.0, 0.3, 0.7]])
    assert float(js_divergence(disjoint_p, disjoint_q)) == pytest.approx(math.log(2), abs=1e-12)  # the bound is met
    # a hand-computed case: p = (1, 0), q = (1/2, 1/2)
    m = torch.tensor([0.75, 0.25])
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    got = js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    assert float(got) == pytest.approx(expected, abs=1e-12) and float(m.sum()) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        js_divergence(p, q[:, :3])


def test_attention_js_averages_real_queries_only():
    a = _dists((2, 3, 5, 5), 0)
    b = a.clone()
    b[1, :, 4] = _dists((3, 5), 9)  # only row 4 of example 1 changes
    mask = torch.ones(2, 5)
    mask[1, 4] = 0  # ... and it is padding
    assert np.abs(attention_js([a], [b], mask)).max() < 1e-12
    mask[1, 4] = 1
    from analysis.dynamics import js_divergence

    js = attention_js([a, a], [b, a], mask)
    assert js.shape == (2, 3)
    np.testing.assert_allclose(js[0], js_divergence(a[1, :, 4], b[1, :, 4]).numpy() / 10, rtol=1e-9)
    assert np.abs(js[1]).max() < 1e-12


def _rep(n=600, d=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_svcca_is_zero_for_rotations_and_invertible_maps():
    x = _rep() @ np.diag(np.linspace(1, 3, 12))
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert svcca_distance(x, x) == pytest.approx(0, abs=1e-9)
    assert svcca_distance(x, x @ rotation) == pytest.approx(0, abs=1e-9)  # the 99% reduction keeps the same span
    assert svcca_distance(x, x @ rotation + 5.0) == pytest.approx(0, abs=1e-9)  # and centring removes a shift
    linear = rng.standard_normal((12, 12)) + 3 * np.eye(12)
    assert np.linalg.cond(linear) < 1e3
    assert svcca_distance(x, x @ linear, keep=1.0) == pytest.approx(0, abs=1e-9)  # CCA: any invertible map
    low = _rep(d=4) @ rng.standard_normal((4, 12))  # rank 4 in 12 dims: the reduction keeps the whole span
    assert svcca_distance(low, low @ linear) == pytest.approx(0, abs=1e-9)
    assert svcca_distance(torch.tensor(x), torch.tensor(x @ rotation)) == pytest.approx(0, abs=1e-9)


def test_svcca_is_near_one_for_independent_representations():
    x, y = _rep(n=4000, seed=0), _rep(n=4000, seed=1)
    assert svcca_distance(x, y) > 0.9
    rho = svcca_correlations(x, y)
    assert np.all(np.diff(rho) <= 1e-12) and rho.max() < 0.15
    partly = np.concatenate([x[:, :6], y[:, :6]], 1)  # half the directions shared
    assert 0.3 < svcca_distance(x, partly, keep=1.0) < 0.7


def test_svcca_errors_name_the_problem():
    with pytest.raises(ValueError, match="same N"):
        svcca_distance(_rep(n=10), _rep(n=11))
    with pytest.raises(ValueError, match="no variance"):
        svcca_distance(np.ones((10, 3)), _rep(n=10, d=3))
    with pytest.raises(ValueError, match="keep"):
        svcca_distance(_rep(), _rep(), keep=0)


def test_seed_consistency():
    curves = np.array([[0.1, 0.2, 0.4], [0.2, 0.3, 0.5], [0.0, 0.25, 0.35]])
    assert seed_consistency(curves) > 0.9
    assert seed_consistency(np.array([[1, 2, 3], [3, 2, 1]])) == pytest.approx(-1)
    assert math.isnan(seed_consistency(curves[:1]))


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=50, dim=32, n_layers=3, n_heads=4, max_seq_len=32, init_std=0.2)
    return MetaLM(MetaLMConfig(cfg, {})).eval()


def test_compare_reads_every_layer_and_sees_a_changed_head():
    model = _model()
    ids = torch.randint(1, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    batch = Batch(ids, ids, mask)
    before = read_layers(model, batch)
    assert len(before.attention) == 3 and before.attention[0].shape == (4, 4, 12, 12)
    assert before.hidden[2].shape == (4, 12, 32)
    same = compare(before, read_layers(model, batch), mask)
    assert np.abs(same["js"]).max() < 1e-9 and np.abs(same["svcca"]).max() < 1e-6
    with torch.no_grad():  # change layer 1's queries of head 2 only: later layers' inputs change too
        model.decoder.blocks[1].attn.qkv.weight[2 * 8 : 3 * 8] *= 3.0
    moved = compare(before, read_layers(model, batch), mask)
    assert moved["js"][0].max() < 1e-9 and moved["svcca"][0] < 1e-6  # the layers below do not move
    assert moved["js"][1].argmax() == 2 and moved["js"][1, 2] > 1e-3
    assert np.delete(moved["js"][1], 2).max() < 1e-9
    assert moved["svcca"][1] > 1e-4


@pytest.mark.slow
def test_command_writes_its_results(world, tmp_path):
    """The command end to end on the small test world: a few pretraining and finetuning steps, two seeds."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, own_world = tmp_path / "out", shutil.copytree(world, tmp_path / "world")  # its tokenizer is cached there
    argv = ["--world", str(own_world), "--pretrained_dir", str(tmp_path / "pre"), "--pretrain_steps", "3"]
    argv += ["--steps", "3", "--seeds", "0,1", "--n_train", "32", "--n_probe", "8", "--out", str(out)]
    subprocess.run([sys.executable, str(root / "analysis" / "finetuning_dynamics.py"), *argv], check=True)
    result = json.loads((out / "dynamics.json").read_text())
    assert len(result["runs"]) == 2 and np.array(result["js_mean"]).shape == (4, 4)
    assert len(result["svcca_mean"]) == 4 and (out / "dynamics.png").stat().st_size > 0
    assert "| layer |" in (out / "dynamics.md").read_text()


def test_checkpoints_written_by_finetuning_are_compared_on_the_tasks_inputs(world, pretrained, tmp_path):
    """``--before/--after``: an unchanged copy does not move; a copy with one head of the last layer changed
    moves that head only, and no layer below it; the command writes its table and plot."""
    import json
    import shutil

    from analysis.finetuning_dynamics import main
    from data.tokenizer import Tokenizer

    same = shutil.copytree(pretrained, tmp_path / "same" / "final")
    model = MetaLM.from_pretrained(pretrained)
    last = len(model.decoder.blocks) - 1
    head = model.decoder.cfg.dim // model.decoder.cfg.n_heads
    with torch.no_grad():
        model.decoder.blocks[last].attn.qkv.weight[head : 2 * head] *= 3.0  # head 1's queries
    model.save_pretrained(tmp_path / "moved" / "final")
    Tokenizer.load(pretrained).save(tmp_path / "moved" / "final")
    (tmp_path / "moved" / "eval.json").write_text(json.dumps({"results": [{"none": {"mean": 0.75}}]}))
    argv = ["--before", str(pretrained), "--task", "world-entail", "--world", str(world), "--n_probe", "6"]
    result = main([*argv, "--after", str(same), str(tmp_path / "moved" / "final"), "--out", str(tmp_path / "out")])
    unchanged, moved = result["runs"]
    assert max(max(row) for row in unchanged["js"]) < 1e-9 and max(unchanged["svcca"]) < 1e-6
    js = np.array(moved["js"])
    assert js[:last].max() < 1e-9 and max(moved["svcca"][:last]) < 1e-6
    assert js[last].argmax() == 1 and np.delete(js[last], 1).max() < 1e-9
    assert (unchanged["accuracy"], moved["accuracy"]) == (None, 0.75) and result["n_probe"] == 6
    table = (tmp_path / "out" / "dynamics.md").read_text()
    assert "Finetuning dynamics on world-entail: finetuned seed 1 0.750" in table
    assert (tmp_path / "out" / "dynamics.png").stat().st_size > 0


def test_skip_first_leaves_the_first_real_position_out_of_svcca():
    """A massive activation at each row's first real position (as pretrained LLMs have) holds all the variance
    SVCCA keeps without ``skip_first``; with it, only the other positions count."""
    from analysis.dynamics import Probed

    g = torch.Generator().manual_seed(0)
    b, t, d = 6, 10, 12
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row: its first real position is column 2
    attn = [torch.full((b, 1, t, t), 1.0 / t)]
    x = torch.randn(b, t, d, generator=g)
    y = x + 0.5 * torch.randn(b, t, d, generator=g)  # the other positions move
    first = mask.float().argmax(1)
    for h in (x, y):
        h[torch.arange(b), first, 0] = 1e4  # one huge dimension at the first real position
    before, after = Probed(attn, [x]), Probed(attn, [y])
    plain = compare(before, after, mask)["svcca"][0]
    skipped = compare(before, after, mask, skip_first=True)["svcca"][0]
    rows = mask.bool().clone()
    rows[torch.arange(b), first] = False
    assert skipped == pytest.approx(svcca_distance(x[rows], y[rows]))
    assert skipped > plain + 0.05
