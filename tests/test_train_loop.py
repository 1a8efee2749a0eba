"""The shared training loop: exact resume, SIGTERM, NaN handling, checkpoints, schedule and the config CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from synthetic import small_model, stream

from data.batch import Batch
from metalm import MetaLM
from metalm.presets import get_preset
from train.finetuning import FinetuneConfig, parse_finetune_config
from train.instruction_tuning import InstructConfig, parse_instruct_config
from train.loop import latest_checkpoint, lr_at, train
from train.pretraining import PretrainConfig, job_pipeline_config, parse_pretrain_config, pretrain
from train.throughput import batch_flops, batch_tokens, mfu


def cfg_for(tmp_path, **kw) -> PretrainConfig:
    base = dict(
        out=str(tmp_path),
        max_steps=6,
        batch_size=4,
        grad_accum=2,
        seq_len=32,
        lr=3e-3,
        warmup_steps=2,
        ckpt_every=100,
        log_every=1,
        eval_every=0,
        peak_flops=1e11,
    )
    base.update(kw)
    return PretrainConfig(**base)


def weights(model: MetaLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_goes_down_and_final_checkpoint_loads(tmp_path):
    model = small_model()
    result = train(cfg_for(tmp_path, max_steps=12), model, _repeat_first)
    assert result.losses[-1] < result.losses[0] - 0.3  # memorising one batch
    loaded = MetaLM.from_pretrained(tmp_path / "final")
    for k, v in weights(model).items():
        assert torch.equal(loaded.state_dict()[k], v), k
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(0 < r["mfu"] and r["tokens_per_s"] > 0 for r in rows)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert json.loads((tmp_path / "config.json").read_text())["max_steps"] == 12


def _repeat_first(skip):
    batch = next(stream(0))
    while True:
        yield batch


def _interrupting(skip, at: int):
    """The stream, sending this process SIGTERM when micro-batch ``at`` is handed out."""
    for i, batch in enumerate(stream(skip), start=skip):
        if i == at:
            os.kill(os.getpid(), signal.SIGTERM)
        yield batch


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_after_sigterm_equals_an_uninterrupted_run(tmp_path, dropout):
    full_model = small_model(dropout=dropout)
    full = train(cfg_for(tmp_path / "full"), full_model, stream)

    first_model = small_model(dropout=dropout)
    first = train(cfg_for(tmp_path / "cut"), first_model, lambda skip: _interrupting(skip, at=5))
    assert first.stopped_by_signal and first.step == 3  # micro-batch 5 belongs to step 3 (2 per step)
    assert latest_checkpoint(cfg_for(tmp_path / "cut")).name == "step_0000003"
    assert not (tmp_path / "cut" / "final").exists()

    resumed_model = small_model(seed=123, dropout=dropout)  # different init: everything must come from the checkpoint
    resumed = train(cfg_for(tmp_path / "cut", resume=True), resumed_model, stream)
    assert resumed.step == 6
    assert first.losses + resumed.losses == full.losses
    for k, v in weights(full_model).items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


def test_checkpoints_rotate_and_latest_points_at_the_newest(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=5, ckpt_every=1, keep_last=2, grad_accum=1)
    train(cfg, small_model(), stream)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_0000004", "step_0000005"]
    assert latest_checkpoint(cfg).name == "step_0000005"
    files = sorted(p.name for p in latest_checkpoint(cfg).iterdir())
    assert files == ["config.json", "model.safetensors", "train_config.json", "trainer_state.pt"]


def _poison(steps: set[int]):
    """A stream whose micro-batches at the given indices carry a NaN image, so their loss is NaN."""

    def gen(skip):
        for i, batch in enumerate(stream(skip), start=skip):
            if i in steps:
                batch.docks[0].inputs["pixel_values"][0, 0, 0, 0] = float("nan")
            yield batch

    return gen


def test_a_nan_step_is_skipped_and_counted(tmp_path):
    model = small_model()
    result = train(cfg_for(tmp_path, grad_accum=1), model, _poison({2}))
    assert result.nan_steps == 1 and result.step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(x)) for i, x in enumerate(result.losses) if i != 2)


def test_too_many_nan_steps_stop_with_a_clear_message(tmp_path):
    model = small_model()
    with pytest.raises(RuntimeError, match="3 consecutive steps had a NaN or inf loss"):
        train(cfg_for(tmp_path, grad_accum=1, max_nan_steps=3), model, _poison(set(range(100))))


def test_learning_rate_schedule():
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    cfg.schedule = "linear"
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.75)


def test_config_cli_yaml_and_errors(tmp_path, capsys):
    cfg = parse_pretrain_config(["--max_steps", "7", "--resume", "--model", "{n_layers: 2}"])
    assert cfg.max_steps == 7 and cfg.resume is True and cfg.model == {"n_layers": 2}
    # a boolean takes a bare flag, a following value, or =value
    assert parse_pretrain_config(["--resume", "false", "--compile"]).resume is False
    assert parse_pretrain_config(["--compile", "--resume"]).compile is True
    assert (
        parse_pretrain_config(["--resume=no"]).resume is False
        and parse_pretrain_config(["--resume", "yes"]).resume is True
    )
    (tmp_path / "run.yaml").write_text("lr: 0.01\nseq_len: 128\n")
    cfg = parse_pretrain_config(["--config", str(tmp_path / "run.yaml"), "--seq_len", "64"])
    assert cfg.lr == 0.01 and cfg.seq_len == 64  # flags win over the file
    (tmp_path / "bad.yaml").write_text("lr: 0.01\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown config fields \\['learning_rate'\\]"):
        parse_pretrain_config(["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ValueError, match="schedule = 'step'"):
        parse_pretrain_config(["--schedule", "step"])
    with pytest.raises(ValueError, match="num_workers = -1: expected at least 0"):
        parse_pretrain_config(["--num_workers", "-1"])
    with pytest.raises(ValueError, match="prefetch_factor = 0: expected at least 1"):
        parse_pretrain_config(["--prefetch_factor", "0"])
    assert parse_pretrain_config(["--num_workers", "2"]).num_workers == 2
    with pytest.raises(SystemExit):
        parse_pretrain_config(["--max_steps", "many"])
    assert "expected int" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_pretrain_config(["--help"])
    help_text = capsys.readouterr().out
    for name in (
        "--span_ratio",
        "--grad_accum",
        "--activation_checkpointing",
        "--dist",
        "--num_workers",
        "--compile_backend",
    ):
        assert name in help_text


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("grad_clip", "-1", "grad_clip = -1.0: expected at least 0"),  # clipping to -1 flipped the gradient
        ("eval_batches", "0", "eval_batches = 0: expected at least 1"),  # printed "validation loss 0.000"
        ("ckpt_every", "0", "ckpt_every = 0: expected at least 1"),  # divided by zero after set-up
        ("log_every", "0", "log_every = 0: expected at least 1"),
        ("prefix_max", "-1", "prefix_max = -1.0: expected at least 0 and at most 1"),  # crashed in the pipeline
        ("seq_len", "1", "seq_len = 1: expected at least 2"),
        ("lr", "nan", "lr = nan: expected a finite number"),
        ("beta2", "1", "beta2 = 1.0: expected at least 0 and below 1"),
        ("span_max", "1", "span_max = 1: expected at least the minimum span length 8"),  # 64 scaled to 256/2048
        ("model", "{n_layer: 2}", "model = {'n_layer': 2}: model: unknown field\\(s\\) \\['n_layer'\\]"),
        ("model", "{decoder: {n_layer: 2}}", "model = .*: model.decoder: unknown field\\(s\\) \\['n_layer'\\]"),
        ("preset", "huge", "preset = 'huge': expected one of tiny"),
    ],
)
def test_a_bad_flag_is_refused_naming_the_field_the_value_and_what_is_allowed(flag, value, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        parse_pretrain_config([f"--{flag}", value])


def test_every_job_config_checks_its_fields_built_directly_or_parsed(tmp_path):
    """``Config(...).check()`` (as eval/report.py builds them) checks what the parser checks, for every job; a
    job started on a bad config stops before any work (no world generated)."""
    with pytest.raises(ValueError, match="grad_clip = -1: expected at least 0"):
        PretrainConfig(grad_clip=-1).check()
    with pytest.raises(ValueError, match="max_steps = 'ten': expected an integer"):
        PretrainConfig(max_steps="ten").check()
    with pytest.raises(ValueError, match="resume = 'no': expected true or false"):
        PretrainConfig(resume="no").check()
    with pytest.raises(ValueError, match="eval_batches = 0: expected at least 1"):
        FinetuneConfig(eval_batches=0).check()
    with pytest.raises(ValueError, match="eval_batches = 0: expected at least 1"):
        parse_finetune_config(["--eval_batches", "0"])
    with pytest.raises(ValueError, match="log_every = 0: expected at least 1"):
        parse_instruct_config(["--log_every", "0"])  # a default of its own (eval_every) keeps the inherited range
    with pytest.raises(ValueError, match="ckpt_every = 0: expected at least 1"):
        InstructConfig(ckpt_every=0).check()
    with pytest.raises(ValueError, match="encoder_freeze .*: vision's policy 'most': expected none, all"):
        FinetuneConfig(encoder_freeze={"vision": "most"}).check()
    with pytest.raises(ValueError, match="eval_batches = 0"):
        pretrain(PretrainConfig(world=str(tmp_path / "world"), out=str(tmp_path / "run"), eval_batches=0))
    assert not (tmp_path / "world").exists() and not (tmp_path / "run").exists()


def test_yaml_values_follow_the_flags_rules_and_errors_name_the_file(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text('resume: "no"\ncompile: "yes"\nmax_steps: "12"\nlr: 1\nencode_input: true\n')
    cfg = parse_finetune_config(["--config", str(run)])
    assert cfg.resume is False and cfg.compile is True and cfg.max_steps == 12  # "no" was read as true
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.encode_input == "true"
    for text, message in [
        ('max_steps: "ten"', "max_steps = 'ten': expected an integer"),
        ("max_steps: 2.5", "max_steps = 2.5: expected an integer"),
        ("resume: maybe", "resume = 'maybe': expected true or false"),
        ("resume: 2", "resume = 2: expected true or false"),
        ("out:", "out = None: expected a string"),
        ("model: [1, 2]", "model = \\[1, 2\\]: expected a mapping"),
        ("ckpt_every: 0", "ckpt_every = 0: expected at least 1"),  # a range error names the file too
    ]:
        (tmp_path / "bad.yaml").write_text(text + "\n")
        with pytest.raises(ValueError, match=f"^{tmp_path / 'bad.yaml'}: {message}"):
            parse_pretrain_config(["--config", str(tmp_path / "bad.yaml")])
    # a flag given over the file's bad value: the flag's value is the one checked
    assert parse_pretrain_config(["--config", str(tmp_path / "bad.yaml"), "--ckpt_every", "5"]).ckpt_every == 5


def test_seq_len_too_short_for_an_image_row_is_named():
    """An image-text row holds <image>, the image's vectors, </image> and a caption token: the tiny preset's 17
    vectors need 20 tokens, and ``--seq_len 16`` docked the image past the row's end."""
    torch.manual_seed(0)
    tiny = MetaLM(get_preset("tiny", vocab_size=300))
    with pytest.raises(ValueError, match="seq_len = 16: expected at least 20 for this model: .* 17 vectors"):
        job_pipeline_config(PretrainConfig(seq_len=16), tiny)
    assert job_pipeline_config(PretrainConfig(seq_len=20), tiny).seq_len == 20
    text_only = MetaLM(get_preset("tiny-gpt", vocab_size=300))
    assert job_pipeline_config(PretrainConfig(seq_len=2), text_only).seq_len == 2
    # checked with the other fields, from the spec alone, before the world or the tokenizer is prepared
    with pytest.raises(ValueError, match="seq_len = 16: expected at least 20 for this model"):
        parse_pretrain_config(["--seq_len", "16"])
    with pytest.raises(ValueError, match="seq_len = 100: expected at least 200 for this model: .* 197 vectors"):
        parse_pretrain_config(["--seq_len", "100", "--preset", "vl-medium"])
    assert parse_pretrain_config(["--seq_len", "16", "--preset", "tiny-gpt"]).seq_len == 16


