"""Shard reader throughput (webdataset streaming, image decoding, tokenization, semi-causal collation) against the
rate at which a training step of the ``tiny`` preset consumes batches, in one process.

    python bench/data.py [--batches 30] [--steps 5]

Uses the bundled world (generated under ``data/world`` if missing) and writes ``bench/results/data.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from bench/ (whose
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # data.py would shadow the `data` package)

import torch  # noqa: E402

from data.pipeline import batches  # noqa: E402
from data.prepare import prepare_shards, prepare_tokenizer, prepare_world  # noqa: E402
from data.reader import ReaderStats, iter_samples  # noqa: E402
from train.loop import make_optimizer  # noqa: E402
from train.pretraining import PretrainConfig, build_model, job_pipeline_config  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="batches to time the reader on")
    parser.add_argument("--steps", type=int, default=5, help="training steps to time")
    parser.add_argument("--world", default="data/world")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cfg = PretrainConfig(world=args.world)
    world = prepare_world(cfg.world, cfg.seed)
    tokenizer = prepare_tokenizer(world, cfg.tokenizer, cfg.vocab_size)
    text, caption = prepare_shards(world, "train")
    model = build_model(cfg, tokenizer)
    pcfg = job_pipeline_config(cfg, model)
    stats = ReaderStats()

    def stream():
        kw = dict(shuffle_buffer=cfg.shuffle_buffer, seed=0, resample=True, stats=stats)
        return batches(iter_samples(text, **kw), iter_samples(caption, **kw), tokenizer, pcfg)

    it = stream()
    next(it)  # open shards, fill the shuffle buffers
    start = time.perf_counter()
    made = [next(it) for _ in range(args.batches)]
    reader_s = (time.perf_counter() - start) / args.batches
    samples = sum(len(b.docks[0].batch_index) if b.docks else 0 for b in made) / args.batches

    model.train()
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    times = []
    for i in range(args.steps + 1):
        batch = made[i % len(made)]
        t0 = time.perf_counter()
        loss = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    result = {
        "batch": {
            "rows": cfg.batch_size,
            "seq_len": cfg.seq_len,
            "text_rows": pcfg.text_rows,
            "image_caption_samples_per_batch": samples,
        },
        "reader_batches_per_s": 1 / reader_s,
        "train_steps_per_s": 1 / step_s,
        "headroom": step_s / reader_s,
        "reader_skipped": dict(stats.skipped),
        "threads": torch.get_num_threads(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Data pipeline vs training step, `tiny` preset, batch {cfg.batch_size} x {cfg.seq_len} "
        f"({pcfg.text_rows} text rows + {cfg.batch_size - pcfg.text_rows} image-caption rows holding "
        f"{samples:.0f} images), one process, {torch.get_num_threads()} threads, no DataLoader workers.",
        "",
        "| stage | batches/s | ms/batch |",
        "|---|---|---|",
        f"| reader + decode + tokenize + collate | {1 / reader_s:.1f} | {reader_s * 1e3:.0f} |",
        f"| training step (forward, backward, AdamW) | {1 / step_s:.2f} | {step_s * 1e3:.0f} |",
        "",
        f"The reader produces batches **{step_s / reader_s:.0f}x** faster than a step consumes them.",
    ]
    (args.out / "data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
