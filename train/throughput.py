"""Model FLOPs utilisation (MFU) for the training bar and metrics: FLOPs of the tokens actually trained on, over a
peak FLOP/s that is measured robustly or given (``--peak_flops``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from data.batch import Batch


def measure_peak_flops(device: torch.device, bf16: bool, trials: int = 10, pause_s: float = 0.02) -> float:
    """FLOP/s of a large matmul in the training precision: MFU's denominator. The fastest of ``trials`` timings,
    spaced by short pauses so that a competing process that holds a core for a moment slows only some of them."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.bfloat16 if bf16 else torch.float32
    # these two draws come from the global RNG, as they always have: a run's later random numbers depend on them
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for trial in range(trials + 1):  # the first is a warm-up
        if trial > 1:
            time.sleep(pause_s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if trial:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def batch_tokens(batch: Batch) -> int:
    """The tokens a batch really holds: its attention mask's ones (rows padded to the longest are not full)."""
    return int(batch.attention_mask.sum())


def batch_flops(batch: Batch, flops_per_token: Callable[[int], float]) -> float:
    """Training FLOPs (forward + backward) of one batch: its real tokens times the FLOPs per token at the batch's
    sequence length (``Decoder.flops_per_token``)."""
    return batch_tokens(batch) * flops_per_token(batch.input_ids.shape[1])


def mfu(flops: float, seconds: float, peak_flops: float, world_size: int = 1) -> float:
    """Achieved FLOP/s over the peak of all processes."""
    return flops / max(seconds, 1e-9) / (peak_flops * world_size)


def mfu_warning(value: float, peak_flops: float, measured: bool) -> str:
    """Why an MFU above 100% was printed: the peak FLOP/s it divides by is too low."""
    why = (
        "measured at start-up, most likely while other processes held the cores; give the machine's real peak "
        "with --peak_flops"
        if measured
        else "given by --peak_flops; give the machine's real peak"
    )
    return (
        f"MFU {value:.0%} is above 100%: the peak of {peak_flops:.3g} FLOP/s is too low ({why}). MFU values above "
        "100% are marked with '!'"
    )