def _final_names(run) -> set[str]:
    return set(load_file(str(run / "final" / "model.safetensors")))


def test_compiled_training_matches_eager_saves_clean_names_and_resumes_exactly(tmp_path):
    """``--compile`` through dynamo and AOT autograd (``aot_eager``: the same graphs inductor gets, without its C++
    code generation, which takes minutes on a cold cache; that backend is the slow test below): the same losses as
    eager, checkpoints without the compiled wrapper's ``_orig_mod.`` names, and an exact resume."""
    eager = train(cfg_for(tmp_path / "eager", max_steps=4, grad_accum=1), small_model(), stream)
    kw = dict(max_steps=4, grad_accum=1, compile=True, compile_backend="aot_eager")
    full_model = small_model()
    full = train(cfg_for(tmp_path / "full", **kw), full_model, stream)
    assert full.losses == pytest.approx(eager.losses, rel=1e-4)
    names = _final_names(tmp_path / "full")
    assert names == _final_names(tmp_path / "eager") and not any("_orig_mod" in n for n in names)

    first = train(cfg_for(tmp_path / "cut", **kw), small_model(), lambda skip: _interrupting(skip, at=1))
    assert first.stopped_by_signal and first.step == 2
    state = torch.load(latest_checkpoint(cfg_for(tmp_path / "cut")) / "trainer_state.pt", weights_only=True)
    assert state["optimizer"]["state"] and not any("_orig_mod" in n for n in state["optimizer"]["state"])
    resumed_model = small_model(seed=123)
    resumed = train(cfg_for(tmp_path / "cut", resume=True, **kw), resumed_model, stream)
    assert first.losses + resumed.losses == full.losses
    for k, v in weights(full_model).items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")),
    reason="inductor on CPU compiles C++ kernels",
)
def test_inductor_training_matches_eager(tmp_path):
    """The default backend end to end (slow: over a minute of kernel compilation on a cold inductor cache)."""
    eager = train(cfg_for(tmp_path / "eager", max_steps=3, grad_accum=1), small_model(), stream)
    compiled = train(cfg_for(tmp_path / "inductor", max_steps=3, grad_accum=1, compile=True), small_model(), stream)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert _final_names(tmp_path / "inductor") == _final_names(tmp_path / "eager")


