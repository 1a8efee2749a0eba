"""Run by test_distributed.py: a few training steps of the synthetic model, single-process or under torchrun."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy's

from synthetic import make_batch, slice_batch, small_model, stream

from train.loop import train
from train.pretraining import PretrainConfig

ROWS = 2  # rows per micro-batch; the global batch is 2 micro-batches


def single_process_halves(skip: int):
    """One process, grad_accum=2: micro-batch i is half (i % 2) of global batch i // 2, as the two ranks see it."""
    i = skip
    while True:
        full = make_batch(i // 2, ROWS * 2, seed=3)
        half = i % 2
        yield slice_batch(full, slice(half * ROWS, (half + 1) * ROWS))
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dist", choices=("ddp", "fsdp", "single"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cfg = PretrainConfig(
        out=args.out,
        max_steps=args.steps,
        batch_size=ROWS,
        grad_accum=2 if world == 1 else 1,
        seq_len=32,
        lr=3e-3,
        warmup_steps=1,
        ckpt_every=100,
        log_every=1,
        eval_every=0,
        peak_flops=1e11,
        dist="fsdp" if args.dist == "fsdp" else "ddp",
    )
    model = small_model(seed=0)
    if world == 1:
        train(cfg, model, single_process_halves)
    else:
        train(cfg, model, lambda skip: stream(skip, batch_size=ROWS, seed=3, rank=rank, world_size=world))


if __name__ == "__main__":
    main()
