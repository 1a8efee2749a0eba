"""Semi-causal pretraining of MetaLM: ``torchrun --standalone --nproc_per_node=1 train/pretrain.py``.

With no arguments it generates the bundled world (if missing), trains a BPE tokenizer on its corpus, writes
webdataset shards, warms up the vision encoder on the world's scene labels (standing in for the pretrained
encoder MetaLM docks; then frozen), trains the ``tiny`` preset on text documents and image-caption pairs, and saves
``runs/tiny/final`` (config.json, model.safetensors, tokenizer.json). It then prints the loss against a unigram
baseline and greedy captions of held-out images. Every field of ``train.config.TrainConfig`` is a flag.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from data.batch import Batch
from data.pipeline import BatchStream, PipelineConfig, batches, image_tensor, load_batches
from data.reader import ReaderStats, expand_urls, iter_samples
from data.shards import write_coco_captions, write_text
from data.tokenizer import Tokenizer
from data.world import current_world, generate_world
from metalm import MetaLM
from metalm.docking import docked_mask
from metalm.loss import IGNORE_INDEX
from metalm.presets import get_preset
from metalm.semicausal import semicausal_labels
from train.config import TrainConfig, parse_config
from train.loop import Env, latest_checkpoint, setup_env, train, validation_loss, write_summary

log = logging.getLogger("metalm.pretrain")


def on_main_first(env: Env, fn, *args, **kwargs):
    """Run ``fn`` on rank 0 while the others wait, then everywhere (it must be idempotent): shared set-up."""
    if env.main:
        result = fn(*args, **kwargs)
    if env.world_size > 1:
        dist.barrier()
    if not env.main:
        result = fn(*args, **kwargs)
    return result


def prepare_world(cfg: TrainConfig) -> Path:
    """The bundled world at ``cfg.world``: used as it is when present (whatever its size; brought up to the current
    world version with its own parameters), generated otherwise."""
    world = Path(cfg.world)
    if (world / "meta.json").is_file():
        return current_world(world)
    return Path(generate_world(world, seed=cfg.seed))


def prepare_tokenizer(cfg: TrainConfig, world: Path) -> Tokenizer:
    """The given tokenizer, or a byte-level BPE trained once on the world's training corpus."""
    if cfg.tokenizer:
        return Tokenizer.load(cfg.tokenizer)
    cache = world / f"tokenizer-{cfg.vocab_size}"
    if not (cache / "tokenizer.json").is_file():
        docs = [json.loads(line)["text"] for line in (world / "text" / "corpus_train.jsonl").open()]
        captions = [a["caption"] for a in json.loads((world / "captions_train.json").read_text())["annotations"]]
        Tokenizer.train(docs + captions, vocab_size=cfg.vocab_size).save(cache)
    return Tokenizer.load(cache)


def prepare_shards(world: Path, split: str) -> tuple[list[str], list[str]]:
    """Text and caption shards for a split of the world, written once under ``world/shards``."""
    out = world / "shards"
    text, caption = out / f"text-{split}", out / f"caption-{split}"
    if not list(out.glob(f"text-{split}-*.tar")):
        write_text([world / "text" / f"corpus_{split}.jsonl"], str(text) + "-%06d.tar")
    if not list(out.glob(f"caption-{split}-*.tar")):
        write_coco_captions(world / f"captions_{split}.json", world, str(caption) + "-%06d.tar")
    return expand_urls(str(out / f"text-{split}-*.tar")), expand_urls(str(out / f"caption-{split}-*.tar"))


def pipeline_config(cfg: TrainConfig, model: MetaLM) -> PipelineConfig:
    """Batch layout for this model: image size, normalisation and token count come from its vision encoder."""
    vision = model.encoders["vision"] if "vision" in model.encoders else None
    mean, std = vision.normalization() if vision is not None else ((0.5,) * 3, (0.5,) * 3)
    return PipelineConfig(
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, text_weight=cfg.text_weight, span_ratio=cfg.span_ratio,
        span_min=cfg.span_min, span_max=cfg.span_max, prefix_max=cfg.prefix_max,
        image_size=tuple(vision.image_size) if vision is not None else (32, 32), image_mean=tuple(mean),
        image_std=tuple(std), image_tokens=vision.num_tokens if vision is not None else 0,
        text_encoder="text" if "text" in model.encoders else None,
        vision_encoder="vision" if vision is not None else None, seed=cfg.seed,
    )  # fmt: skip


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> MetaLM:
    if cfg.init_from:
        return MetaLM.from_pretrained(cfg.init_from)
    torch.manual_seed(cfg.seed)
    overrides = {"vocab_size": tokenizer.vocab_size, "max_seq_len": cfg.seq_len, **cfg.model}
    return MetaLM(get_preset(cfg.preset, **overrides))