def test_an_unknown_compile_backend_is_named(tmp_path):
    with pytest.raises(ValueError, match="compile_backend = 'fast'"):
        train(cfg_for(tmp_path, compile=True, compile_backend="fast"), small_model(), stream)


def test_mfu_counts_the_real_tokens_of_a_padded_batch():
    """Finetuning pads rows to the longest example: MFU counts the attention mask's tokens, not rows x length."""

    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = Batch(ids, ids.clone(), mask, [])
    assert batch_tokens(batch) == 6
    assert batch_flops(batch, lambda seq_len: 10.0 * seq_len) == 6 * 40.0  # FLOPs per token at the batch's length
    assert mfu(1e12, 2.0, 1e12) == pytest.approx(0.5)
    assert mfu(1e12, 2.0, 1e12, world_size=2) == pytest.approx(0.25)


def test_mfu_above_100_percent_comes_with_a_warning(tmp_path, caplog):
    """A peak set (or measured) too low gives MFU > 1; the run says why instead of printing it bare."""
    result = train(cfg_for(tmp_path, max_steps=2, grad_accum=1, peak_flops=1.0), small_model(), stream)
    assert all(m["mfu"] > 1 for m in result.metrics if "mfu" in m)
    assert "is above 100%: the peak of 1 FLOP/s is too low (given by --peak_flops" in caplog.text
    assert caplog.text.count("is above 100%") == 1  # once per run


