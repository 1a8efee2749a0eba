"""What produced a run, recorded in its ``summary.json``: Python, the versions of the packages that decide its
numbers, and the machine's CPU and thread count (fp32 CPU kernels differ between processors and thread counts)."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

PACKAGES = ("torch", "torchvision", "transformers", "timm", "open_clip_torch", "tokenizers", "numpy", "pillow")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package, or ``"not installed"``."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict:
    """Python, package versions, CPU and the threads torch computes with."""
    return {
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
