"""Encoders with their own tokenizer dock everywhere: pretraining spans and caption prefixes re-tokenized by the
encoder (one decoder position per encoder vector), prompts, finetuning, evaluation and the demo; and the
shared-tokenizer layout keeps the very batches it built before."""

from __future__ import annotations

import hashlib
import random

import pytest
from PIL import Image

from data.pipeline import PipelineConfig, batches
from data.tokenizer import Tokenizer

WORDS = "red green blue circle square triangle left right middle the a is on and of there two three".split()


def documents(seed: int):
    """Endless text samples of 1-3 paragraphs of world words."""
    rng = random.Random(seed)
    while True:
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(rng.randint(1, 3))]
        yield {"kind": "text", "text": "\n\n".join(paragraphs)}


def captions(seed: int):
    """Endless image-caption samples: a one-colour 8x8 image and a few world words."""
    rng = random.Random(seed)
    while True:
        colour = rng.choice([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
        yield {"kind": "caption", "image": Image.new("RGB", (8, 8), colour), "caption": words}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    docs = documents(0)
    return Tokenizer.train([next(docs)["text"] for _ in range(200)], vocab_size=300)


def cfg(**kw) -> PipelineConfig:
    base = dict(seq_len=48, batch_size=4, text_weight=0.5, image_size=(8, 8), image_tokens=5, seed=0)
    return PipelineConfig(**{**base, "span_ratio": 0.25, "span_min": 2, "span_max": 5, **kw})


def fingerprint(batch) -> str:
    """A hash of everything a batch holds: ids, labels, mask, and each dock's encoder, tokenizer, rows, positions
    and inputs."""
    h = hashlib.sha256()
    for t in (batch.input_ids, batch.labels, batch.attention_mask):
        h.update(t.numpy().tobytes())
    for d in batch.docks:
        h.update(d.encoder.encode())
        h.update(str(d.tokenizer).encode())
        h.update(d.batch_index.numpy().tobytes())
        h.update(d.positions.numpy().tobytes())
        for k in sorted(d.inputs):
            h.update(k.encode())
            h.update(d.inputs[k].numpy().tobytes())
    return h.hexdigest()[:16]


def test_shared_tokenizer_batches_are_the_ones_built_before_own_tokenizer_spans(tokenizer):
    """Pinned batches of the shared-tokenizer layout (the tiny preset's): the same ids, labels, docks and RNG draws
    as before encoders with their own tokenizer got spans."""
    it = batches(documents(1), captions(2), tokenizer, cfg())
    assert [fingerprint(next(it)) for _ in range(3)] == ["b4db3780ecf7817c", "6f8c5087eaa753fb", "a484b731f8ec2dc0"]
    it = batches(documents(3), None, tokenizer, cfg(), skip=2)
    assert [fingerprint(next(it)) for _ in range(2)] == ["c6dd8071de246761", "507a95f8517bf4ea"]