# ---------------------------------------------------------------- every stop pattern


def _val_loss(model, step):
    return {"val_loss": 1.0}


def _metric_steps(run) -> list[tuple[int, str]]:
    """(step, kind) of every metrics.jsonl row: "loss" for a training row, "val" for an evaluation."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "loss" if "loss" in r else "val") for r in rows]


def test_a_shorter_fresh_run_over_a_finished_one_keeps_its_newest_checkpoint(tmp_path, caplog):
    """The default runs/tiny holds a finished run's step_400 and step_480: a 3-step run into it must not prune its
    own step_3 (they sort after it); it starts a clean series and says what it removed."""
    train(cfg_for(tmp_path, max_steps=6, ckpt_every=2, grad_accum=1), small_model(), stream)
    short = train(cfg_for(tmp_path, max_steps=3, ckpt_every=3, grad_accum=1), small_model(), stream)
    assert short.step == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_0000003"]
    assert latest_checkpoint(cfg_for(tmp_path)).name == "step_0000003"
    assert "step_0000004, step_0000006" in caplog.text and "starting a new checkpoint series" in caplog.text
    assert [s for s, _ in _metric_steps(tmp_path)] == [1, 2, 3]  # the earlier run's rows are gone with it
    resumed = train(cfg_for(tmp_path, max_steps=3, resume=True, grad_accum=1), small_model(), stream)
    assert resumed.step == 3


def test_a_fresh_run_refuses_to_discard_an_unfinished_run(tmp_path):
    first = train(cfg_for(tmp_path), small_model(), lambda skip: _interrupting(skip, at=5))
    assert first.stopped_by_signal
    with pytest.raises(FileExistsError) as err:
        train(cfg_for(tmp_path), small_model(), stream)
    message = str(err.value)
    assert str(tmp_path / "checkpoints") in message and "step_0000003 of 6 steps" in message
    assert "--resume" in message and "--out" in message
    assert latest_checkpoint(cfg_for(tmp_path)).name == "step_0000003"


def test_resuming_a_finished_run_finishes_cleanly_without_repeating_metrics(tmp_path):
    """A run killed during its final evaluation or save (or simply finished) resumes at max_steps: it evaluates and
    saves again, reports the run's own first and last loss, and metrics.jsonl holds each row once."""
    full = train(cfg_for(tmp_path, max_steps=4, eval_every=2), small_model(), stream, evaluate=_val_loss)
    shutil.rmtree(tmp_path / "final")  # as if killed during the final save
    again = train(
        cfg_for(tmp_path, max_steps=4, eval_every=2, resume=True), small_model(seed=9), stream, evaluate=_val_loss
    )
    assert again.step == 4 and again.losses == [] and (tmp_path / "final").is_dir()
    assert again.final_losses()["first_loss"] == full.losses[0]
    assert again.final_losses()["last_loss"] == full.losses[-1] and again.final_losses()["val_loss"] == 1.0
    assert _metric_steps(tmp_path) == [(1, "loss"), (2, "loss"), (2, "val"), (3, "loss"), (4, "loss"), (4, "val")]


