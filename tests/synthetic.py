"""A small MetaLM and a deterministic stream of semi-causal batches, for training-loop tests (no files needed)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from data.batch import Batch
from metalm import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLM, MetaLMConfig
from metalm.docking import Dock, contiguous_positions, span_dock

VOCAB, SEQ, IMG = 40, 32, 5  # image: 4 patches + class token


def small_model(seed: int = 0, dropout: float = 0.0) -> MetaLM:
    torch.manual_seed(seed)
    cfg = MetaLMConfig(
        decoder=DecoderConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=SEQ, dropout=dropout),
        encoders={
            "text": EncoderConfig(
                "native_text",
                dict(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, max_len=SEQ),
                connector=ConnectorConfig("linear"),
            ),  # fmt: skip
            "vision": EncoderConfig(
                "timm",
                dict(model_name="vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2),
                connector=ConnectorConfig("mlp", layers=2),
            ),
        },
    )
    return MetaLM(cfg)


def make_batch(index: int, batch_size: int, seed: int = 0) -> Batch:
    """Batch number ``index`` of the stream: random tokens, one image per row at position 1, one text span."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    ids = torch.randint(1, VOCAB - 1, (batch_size, SEQ), generator=g)  # the last id is left for poison tests
    mask = torch.ones_like(ids)
    pad = int(torch.randint(0, 4, (1,), generator=g))
    if pad:
        mask[-1, -pad:] = 0
        ids[-1, -pad:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    start = int(torch.randint(IMG + 2, SEQ - 12, (1,), generator=g))
    spans = [(b, start, start + 4 + b % 3) for b in range(batch_size)]
    image = Dock("vision", {"pixel_values": torch.randn(batch_size, 3, 8, 8, generator=g)}, torch.arange(batch_size),
                 contiguous_positions(torch.ones(batch_size, dtype=torch.long), IMG))  # fmt: skip
    return Batch(ids, labels, mask, [image, span_dock(ids, spans, "text")])


def stream(skip: int, batch_size: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """Micro-batches for one rank: global micro-batch ``i`` is split into ``world_size`` row slices."""
    i = skip
    while True:
        full = make_batch(i, batch_size * world_size, seed)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        yield slice_batch(full, rows)
        i += 1


def slice_batch(batch: Batch, rows: slice) -> Batch:
    docks = []
    for d in batch.docks:
        keep = (d.batch_index >= rows.start) & (d.batch_index < rows.stop)
        docks.append(Dock(d.encoder, {k: v[keep] for k, v in d.inputs.items()}, d.batch_index[keep] - rows.start,
                          d.positions[keep]))  # fmt: skip
    return Batch(batch.input_ids[rows], batch.labels[rows], batch.attention_mask[rows], docks)
