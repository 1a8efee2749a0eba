"""What a pretraining run prepares before it trains: the bundled world, a tokenizer, shards, the batch layout for a
model, and the world's scene labels for the vision warm-up. Plain arguments in, so benchmarks and tests reuse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from data.layout import first_encoder, image_reader
from data.pipeline import PipelineConfig, image_tensor
from data.reader import expand_urls
from data.shards import write_coco_captions, write_text
from data.tokenizer import Tokenizer
from data.world import COLORS, SHAPES, SLOTS, current_world, generate_world
from encoders.base import DECODER_IDS, IMAGE_TEXT, OWN_IDS
from metalm import MetaLM
from metalm.io import read_json, read_jsonl


def prepare_world(world: str | Path, seed: int) -> Path:
    """The bundled world at ``world``: used as it is when present (whatever its size; brought up to the current
    world version with its own parameters), generated from ``seed`` otherwise."""
    world = Path(world)
    if (world / "meta.json").is_file():
        return current_world(world)
    return Path(generate_world(world, seed=seed))


def prepare_tokenizer(world: Path, tokenizer: str = "", vocab_size: int = 2048) -> Tokenizer:
    """The ``tokenizer`` directory, or (empty) a byte-level BPE trained once on the world's training corpus."""
    if tokenizer:
        return Tokenizer.load(tokenizer)
    cache = world / f"tokenizer-{vocab_size}"
    if not (cache / "tokenizer.json").is_file():
        docs = [row["text"] for row in read_jsonl(world / "text" / "corpus_train.jsonl", "the world's text corpus")]
        annotations = read_json(world / "captions_train.json", "the world's COCO captions")["annotations"]
        captions = [a["caption"] for a in annotations]
        Tokenizer.train(docs + captions, vocab_size=vocab_size).save(cache)
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


def pipeline_config(model: MetaLM, **data: Any) -> PipelineConfig:
    """Batch layout for this model: ``data`` sets the data fields of ``PipelineConfig`` (``seq_len``, ``batch_size``,
    span and prefix shares, ``seed``). Encoders are picked by what they read (``Encoder.reads``), never by name:
    image size, normalisation and token count come from the one that reads images, a vision encoder or a joint
    vision-language one (which then also reads the caption prefixes); text spans go to the first text encoder that
    reads the decoder's ids or its own tokenizer's (with its own tokenizer, spans are re-tokenized by it)."""
    name = image_reader(model)
    images = model.encoders[name] if name is not None else None
    joint = images is not None and images.reads == IMAGE_TEXT
    text_name = first_encoder(model, (DECODER_IDS, OWN_IDS))
    text_tokenizer, text_max_len = None, 0
    if text_name is not None and model.encoders[text_name].reads == OWN_IDS:
        text = model.encoders[text_name]
        if text.tokenizer is None:
            raise ValueError(
                f"text encoder {text_name!r} reads its own tokenizer's ids but has no tokenizer attached: give it "
                "one (hf_text's tokenizer=DIR holding tokenizer.json) so pretraining can lay out its spans"
            )
        text_tokenizer, text_max_len = text.tokenizer, text.max_len or 0
    mean, std = images.normalization() if images is not None else ((0.5,) * 3, (0.5,) * 3)
    return PipelineConfig(
        **data,
        image_size=tuple(images.image_size) if images is not None else (32, 32),
        image_mean=tuple(mean),
        image_std=tuple(std),
        image_tokens=images.num_tokens if images is not None else 0,
        text_encoder=text_name,
        vision_encoder=None if joint else name,
        joint_encoder=name if joint else None,
        text_tokenizer=text_tokenizer,
        text_max_len=text_max_len,
    )


def scene_labels(world: Path, pcfg: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The world's training images as pixels, with one label per slot for its colour and one for its shape
    (``"none"`` for an empty slot): ``(pixels, labels, classes per label)``, colour labels first."""
    scenes = read_jsonl(world / "scenes_train.jsonl", "the world's scenes")
    colors, shapes = ["none", *COLORS], ["none", *SHAPES]
    pixels = torch.stack(
        [
            image_tensor(Image.open(world / s["file_name"]), pcfg.image_size, pcfg.image_mean, pcfg.image_std)
            for s in scenes
        ]
    )
    labels = torch.zeros(len(scenes), 2 * len(SLOTS), dtype=torch.long)
    for i, scene in enumerate(scenes):
        for color, shape, slot in scene["things"]:
            labels[i, SLOTS.index(slot)] = colors.index(color)
            labels[i, len(SLOTS) + SLOTS.index(slot)] = shapes.index(shape)
    return pixels, labels, [len(colors)] * len(SLOTS) + [len(shapes)] * len(SLOTS)