def test_extending_a_finished_run_equals_an_uninterrupted_one_on_a_constant_schedule(tmp_path, caplog):
    """Extending (--max_steps 4, then --max_steps 8 --resume) is exact where the learning rate does not depend on
    max_steps; a decaying schedule is stretched at the restart, which the resumed run says."""
    kw = dict(schedule="constant", grad_accum=1, eval_every=2)
    full_model = small_model()
    full = train(cfg_for(tmp_path / "full", max_steps=8, **kw), full_model, stream, evaluate=_val_loss)
    short = train(cfg_for(tmp_path / "ext", max_steps=4, **kw), small_model(), stream, evaluate=_val_loss)
    model = small_model(seed=5)
    extended = train(cfg_for(tmp_path / "ext", max_steps=8, resume=True, **kw), model, stream, evaluate=_val_loss)
    assert short.losses + extended.losses == full.losses
    for k, v in weights(full_model).items():
        assert torch.equal(model.state_dict()[k], v), k
    assert _metric_steps(tmp_path / "ext") == _metric_steps(tmp_path / "full")
    assert "learning-rate schedule" not in caplog.text
    train(cfg_for(tmp_path / "cos", max_steps=4, grad_accum=1), small_model(), stream)
    train(cfg_for(tmp_path / "cos", max_steps=8, resume=True, grad_accum=1), small_model(), stream)
    assert "was trained with max_steps = 4 and this run has 8: the cosine learning-rate schedule" in caplog.text


def _cut_run(tmp_path, **kw):
    """A run stopped by SIGTERM at step 3 of 6 with a checkpoint at every step, and an uninterrupted one."""
    cfg = dict(ckpt_every=1, keep_last=3, grad_accum=1, **kw)
    full_model = small_model()
    full = train(cfg_for(tmp_path / "full", **cfg), full_model, stream)
    first = train(cfg_for(tmp_path / "cut", **cfg), small_model(), lambda skip: _interrupting(skip, at=2))
    assert first.stopped_by_signal and first.step == 3
    return cfg, full, full_model, first


def _assert_same(resumed_model, full_model):
    for k, v in weights(full_model).items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


def test_resume_falls_back_past_a_truncated_checkpoint_and_names_the_file(tmp_path, caplog):
    cfg, full, full_model, first = _cut_run(tmp_path)
    bad = tmp_path / "cut" / "checkpoints" / "step_0000003" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    resumed_model = small_model(seed=9)
    resumed = train(cfg_for(tmp_path / "cut", resume=True, **cfg), resumed_model, stream)
    assert f"{bad}: cannot be read" in caplog.text and "step_0000002" in caplog.text
    assert first.losses[:2] + resumed.losses == full.losses
    _assert_same(resumed_model, full_model)
    assert [s for s, _ in _metric_steps(tmp_path / "cut")] == list(range(1, 7))  # step 3 replayed, logged once