def warm_up_vision(model: MetaLM, world: Path, pcfg: PipelineConfig, steps: int, seed: int) -> dict[str, float]:
    """Supervised warm-up of the vision encoder on the world's scene labels (colour and shape in each slot).

    MetaLM docks *pretrained* encoders; the bundled world has no CLIP, so this stands in for one: a from-scratch
    ViT trained only through the caption loss learns to see far more slowly than the decoder learns the caption
    templates, and the captions then ignore the image. Returns held-out accuracy per label.
    """
    from PIL import Image

    from data.world import COLORS, SHAPES, SLOTS

    vision = model.encoders[pcfg.vision_encoder]
    scenes = [json.loads(line) for line in (world / "scenes_train.jsonl").open()]
    colors, shapes = ["none", *COLORS], ["none", *SHAPES]
    pixels = torch.stack([image_tensor(Image.open(world / s["file_name"]), pcfg.image_size, pcfg.image_mean,
                                       pcfg.image_std) for s in scenes])  # fmt: skip
    labels = torch.zeros(len(scenes), 2 * len(SLOTS), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for color, shape, slot in scene["things"]:
            labels[i, SLOTS.index(slot)] = colors.index(color)
            labels[i, len(SLOTS) + SLOTS.index(slot)] = shapes.index(shape)
    sizes = [len(colors)] * len(SLOTS) + [len(shapes)] * len(SLOTS)
    head = torch.nn.Linear(vision.output_dim * vision.num_tokens, sum(sizes))
    params = [p for p in vision.parameters()] + list(head.parameters())
    was = [p.requires_grad for p in vision.parameters()]
    vision.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=2e-3)
    held = max(1, len(scenes) // 10)
    gen = torch.Generator().manual_seed(seed)

    def logits(x: torch.Tensor) -> list[torch.Tensor]:
        return head(vision({"pixel_values": x}).hidden_states.flatten(1)).split(sizes, dim=-1)

    for _ in range(steps):
        idx = torch.randint(0, len(scenes) - held, (64,), generator=gen)
        loss = sum(F.cross_entropy(out, labels[idx, k]) for k, out in enumerate(logits(pixels[idx])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p, flag in zip(vision.parameters(), was, strict=True):
        p.requires_grad_(flag)
    with torch.no_grad():
        outs = logits(pixels[-held:])
    acc = [float((o.argmax(-1) == labels[-held:, k]).float().mean()) for k, o in enumerate(outs)]
    n = len(SLOTS)
    return {"color_accuracy": sum(acc[:n]) / n, "shape_accuracy": sum(acc[n:]) / n}


def warn_if_workers_changed(cfg: TrainConfig) -> None:
    """Resume is exact only with the number of DataLoader workers the run started with (the batch order depends on
    it, see ``data.pipeline.BatchStream``); another number still trains, on a different order, so this warns."""
    ckpt = latest_checkpoint(cfg)
    if ckpt is None or not (ckpt / "train_config.json").is_file():
        return
    saved = json.loads((ckpt / "train_config.json").read_text()).get("num_workers", 0)
    if saved != cfg.num_workers:
        log.warning("--resume: %s was saved with num_workers = %d but this run has %d; the data order differs from "
                    "an uninterrupted run (resume with --num_workers %d for exact resume)", ckpt, saved,
                    cfg.num_workers, saved)  # fmt: skip


def unigram_loss(batch_iter: Iterator, n_batches: int, counts: Counter, vocab: int) -> float:
    """Cross-entropy (nats/token) of a unigram model (add-one smoothed training counts) on the same targets."""
    total = sum(counts.values()) + vocab
    nll, n = 0.0, 0
    for _ in range(n_batches):
        batch = next(batch_iter)
        docked = docked_mask(batch.docks, *batch.labels.shape, batch.labels.device)
        labels = semicausal_labels(batch.labels, docked, batch.attention_mask)
        for t in labels[:, 1:][labels[:, 1:] != IGNORE_INDEX].tolist():
            nll -= math.log((counts[t] + 1) / total)
            n += 1
    return nll / max(n, 1)


def run(cfg: TrainConfig) -> dict:
    """The whole pretraining job; returns (and writes to ``out/summary.json``) what the model learned."""
    env = setup_env()
    logging.basicConfig(level=logging.INFO if env.main else logging.WARNING, format="%(message)s")
    world = on_main_first(env, prepare_world, cfg)
    tokenizer = on_main_first(env, prepare_tokenizer, cfg, world)
    text_train, caption_train = on_main_first(env, prepare_shards, world, "train")
    text_train = expand_urls(cfg.text_shards) if cfg.text_shards else text_train
    caption_train = expand_urls(cfg.image_shards) if cfg.image_shards else caption_train
    text_val, caption_val = on_main_first(env, prepare_shards, world, "val")
    model = build_model(cfg, tokenizer)
    pcfg = pipeline_config(cfg, model)
    stats = ReaderStats()
    vision_warmup = {}
    if cfg.vision_warmup_steps and pcfg.vision_encoder and not cfg.init_from:
        vision_warmup = warm_up_vision(model, world, pcfg, cfg.vision_warmup_steps, cfg.seed)
        model.config.encoders[pcfg.vision_encoder].freeze = "all"
        model.apply_freeze()
        if env.main:
            log.info("vision warm-up: colour accuracy %.2f, shape accuracy %.2f (held-out scenes); encoder frozen",
                     vision_warmup["color_accuracy"], vision_warmup["shape_accuracy"])  # fmt: skip

    def train_batches(skip: int, num_workers: int = cfg.num_workers, counts: ReaderStats = stats) -> Iterator[Batch]:
        stream = BatchStream(text_train, caption_train, tokenizer, pcfg, skip=skip, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed, resample=True, rank=env.rank, world_size=env.world_size)  # fmt: skip
        return load_batches(stream, num_workers, prefetch_factor=cfg.prefetch_factor,
                            pin_memory=env.device.type == "cuda", stats=counts)  # fmt: skip

    # the same validation batches every evaluation: built once
    val_iter = batches(iter_samples(text_val, resample=True), iter_samples(caption_val, resample=True), tokenizer,
                       pcfg)  # fmt: skip
    val = [next(val_iter) for _ in range(cfg.eval_batches)]

    counts: Counter = Counter()
    # the unigram counts read the first batches in-process (training's own with --num_workers 0; the same data with
    # no workers to start and stop for them otherwise), counting skips apart: the summary reports what training read
    sample_iter = train_batches(0, num_workers=0, counts=ReaderStats())
    for _ in range(16):
        batch = next(sample_iter)
        counts.update(batch.input_ids[batch.attention_mask.bool()].tolist())
    baseline = unigram_loss(iter(val), len(val), counts, tokenizer.vocab_size)
    val_loss = validation_loss(val.__getitem__, len(val), env.device)

    def evaluate(m: MetaLM, step: int) -> dict[str, float]:
        return {**val_loss(m, step), "unigram_loss": baseline}

    if cfg.resume and env.main:
        warn_if_workers_changed(cfg)
    result = train(cfg, model, train_batches, env, evaluate, save_extra=tokenizer.save)
    summary = {"steps": result.step, "stopped_by_signal": result.stopped_by_signal, "nan_steps": result.nan_steps,
               "reader": {"samples": stats.samples, "skipped": dict(stats.skipped)},
               "vision_warmup": vision_warmup}  # fmt: skip
    if result.final_dir is not None and env.main:
        summary.update(result.final_losses(), unigram_loss=baseline)
        for split in ("heldout", "val") if pcfg.vision_encoder else ():  # a text-only model has nothing to caption
            summary[f"{split}_captions"] = caption_split(model.eval(), tokenizer, pcfg, world, env.device, split)
        write_summary(cfg.out, summary)
        report(summary, cfg)
    return summary


@torch.no_grad()
def caption(model: MetaLM, tokenizer: Tokenizer, pcfg: PipelineConfig, image, device, max_new_tokens: int = 24) -> str:
    """Greedy caption of one PIL image: the prompt is the docked image between ``<image>`` and ``</image>``."""
    from metalm.docking import Dock, contiguous_positions

    ids = [tokenizer.image_start_id] + [tokenizer.vec_id] * pcfg.image_tokens + [tokenizer.image_end_id]
    input_ids = torch.tensor([ids], device=device)
    pixels = image_tensor(image, pcfg.image_size, pcfg.image_mean, pcfg.image_std)[None].to(device)
    dock = Dock(pcfg.vision_encoder, {"pixel_values": pixels}, torch.tensor([0], device=device),
                contiguous_positions(torch.tensor([1], device=device), pcfg.image_tokens))  # fmt: skip
    out = model.generate(input_ids, [dock], max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                         pad_token_id=tokenizer.pad_id)  # fmt: skip
    return tokenizer.decode(out[0, len(ids) :].tolist()).strip()


def caption_split(
    model: MetaLM, tokenizer: Tokenizer, pcfg: PipelineConfig, world: Path, device, split: str, n: int = 50
) -> dict:
    """Greedy captions of a split's first ``n`` images, scored against the scene: does the caption name exactly the
    scene's set of shapes, and of colours? (``heldout`` images each show a colour-shape pair never seen in
    training; ``val`` images show only seen pairs.)"""
    from PIL import Image

    from data.world import COLORS, HELDOUT_PAIRS, SHAPES, mentions

    scenes = [json.loads(line) for line in (world / f"scenes_{split}.jsonl").open()][:n]
    rows, shapes_ok, colors_ok, unseen, unseen_ok = [], 0, 0, 0, 0
    for scene in scenes:
        with Image.open(world / scene["file_name"]) as img:
            got = caption(model, tokenizer, pcfg, img.convert("RGB"), device)
        words = got.replace(",", " ").replace(".", " ").split()
        shapes = {w for w in words if w in SHAPES} == {t[1] for t in scene["things"]}
        shapes_ok += shapes
        colors_ok += {w for w in words if w in COLORS} == {t[0] for t in scene["things"]}
        pairs = {(c, s) for c, s, _ in scene["things"]} & set(HELDOUT_PAIRS)
        if pairs:
            unseen += 1
            unseen_ok += all(mentions(got, c, s) for c, s in pairs)
        rows.append({"image": scene["file_name"], "caption": got, "scene": scene["things"], "shapes_named": shapes})
    # show captions that name the right shapes first, then ones that do not
    examples = [r for r in rows if r["shapes_named"]][:3] + [r for r in rows if not r["shapes_named"]][:3]
    return {"n": len(scenes), "shapes_named": shapes_ok / max(len(scenes), 1),
            "colors_named": colors_ok / max(len(scenes), 1), "unseen_pair_named": unseen_ok / max(unseen, 1),
            "examples": examples}  # fmt: skip


def report(summary: dict, cfg: TrainConfig) -> None:
    print(f"\nfinal checkpoint: {summary['final']}  (MetaLM.from_pretrained loads it)")
    print(
        f"training loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} over {summary['steps']} steps; "
        f"validation loss {summary['val_loss']:.3f} vs unigram baseline {summary['unigram_loss']:.3f} nats/token"
    )
    if summary["vision_warmup"]:
        w = summary["vision_warmup"]
        print(
            f"vision warm-up on scene labels: colour {w['color_accuracy']:.0%}, shape {w['shape_accuracy']:.0%} "
            "on held-out scenes (encoder then frozen)"
        )
    skipped = summary["reader"]["skipped"]
    if skipped:
        print(f"skipped samples: {skipped}")
    if "heldout_captions" not in summary:
        print(f"loss curve: {Path(cfg.out) / 'loss.png'}; metrics: {Path(cfg.out) / 'metrics.jsonl'}")
        return
    held, val = summary["heldout_captions"], summary["val_captions"]
    print(
        f"greedy captions of {held['n']} held-out images: the right set of shapes in {held['shapes_named']:.0%}, "
        f"of colours in {held['colors_named']:.0%} (validation images with seen pairs: shapes "
        f"{val['shapes_named']:.0%}, colours {val['colors_named']:.0%}); they name the unseen colour-shape pair "
        f"itself in {held['unseen_pair_named']:.0%}. For example:"
    )
    for row in held["examples"]:
        truth = ", ".join(" ".join(t) for t in row["scene"])
        mark = "right shapes" if row["shapes_named"] else "wrong shapes"
        print(f"  {row['image']}: {row['caption']!r}   (scene: {truth}; {mark})")
    print(f"loss curve: {Path(cfg.out) / 'loss.png'}; metrics: {Path(cfg.out) / 'metrics.jsonl'}")


def main(argv: list[str] | None = None) -> None:
    run(parse_config(argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    main()
