"""train/pretrain.py end to end on a small world: the CLI, the checkpoint it leaves, corrupt shards, resume."""

from __future__ import annotations

import io
import json
import os
import runpy
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from data.prepare import prepare_shards
from data.world import generate_world
from metalm import MetaLM
from metalm.presets import get_preset
from train import pretraining
from train.pretraining import PretrainConfig, job_pipeline_config, warm_up_vision, warn_if_workers_changed

ROOT = Path(__file__).resolve().parents[1]
SMALL = "--seq_len 64 --batch_size 4 --eval_batches 1 --eval_every 0 --log_every 1 --shuffle_buffer 16".split()
SMALL += ["--vision_warmup_steps", "3", "--peak_flops", "1e11", "--model", "{dim: 64, n_layers: 2, n_heads: 2}"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    generate_world(out, seed=0, n_train=60, n_val=12, n_test=4, n_heldout=6, n_docs=30)
    return out


def pretrain(args: list[str], torchrun: bool = False) -> subprocess.CompletedProcess:
    script = str(ROOT / "train" / "pretrain.py")
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        if torchrun
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(launcher + [script] + args, capture_output=True, text=True, env=env, timeout=600)


def test_torchrun_pretrain_writes_a_loadable_checkpoint_and_a_report(world, tmp_path):
    proc = pretrain(["--world", str(world), "--out", str(tmp_path / "run"), "--max_steps", "4", *SMALL], torchrun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tmp_path / "run" / "final"
    assert "final checkpoint" in proc.stdout and str(final) in proc.stdout
    assert "validation loss" in proc.stdout and "held-out images" in proc.stdout
    model = MetaLM.from_pretrained(final)
    assert set(model.encoders) == {"vision", "text"}
    assert (final / "tokenizer.json").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["heldout_captions"]["n"] == 6
    assert summary["reader"]["skipped"] == {}
    assert set(summary["vision_warmup"]) == {"color_accuracy", "shape_accuracy"}
    assert not any(p.requires_grad for p in model.encoders["vision"].parameters())  # frozen after the warm-up
    assert (tmp_path / "run" / "loss.png").is_file()
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["seq_len"] == 64 and resolved["model"] == {"dim": 64, "n_layers": 2, "n_heads": 2}


def test_corrupt_shards_are_skipped_counted_and_reported(world, tmp_path):
    proc = pretrain(["--world", str(world), "--out", str(tmp_path / "warm"), "--max_steps", "1", *SMALL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = tmp_path / "shards"
    shards.mkdir()
    good = sorted((world / "shards").glob("caption-train-*.tar"))[0]
    # only damaged shards: a truncated copy, and a copy whose first images are not PNGs any more
    data = good.read_bytes()
    (shards / "caption-train-truncated.tar").write_bytes(data[: len(data) // 5 + 7])
    with tarfile.open(good) as src, tarfile.open(shards / "caption-train-broken.tar", "w") as dst:
        for i, member in enumerate(src.getmembers()):
            payload = src.extractfile(member).read()
            if member.name.endswith(".png") and i < 4:
                payload = b"not an image"
            member.size = len(payload)
            dst.addfile(member, io.BytesIO(payload))
    # built in 2 DataLoader worker processes, one shard each: their counts must reach the summary (the unigram
    # baseline's in-process pass over the first batches counts apart, so it cannot stand in for them)
    proc = pretrain(
        [
            "--world",
            str(world),
            "--out",
            str(tmp_path / "run"),
            "--max_steps",
            "10",
            "--image_shards",
            str(shards),
            *SMALL,
            "--seq_len",
            "128",
            "--text_weight",
            "0",
            "--num_workers",
            "2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = json.loads((tmp_path / "run" / "summary.json").read_text())["reader"]
    assert reader["skipped"].get("bad_image", 0) >= 1 and reader["skipped"].get("damaged_tar", 0) >= 1
    assert reader["samples"] > 0
    assert "skipped samples" in proc.stdout


def test_bad_flags_and_help(tmp_path):
    proc = pretrain(["--help"])
    assert proc.returncode == 0 and "--span_ratio" in proc.stdout and "--resume" in proc.stdout
    proc = pretrain(["--out", str(tmp_path), "--schedule", "sometimes"])
    assert proc.returncode != 0 and "schedule = 'sometimes'" in proc.stderr


def test_vision_warm_up_teaches_the_encoder_to_see(tmp_path):
    """The warm-up's held-out accuracy on scene labels rises well above what an untrained encoder gets."""
    world = generate_world(tmp_path / "w", seed=1, n_train=400, n_val=4, n_test=4, n_heldout=4, n_docs=4)
    torch.manual_seed(0)
    model = MetaLM(get_preset("tiny", vocab_size=64))
    pcfg = job_pipeline_config(PretrainConfig(), model)
    before = warm_up_vision(model, world, pcfg, steps=0, seed=0)
    after = warm_up_vision(model, world, pcfg, steps=60, seed=0)
    assert after["color_accuracy"] > before["color_accuracy"] + 0.25
    assert after["color_accuracy"] > 0.6


def test_resume_with_another_number_of_workers_warns(tmp_path, caplog):
    """The batch order depends on --num_workers, so resuming with another number is not exact: say so."""

    ckpt = tmp_path / "checkpoints" / "step_0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(b"")
    (ckpt / "train_config.json").write_text(json.dumps({"num_workers": 2}))
    (tmp_path / "checkpoints" / "latest").write_text(ckpt.name)
    warn_if_workers_changed(PretrainConfig(out=str(tmp_path), num_workers=2, resume=True))
    assert not caplog.records
    warn_if_workers_changed(PretrainConfig(out=str(tmp_path), num_workers=0, resume=True))
    assert "saved with num_workers = 2 but this run has 0" in caplog.text


def test_the_old_form_model_is_read_as_decoder_fields_and_said_once(caplog, monkeypatch):
    monkeypatch.setattr(pretraining, "_OLD_FORM_WARNED", set())
    cfg = PretrainConfig(model={"dim": 48, "n_layers": 2})
    specs = [cfg.spec() for _ in range(3)]
    assert all(s["decoder"]["dim"] == 48 and s["decoder"]["n_layers"] == 2 for s in specs)
    assert caplog.text.count("decoder fields belong under model.decoder") == 1


def test_the_gpt_baseline_preset_pretrains_on_text_alone(world, tmp_path):
    """``--preset tiny-gpt``: the same decoder with no encoders, trained causally on the documents (the report's
    baseline); no spans, no images, no captions to score."""
    proc = pretrain(
        ["--world", str(world), "--out", str(tmp_path / "gpt"), "--max_steps", "2", "--preset", "tiny-gpt", *SMALL]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = MetaLM.from_pretrained(tmp_path / "gpt" / "final")
    assert len(model.encoders) == 0
    summary = json.loads((tmp_path / "gpt" / "summary.json").read_text())
    assert "heldout_captions" not in summary and summary["vision_warmup"] == {}
    assert "validation loss" in proc.stdout


def broken_caption_shard(world: Path, shards: Path) -> Path:
    """A copy of the world's first caption shard in which every other image is not a PNG any more."""
    shards.mkdir()
    _, captions = prepare_shards(world, "train")
    images = 0
    with tarfile.open(sorted(captions)[0]) as src:
        with tarfile.open(shards / "caption-train-broken.tar", "w") as dst:
            for member in src.getmembers():
                payload = src.extractfile(member).read()
                if member.name.endswith(".png"):
                    images += 1
                    payload = payload if images % 2 else b"not an image"
                member.size = len(payload)
                dst.addfile(member, io.BytesIO(payload))
    return shards


def test_a_run_stopped_by_sigterm_writes_its_summary_and_exits_143(world, tmp_path, monkeypatch, capsys):
    """A signal stop still writes summary.json with the samples it skipped, says it stopped early, and the script
    exits with 128 + SIGTERM so a scheduler can tell; a rerun without --resume is refused before any set-up."""
    real, calls = pretraining.load_batches, []

    def interrupting(*args, **kw):  # the second call is training's (the first reads the unigram counts)
        calls.append(1)
        for i, batch in enumerate(real(*args, **kw)):
            if len(calls) == 2 and i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(pretraining, "load_batches", interrupting)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script points sys.path[0] at the repository root
    shards = broken_caption_shard(world, tmp_path / "shards")
    argv = ["--world", str(world), "--out", str(tmp_path / "run"), "--max_steps", "4", *SMALL]
    argv += ["--image_shards", str(shards), "--text_weight", "0"]
    monkeypatch.setattr(sys, "argv", ["train/pretrain.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "train" / "pretrain.py"), run_name="__main__")
    assert stopped.value.code == 143
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by_signal"] and summary["stop_signal"] == "SIGTERM" and summary["steps"] == 2
    assert summary["exit_code"] == 143 and summary["reader"]["skipped"].get("bad_image", 0) >= 1
    out = capsys.readouterr().out
    assert "stopped early by SIGTERM at step 2 of 4" in out and "--resume (exit code 143)" in out
    assert "skipped samples" in out
    with pytest.raises(FileExistsError, match="holds an unfinished run"):
        pretraining.pretrain(pretraining.parse_pretrain_config(argv))
    assert not calls[2:]  # refused before reading any data


def test_freeze_decoder_trains_the_encoders_and_connectors_and_leaves_the_decoder(world, tmp_path):
    """``--freeze_decoder``: a warm-up that docks encoders into a decoder without changing it."""
    from safetensors.torch import load_file

    base = ["--world", str(world), "--max_steps", "1", *SMALL, "--text_weight", "0.5", "--lr", "1e-2"]
    pretraining.pretrain(pretraining.parse_pretrain_config([*base, "--out", str(tmp_path / "a")]))
    start = tmp_path / "a" / "final"
    argv = [*base, "--out", str(tmp_path / "b"), "--init_from", str(start), "--freeze_decoder", "true"]
    argv[argv.index("--max_steps") + 1] = "2"
    pretraining.pretrain(pretraining.parse_pretrain_config(argv))
    before, after = (
        load_file(str(start / "model.safetensors")),
        load_file(str(tmp_path / "b" / "final" / "model.safetensors")),
    )
    decoder = [k for k in before if k.startswith("decoder.")]
    assert decoder and all(torch.equal(before[k], after[k]) for k in decoder)
    moved = [
        k for k in before if k.startswith(("connectors.", "encoders.text.")) and not torch.equal(before[k], after[k])
    ]
    assert any(k.startswith("connectors.") for k in moved) and any(k.startswith("encoders.text.") for k in moved)
