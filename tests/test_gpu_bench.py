"""bench/gpu.py and bench/gpu.sh on CPU: what can be checked before a GPU is lent (flags, the refusal without CUDA,
the command lines the script runs, and each benchmark's code at small shapes with ``device=cpu``)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import small_model

from encoders.base import OWN_IDS
from metalm.config import DecoderConfig
from metalm.loss import causal_lm_loss, fused_linear_cross_entropy
from train.pretraining import parse_pretrain_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
CPU = torch.device("cpu")


def _load_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _load_bench()


def test_flags_default_and_bad_values_are_named(tmp_path, capsys):
    args = gpu.parse_args(["mfu"])
    assert (args.device, args.seq, args.models, Path(args.out)) == (
        "cuda",
        2048,
        "vl-medium,language-small",
        gpu.RESULTS,
    )
    assert gpu.parse_args(["attention", "--out", str(tmp_path), "--steps", "2"]).steps == 2
    bad = {
        ("mfu", "--steps", "0"): "--steps 0: expected at least 1",
        ("mfu", "--models", "vl-medium,huge"): "unknown ['huge']",
        ("mfu", "--assets", str(tmp_path / "nope")): "not a directory",
        ("train",): "invalid choice",
    }
    for argv, message in bad.items():
        with pytest.raises(SystemExit):
            gpu.parse_args(list(argv))
        assert message in capsys.readouterr().err


def test_cuda_is_required_never_a_silent_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU: this script needs one"):
        gpu.pick_device("cuda")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu.main(["attention", "--out", "unused"])
    with pytest.raises(SystemExit, match="expected cuda or cpu"):
        gpu.pick_device("mps")
    assert gpu.pick_device("cpu") == CPU


def test_the_script_stops_at_once_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "no CUDA GPU: this script needs one" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing ran


def _script_commands() -> list[list[str]]:
    """The command lines gpu.sh runs, continuation lines joined, its variables replaced by example values."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    text = text.replace('${ASSETS:+--assets "$ASSETS"}', "").replace('"$WORK', '"/tmp/work').replace('"$RES"', "res")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("step ")]


def test_the_script_is_valid_bash_and_its_command_lines_parse():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    commands = _script_commands()
    names = [c[1] for c in commands]
    assert names[:2] == ["cuda_tests", "pinned_memory"] and "pretrain_fsdp_bf16" in names
    assert all(re.fullmatch(r"\d+", c[2]) for c in commands)  # every step has a time limit
    assert sum(int(c[2]) for c in commands) <= 560  # the lent machine allows one 600 s command
    for _, name, _, *argv in commands:
        if "bench/gpu.py" in argv:
            args = argv[argv.index("bench/gpu.py") + 1 :]
            assert gpu.parse_args(args).command in name, name
        elif "train/pretrain.py" in argv:
            cfg = parse_pretrain_config(argv[argv.index("train/pretrain.py") + 1 :])
            assert (cfg.dist, cfg.precision, cfg.log_every) == ("fsdp", "bf16", 1)
        elif "pytest" in argv:
            assert all((ROOT / a.split("::")[0]).is_file() for a in argv if a.startswith("tests/"))
    pinned = next(c for c in commands if c[1] == "pinned_memory")
    test = pinned[pinned.index("-k") + 1]
    assert f"def {test}(" in (ROOT / "tests" / "test_pipeline.py").read_text()


def test_attention_bench_on_cpu_times_sdpa_and_names_why_xformers_cannot_run():
    cfg = DecoderConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, positions="rotary")
    for padded in (False, True):
        result = gpu.attention_bench(cfg, 2, 16, CPU, steps=1, warmup=0, padded=padded)
        assert result["sdpa"]["step_s"] > 0 and result["sdpa"]["tokens_per_s"] > 0
        assert "no CPU kernels" in result["xformers"]["error"]


def test_train_step_bench_on_cpu_reports_mfu_with_and_without_encoders():
    model = small_model()
    batch = gpu.random_batch(model, 2, 32)
    assert {d.encoder for d in batch.docks} == {"vision", "text"}
    result = gpu.train_step_bench(model, batch, CPU, steps=1, warmup=1, peak=1e12, spec=2e12)
    assert result["losses_finite"] and math.isfinite(result["first_loss"])
    assert 0 < result["mfu"] < result["mfu_with_encoders"]
    assert result["mfu_of_spec"] == pytest.approx(result["mfu"] / 2)
    assert result["tokens_per_s"] == pytest.approx(2 * 32 / result["step_s"])