def test_resume_finds_step_directories_without_latest_and_clears_killed_writes(tmp_path, caplog):
    cfg, full, full_model, first = _cut_run(tmp_path)
    root = tmp_path / "cut" / "checkpoints"
    (root / "latest").unlink()
    (root / ".step_0000004.k1ll3d").mkdir()  # a checkpoint write killed half-way
    (root / ".step_0000004.k1ll3d" / "model.safetensors").write_bytes(b"partial")
    (root / ".latest.x1.tmp").write_text("step_0000004")
    (tmp_path / "cut" / ".final.k1ll3d").mkdir()
    resumed_model = small_model(seed=9)
    resumed = train(cfg_for(tmp_path / "cut", resume=True, **cfg), resumed_model, stream)
    assert f"no {root / 'latest'}; trying the newest step directory, {root / 'step_0000003'}" in caplog.text
    assert first.losses + resumed.losses == full.losses
    _assert_same(resumed_model, full_model)
    leftovers = [p.name for p in (*root.iterdir(), *(tmp_path / "cut").iterdir()) if p.name.startswith(".")]
    assert leftovers == []


def test_a_killed_overwrite_of_a_checkpoint_is_restored_not_removed(tmp_path):
    """atomic_write_dir moves the old directory aside before swapping the new one in: a kill between the two leaves
    only ``.step_N.old``, which is the checkpoint itself."""
    cfg, full, full_model, first = _cut_run(tmp_path)
    root = tmp_path / "cut" / "checkpoints"
    (root / "step_0000003").rename(root / ".step_0000003.old")
    resumed_model = small_model(seed=9)
    resumed = train(cfg_for(tmp_path / "cut", resume=True, **cfg), resumed_model, stream)
    assert first.losses + resumed.losses == full.losses
    _assert_same(resumed_model, full_model)


def test_a_run_stopped_by_a_signal_says_so_in_its_exit_code(tmp_path, caplog):
    stopped = train(cfg_for(tmp_path), small_model(), lambda skip: _interrupting(skip, at=5))
    assert stopped.exit_code == 128 + signal.SIGTERM == 143
    assert "stopped early by SIGTERM at step 3 of 6" in caplog.text and "exit code 143" in caplog.text
    done = train(cfg_for(tmp_path, resume=True), small_model(), stream)
    assert done.exit_code == 0 and done.run_summary() == {
        "steps": 6,
        "max_steps": 6,
        "stopped_by_signal": False,
        "stop_signal": None,
        "exit_code": 0,
        "nan_steps": 0,
    }


def _tensorboard_steps(run) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar TensorBoard shows for the run, per tag, in the order it reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_shows_each_step_once_after_resumes_that_replay_steps(tmp_path):
    """As metrics.jsonl does: a run killed after logging steps 5 and 6 (and its final evaluation) but before their
    checkpoint replays them on resume, and a finished run resumed redoes its final evaluation; TensorBoard must show
    each step once, with the values metrics.jsonl holds; a fresh run over a finished one shows its own alone."""
    pytest.importorskip("tensorboard")
    cfg = dict(max_steps=6, ckpt_every=2, keep_last=2, eval_every=2, grad_accum=1)
    train(cfg_for(tmp_path, **cfg), small_model(), stream, evaluate=_val_loss)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000006")  # as if killed before step 6's checkpoint
    shutil.rmtree(tmp_path / "final")
    (tmp_path / "checkpoints" / "latest").write_text("step_0000004")
    train(cfg_for(tmp_path, resume=True, **cfg), small_model(seed=5), stream, evaluate=_val_loss)
    shutil.rmtree(tmp_path / "final")  # as if killed during the final save: resuming redoes the final evaluation
    train(cfg_for(tmp_path, resume=True, **cfg), small_model(seed=6), stream, evaluate=_val_loss)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    shown = _tensorboard_steps(tmp_path)
    assert [s for s, _ in shown["loss"]] == list(range(1, 7))
    assert [s for s, _ in shown["val_loss"]] == [2, 4, 6]
    for tag in ("loss", "val_loss", "lr", "grad_norm"):
        assert shown[tag] == [(r["step"], pytest.approx(r[tag])) for r in rows if tag in r], tag
    train(cfg_for(tmp_path, **{**cfg, "max_steps": 3}), small_model(), stream)  # a fresh run over the finished one
    assert [s for s, _ in _tensorboard_steps(tmp_path)["loss"]] == [1, 2, 3]  # its events alone
