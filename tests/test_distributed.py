"""DDP and FSDP under torchrun (2 processes, gloo on CPU) train exactly like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import small_model

WORKER = Path(__file__).parent / "dist_worker.py"


def run(out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mode == "single":
        cmd = [sys.executable, str(WORKER)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    proc = subprocess.run(
        cmd + ["--dist", mode, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def metric(out: Path, name: str) -> list[float]:
    return [json.loads(line)[name] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run(out, "single")
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process(single, tmp_path, mode):
    run(tmp_path, mode)
    ref, got = (
        load_file(str(single / "final" / "model.safetensors")),
        load_file(str(tmp_path / "final" / "model.safetensors")),
    )
    assert ref.keys() == got.keys()
    init = small_model(seed=0).state_dict()
    assert all(not torch.equal(init[k], ref[k]) for k in ref if k.startswith("decoder.blocks"))  # it trained
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=2e-5, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    assert metric(tmp_path, "loss") == pytest.approx(metric(single, "loss"), abs=1e-5)
    # the gradient norm depends on how gradients are reduced (a sum instead of a mean would double it)
    assert metric(tmp_path, "grad_norm") == pytest.approx(metric(single, "grad_norm"), rel=1e-4)
