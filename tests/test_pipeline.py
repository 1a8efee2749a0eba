"""Semi-causal batches from samples: layout, spans inside documents, determinism, and the no-leak invariant."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from data.pipeline import PipelineConfig, batches, document_tokens
from data.tokenizer import Tokenizer
from metalm import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLM, MetaLMConfig
from metalm.loss import IGNORE_INDEX

WORDS = "red green blue circle square triangle left right middle the a is on and of there two three".split()


def documents(seed: int):
    rng = random.Random(seed)
    while True:
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(rng.randint(1, 3))]
        yield {"kind": "text", "text": "\n\n".join(paragraphs)}


def captions(seed: int):
    rng = random.Random(seed)
    while True:
        colour = rng.choice([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
        yield {"kind": "caption", "image": Image.new("RGB", (8, 8), colour),
               "caption": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    docs = documents(0)
    return Tokenizer.train([next(docs)["text"] for _ in range(200)], vocab_size=300)


def cfg(**kw) -> PipelineConfig:
    base = dict(seq_len=48, batch_size=4, text_weight=0.5, span_ratio=0.25, span_min=2, span_max=5,
                image_size=(8, 8), image_tokens=5, seed=0)  # fmt: skip
    base.update(kw)
    return PipelineConfig(**base)


def test_batch_layout(tokenizer):
    c = cfg()
    batch = next(batches(documents(1), captions(2), tokenizer, c))
    assert batch.input_ids.shape == (4, 48)
    assert batch.attention_mask[:2].all()  # text rows are packed full
    text_dock = next(d for d in batch.docks if d.encoder == "text")
    vision = next(d for d in batch.docks if d.encoder == "vision")
    assert set(vision.batch_index.tolist()) == {2, 3}  # image-text rows come after the text rows
    for row, start in zip(vision.batch_index.tolist(), vision.positions[:, 0].tolist(), strict=True):
        assert batch.input_ids[row, start - 1] == tokenizer.image_start_id
        assert (batch.input_ids[row, start : start + 5] == tokenizer.vec_id).all()
        assert batch.input_ids[row, start + 5] == tokenizer.image_end_id
    assert vision.inputs["pixel_values"].shape[1:] == (3, 8, 8)
    # text spans carry exactly the tokens at their positions
    for i in range(len(text_dock.batch_index)):
        valid = text_dock.positions[i] >= 0
        row = int(text_dock.batch_index[i])
        assert torch.equal(text_dock.inputs["input_ids"][i][valid], batch.input_ids[row, text_dock.positions[i][valid]])
    # padding is never a target
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()


def test_text_spans_never_cross_a_document_end(tokenizer):
    c = cfg(text_weight=1.0, span_ratio=0.4)
    for batch in _take(batches(documents(3), None, tokenizer, c), 10):
        dock = batch.docks[0]
        for i in range(len(dock.batch_index)):
            pos = dock.positions[i][dock.positions[i] >= 0]
            tokens = batch.input_ids[int(dock.batch_index[i]), pos]
            assert (tokens[:-1] != tokenizer.eos_id).all()  # an end of document may close a span, never sit inside


def test_span_ratio_is_respected(tokenizer):
    c = cfg(text_weight=1.0, span_ratio=0.25, seq_len=128, span_min=4, span_max=8)
    covered = total = 0
    for batch in _take(batches(documents(4), None, tokenizer, c), 10):
        covered += int((batch.docks[0].positions >= 0).sum())
        total += batch.input_ids.numel()
    assert 0.15 < covered / total <= 0.25


def test_document_tokens_mark_paragraphs_and_ends(tokenizer):
    ids = document_tokens("red circle\n\nblue square", tokenizer)
    assert ids.count(tokenizer.par_id) == 1 and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids[: ids.index(tokenizer.par_id)]) == "red circle"


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_skip_replays_the_same_stream(tokenizer):
    c = cfg()
    full = _take(batches(documents(5), captions(6), tokenizer, c), 5)
    resumed = _take(batches(documents(5), captions(6), tokenizer, c, skip=3), 2)
    for a, b in zip(full[3:], resumed, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        for da, db in zip(a.docks, b.docks, strict=True):
            assert torch.equal(da.positions, db.positions)


def test_no_leak_on_real_collated_batches(tokenizer):
    """For every loss-counted target, replacing it in the input (and so in any encoder input that holds it)
    leaves the logits that predict it unchanged."""
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    model = MetaLM(MetaLMConfig(
        decoder=DecoderConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=48, init_std=0.2),
        encoders={
            "text": EncoderConfig("native_text", dict(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, max_len=48),
                                  connector=ConnectorConfig("linear")),
            "vision": EncoderConfig("timm", dict(model_name="vit_tiny_patch16_224", img_size=8, patch_size=4,
                                                 embed_dim=16, depth=1, num_heads=2), connector=ConnectorConfig("mlp")),
        })).eval()  # fmt: skip
    c = cfg(batch_size=2)
    batch = next(batches(documents(7), captions(8), tokenizer, c))
    with torch.no_grad():
        base = model(batch.input_ids, batch.docks, batch.attention_mask, batch.labels, return_logits=True)
        counted = (base.labels[:, 1:] != IGNORE_INDEX).nonzero() + torch.tensor([0, 1])
        assert len(counted) > 40
        for row, t in counted.tolist():
            ids = batch.input_ids.clone()
            ids[row, t] = (ids[row, t] + 1) % vocab
            docks = [_redock(d, ids) for d in batch.docks]
            logits = model(ids, docks, batch.attention_mask).logits
            torch.testing.assert_close(logits[row, t - 1], base.logits[row, t - 1], atol=1e-5, rtol=0)


def _redock(dock, ids):
    """The same dock with its text encoder inputs re-read from ``ids`` (as the pipeline would build them)."""
    if "input_ids" not in dock.inputs:
        return dock
    new = dict(dock.inputs)
    rows = dock.batch_index[:, None].expand_as(dock.positions)
    valid = dock.positions >= 0
    enc = new["input_ids"].clone()
    enc[valid] = ids[rows[valid], dock.positions[valid]]
    new["input_ids"] = enc
    return type(dock)(dock.encoder, new, dock.batch_index, dock.positions)
