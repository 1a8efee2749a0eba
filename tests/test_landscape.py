"""analysis.landscape: the surface at its origin and the interpolation at its ends are the model's own losses,
filter-normalised directions have each filter's norm equal to the parameter's, the PCA plane of a trajectory
that moves along a line finds that line, and the model's weights come back after every evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.landscape import (
    barrier,
    batch_loss,
    combine,
    filter_normalize,
    filter_normalized_direction,
    flatness,
    interpolate,
    loaded,
    norm,
    params_of,
    random_direction,
    surface,
    trajectory_plane,
)
from data.batch import Batch
from metalm import DecoderConfig, MetaLM, MetaLMConfig


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, max_seq_len=16, init_std=0.2)
    return MetaLM(MetaLMConfig(cfg, {})).eval()


def _batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(1, 40, (3, 10), generator=g)
        labels = ids.clone()
        labels[:, :6] = -100  # the loss on the last tokens only, as finetuning's answers
        out.append(Batch(ids, labels, torch.ones_like(ids)))
    return out


def _own_loss(model, batches):
    with torch.no_grad():
        return float(torch.stack([model(b.input_ids, labels=b.labels).loss for b in batches]).mean())


def test_landscape_origin_is_the_models_loss_and_weights_come_back():
    model, batches = _model(), _batches()
    loss = batch_loss(batches)
    center = params_of(model)
    d1, d2 = filter_normalized_direction(center, 1), filter_normalized_direction(center, 2)
    grid = surface(model, center, d1, d2, [-0.5, 0.0, 0.5], [-0.5, 0.0, 0.5], loss)
    assert grid.shape == (3, 3)
    assert grid[1, 1] == pytest.approx(_own_loss(model, batches), abs=1e-6)
    assert grid[0, 0] != pytest.approx(grid[1, 1], abs=1e-3)  # it does move away from the origin
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), center[n], atol=0, rtol=0)  # restored exactly
    with loaded(model, combine(center, [(0.5, d1)])):
        shifted = _own_loss(model, batches)
    assert shifted == pytest.approx(grid[1, 2], abs=1e-6)  # grid rows are y, columns x


def test_filter_normalised_directions_match_each_filters_norm():
    params = params_of(_model())
    direction = random_direction(params, 0)
    normed = filter_normalize(direction, params)
    checked = 0
    for n, d in normed.items():
        w = params[n]
        if w.dim() <= 1:
            assert float(d.abs().max()) == 0  # biases and norm scales: no move
            continue
        torch.testing.assert_close(d.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
        cos = torch.nn.functional.cosine_similarity(d.flatten(1), direction[n].flatten(1), dim=1)
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=1e-5, atol=1e-5)  # only rescaled
        checked += 1
    assert checked >= 6  # embeddings, positions, qkv, proj, two MLP matrices, per layer
    conv = {"w": torch.randn(4, 3, 2, 2)}  # a conv-shaped filter bank: the filter is all but the first dimension
    d = filter_normalize(random_direction(conv, 1), conv)["w"]
    torch.testing.assert_close(d.flatten(1).norm(dim=1), conv["w"].flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="w is"):
        filter_normalize({"w": torch.randn(3, 3)}, conv)


def test_interpolation_ends_are_the_endpoints_losses():
    a, b = _model(0), _model(1)
    batches = _batches()
    start, end = params_of(a), params_of(b)
    path = interpolate(a, start, end, [0.0, 0.5, 1.0], batch_loss(batches))
    assert path[0] == pytest.approx(_own_loss(a, batches), abs=1e-6)
    assert path[2] == pytest.approx(_own_loss(b, batches), abs=1e-6)
    assert path[0] != pytest.approx(path[2], abs=1e-3)
    with loaded(a, combine(start, [(-0.5, start), (0.5, end)])):
        assert path[1] == pytest.approx(_own_loss(a, batches), abs=1e-6)


def test_trajectory_plane_finds_the_path_and_projects_the_final_point_at_the_origin():
    final = params_of(_model(0))
    line, side = random_direction(final, 5), random_direction(final, 6)
    snaps = [combine(final, [(3.0 - k, line), (0.1 * np.sin(k), side)]) for k in range(4)]  # mostly along line
    u1, u2, coords, ratios = trajectory_plane(snaps)
    assert coords.shape == (4, 2) and np.abs(coords[-1]).max() == 0
    assert norm(u1) == pytest.approx(1, abs=1e-6) and norm(u2) == pytest.approx(1, abs=1e-6)
    assert ratios[0] > 0.99
    lu = norm(line)
    cos = sum(float((u1[n].double() * line[n].double()).sum()) for n in final) / lu
    assert abs(cos) > 0.99
    np.testing.assert_allclose(np.abs(coords[:, 0]), [3 * lu, 2 * lu, lu, 0], rtol=2e-2)
    with pytest.raises(ValueError, match="at least 3"):
        trajectory_plane(snaps[:2])


def test_barrier_and_flatness():
    alphas = [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert barrier(alphas, [5, 4, 3, 2, 3]) == 0  # monotone: no barrier
    assert barrier(alphas, [5, 4, 5, 2, 3]) == pytest.approx(2)  # 5 over the line's 3 at a = 0.5
    xs = [-1.0, 0.0, 1.0]
    bowl = np.array([[2.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 2.0]])
    assert flatness(bowl, xs, xs, 0.5) == 0
    assert flatness(bowl, xs, xs, 1.0) == pytest.approx(4 / 5)


@pytest.mark.slow
def test_command_writes_its_results(world, tmp_path):
    """The command end to end on the small test world: a few pretraining and finetuning steps, a 3 x 3 grid."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, own_world = tmp_path / "out", shutil.copytree(world, tmp_path / "world")  # its tokenizer is cached there
    argv = ["--world", str(own_world), "--pretrained_dir", str(tmp_path / "pre"), "--pretrain_steps", "3"]
    argv += ["--steps", "6", "--every", "2", "--grid", "3", "--n_train", "32", "--n_loss", "8", "--out", str(out)]
    subprocess.run([sys.executable, str(root / "analysis" / "loss_landscape.py"), *argv], check=True)
    result = json.loads((out / "landscape.json").read_text())
    assert set(result["inits"]) == {"pretrained", "scratch"}
    for r in result["inits"].values():
        assert np.array(r["surface"]).shape == (3, 3) and len(r["trajectory"]["coords"]) == 4
        assert r["path_train"][result["alphas"].index(0.0)] == pytest.approx(r["train_loss_init"])
    assert all((out / f).stat().st_size > 0 for f in ("interpolation.png", "surface.png", "trajectory.png"))


