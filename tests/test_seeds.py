"""eval/seeds.py: pretraining's headline figures over seeds, from the runs' summary.json files."""

import json

import pytest

from eval import seeds


def write_run(path, val_loss, shapes):
    path.mkdir()
    summary = {"last_loss": val_loss + 0.01, "val_loss": val_loss}
    for split in ("heldout", "val"):
        summary[f"{split}_captions"] = {"shapes_named": shapes, "colors_named": 0.5, "unseen_pair_named": 0.25}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_mean_and_population_std_of_each_figure_in_run_order(tmp_path, capsys):
    runs = [write_run(tmp_path / "a", 0.30, 0.10), write_run(tmp_path / "b", 0.34, 0.20)]
    table = seeds.main([str(r) for r in runs] + ["--out", str(tmp_path / "seeds.json")])
    row = table["validation loss (nats/token)"]
    assert row["runs"] == [0.30, 0.34] and row["mean"] == pytest.approx(0.32) and row["std"] == pytest.approx(0.02)
    shapes = table["held-out captions naming the right shapes"]
    assert shapes["mean"] == pytest.approx(0.15) and shapes["std"] == pytest.approx(0.05)
    assert table["held-out captions naming the unseen pair"]["std"] == 0.0
    assert "0.320 ± 0.020" in capsys.readouterr().out
    assert json.loads((tmp_path / "seeds.json").read_text())["figures"]["validation loss (nats/token)"] == row


def test_a_run_without_captions_is_named(tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"last_loss": 1.0, "val_loss": 1.0}))
    with pytest.raises(ValueError, match=r"stopped/summary.json: no heldout_captions.shapes_named"):
        seeds.over_seeds([run])
