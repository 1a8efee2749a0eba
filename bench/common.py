"""Helpers shared by the benchmarks: machine ceilings measured in the run (matmul FLOP/s, memory bandwidth),
a training step, alternating timing, and the machine description written beside each result."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n fp32 matmul: the ceiling a training step could reach on this machine."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def memory_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s of the best of ``repeats`` copies of a filled ``mib``-MiB buffer, counting the read and the write:
    the ceiling for a step that must stream every weight from memory once (far larger than any cache)."""
    src = torch.randn(mib * 2**18, device=device)  # filled, so its pages are real memory
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def make_step(model: torch.nn.Module, ids: torch.Tensor, loss_fn) -> Callable[[], float]:
    """One training step with the model's own loss path: ``loss_fn(model, ids) -> loss``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = loss_fn(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def time_alternating(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn ``repeats`` times, so drift in machine speed (other
    processes on a shared CPU) hits every function alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    """The CPU model as the kernel reports it, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Where and with what a result was measured, and the command that measured it."""
    import transformers  # here, not at the top: only the benchmarks that compare with transformers load it

    info = {
        "device": str(device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "command": "python " + " ".join(sys.argv),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