def test_runs_written_by_finetuning_are_drawn_from_their_own_start(world, pretrained, tmp_path):
    """``--runs``: each run is drawn from the start its own config names (the checkpoint, or with
    ``--init_weights random`` a seeded fresh model the job really trained from), through its checkpoints, on its
    own data: the path's ends are the start's and the final checkpoint's losses, the surface's centre the final's."""
    import json

    from analysis.landscape import checkpoint_landscape, run_losses
    from analysis.loss_landscape import main
    from data.tokenizer import Tokenizer
    from train.finetuning import finetune, parse_finetune_config
    from train.tuning import initial_model

    base = ["--init_from", str(pretrained), "--world", str(world), "--task", "world-entail", "--max_steps", "4"]
    base += "--batch_size 4 --eval_batches 1 --eval_every 0 --log_every 1 --ckpt_every 1 --keep_last 4".split()
    base += ["--final_eval", "false", "--lr", "1e-3"]
    runs = {name: tmp_path / name for name in ("pretrained", "scratch")}
    cfgs = {}
    for name, out in runs.items():
        extra = ["--init_weights", "random"] if name == "scratch" else []
        cfgs[name] = parse_finetune_config([*base, *extra, "--out", str(out)])
        finetune(cfgs[name])

    fresh, again = initial_model(cfgs["scratch"])[0], initial_model(cfgs["scratch"])[0]
    checkpoint = MetaLM.from_pretrained(pretrained)
    step1 = MetaLM.from_pretrained(runs["scratch"] / "checkpoints" / "step_0000001")
    gap = {"fresh": 0.0, "checkpoint": 0.0}
    for (n, p), q, c, s in zip(
        fresh.named_parameters(), again.parameters(), checkpoint.parameters(), step1.parameters(), strict=True
    ):
        assert torch.equal(p, q), f"{n}: the random start is not reproducible"
        gap["fresh"] += float((s - p).detach().double().pow(2).sum())
        gap["checkpoint"] += float((s - c).detach().double().pow(2).sum())
    assert gap["fresh"] < 0.01 * gap["checkpoint"]  # the job's first step is one step away from the fresh start

    result = checkpoint_landscape(list(runs.values()), grid=3, span=0.5, n_loss=8, n_alphas=5)
    assert list(result["inits"]) == ["pretrained", "scratch"] and result["task"] == "world-entail"
    tok = Tokenizer.load(pretrained)
    ends = {
        "pretrained": (checkpoint, MetaLM.from_pretrained(runs["pretrained"] / "final")),
        "scratch": (fresh, MetaLM.from_pretrained(runs["scratch"] / "final")),
    }
    a0, a1 = result["alphas"].index(0.0), result["alphas"].index(1.0)
    for name, r in result["inits"].items():
        start, final = ends[name]
        encode = json.loads((runs[name] / "summary.json").read_text())["encode_input"]  # auto: the text encoder
        train_start, _ = run_losses(cfgs[name], start.eval(), tok, encode, 8)
        train_final, val_final = run_losses(cfgs[name], final.eval(), tok, encode, 8)
        assert r["path_train"][a0] == pytest.approx(train_start(start), abs=1e-5)
        assert r["path_train"][a1] == pytest.approx(train_final(final), abs=1e-5)
        assert r["path_val"][a1] == pytest.approx(val_final(final), abs=1e-5)
        assert np.array(r["surface"])[1, 1] == pytest.approx(r["train_loss_final"], abs=1e-5)
        assert r["trajectory"]["steps"] == [0, 1, 2, 3, 4] and len(r["trajectory"]["coords"]) == 5
        assert r["init_weights"] == ("random" if name == "scratch" else "checkpoint")
    pre, scratch = result["inits"]["pretrained"], result["inits"]["scratch"]
    assert abs(pre["train_loss_init"] - scratch["train_loss_init"]) > 0.1

    out = tmp_path / "out"
    main(["--runs", *map(str, runs.values()), "--grid", "3", "--span", "0.5", "--n_loss", "8", "--n_alphas", "5",
          "--out", str(out)])  # fmt: skip
    table = (out / "landscape.md").read_text()
    assert "| pretrained |" in table and "| scratch |" in table and "world-entail" in table
    assert json.loads((out / "landscape.json").read_text())["inits"]["scratch"]["accuracy"] is None
    with pytest.raises(FileNotFoundError, match="finished train/finetune.py run"):
        checkpoint_landscape([tmp_path / "nothing"])