def test_language_small_has_smollm2s_decoder_and_a_minilm_shaped_encoder():
    model = gpu.language_small()
    dec = model.config.decoder
    assert (dec.n_layers, dec.dim, dec.n_heads, dec.n_kv_heads, dec.vocab_size) == (30, 576, 9, 3, 49152)
    assert (dec.positions, dec.norm, dec.mlp, dec.rope_theta, dec.tie_embeddings) == (
        "rotary",
        "rmsnorm",
        "swiglu",
        1e5,
        True,
    )
    assert 134e6 < model.decoder.num_params() < 136e6  # SmolLM2-135M
    text = model.encoders["text"]
    assert text.reads == OWN_IDS and text.output_dim == 384 and len(text.blocks()) == 6
    trained = {n.split(".")[3] for n, p in text.named_parameters() if p.requires_grad and ".layer." in n}
    assert trained == {"4", "5"}  # all but the last two layers frozen
    batch = gpu.random_batch(model, 1, 96)
    with torch.no_grad():
        out = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels)
    assert math.isfinite(out.loss.item())


def test_fsdp_check_under_torchrun_on_cpu(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "bench/gpu.py"]
    cmd += ["fsdp", "--device", "cpu", "--out", str(tmp_path), "--batch", "2", "--seq", "64", "--steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fsdp.json").read_text())
    assert result["sharded"] and result["finite"] and result["decreasing"] and result["state_dict_fp32"]
    assert result["world_size"] == 1 and len(result["losses"]) == 4


def test_pretrain_metrics_check_and_the_summary(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "loss": 6.0 - i * 0.5} for i in range(1, 7)] + [{"step": 6, "val_loss": 3.0}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gpu.main(["pretrain", "--out", str(tmp_path), "--metrics", str(metrics)]) == 0
    result = json.loads((tmp_path / "pretrain.json").read_text())
    assert result["finite"] and result["decreasing"] and len(result["losses"]) == 6
    metrics.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": NaN}\n{"step": 3, "loss": 0.5}\n')
    assert not gpu.metrics_check(metrics)["finite"]
    metrics.write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(SystemExit, match="1 logged losses; expected at least 3"):
        gpu.metrics_check(metrics)

    attention = {
        "decoder": "tiny",
        "cases": [gpu.attention_bench(DecoderConfig(dim=32, n_heads=4), 1, 8, CPU, 1, 0, False)],
    }
    info = {"gpu": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "torch": "2.x", "xformers": "0.0.x"}
    (tmp_path / "attention.json").write_text(json.dumps({"info": info, **attention}))
    (tmp_path / "steps.tsv").write_text("cuda_tests\t0\t31\nattention\t1\t12\n")
    assert gpu.main(["summary", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "gpu.md").read_text()
    assert "GPU: **NVIDIA H200**" in md and "| attention | 1 FAILED | 12 |" in md
    assert "xformers against SDPA" in md and "no CPU kernels" in md and "pretrain.py under torchrun" in md
    assert gpu.spec_peak("NVIDIA H200") == 989e12 and gpu.spec_peak("a CPU") is None


def test_fused_loss_under_bf16_autocast_matches_the_unfused_one():
    """The fused loss mixed dtypes under autocast (its gradient matmul came out in bf16), which only a CUDA run,
    where precision auto means bf16, would meet; on CPU autocast shows it too."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 12, 16, generator=g, requires_grad=True)
    weight = (torch.randn(40, 16, generator=g) * 0.2).requires_grad_()
    labels = torch.randint(0, 40, (2, 12), generator=g)
    labels[1, :3] = -100
    grads = []
    for fused in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss, _ = fused_linear_cross_entropy(hidden, weight, labels)
            else:
                loss, _ = causal_lm_loss(hidden @ weight.t(), labels)
        hidden.grad = weight.grad = None
        loss.backward()
        grads.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
        assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    for got, want in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
