"""The one builder of a tiny MetaLM for the whole test suite, and a deterministic stream of semi-causal batches for
training-loop tests (no files needed)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch

from data.batch import Batch
from metalm import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLM, MetaLMConfig
from metalm.docking import Dock, contiguous_positions, span_dock

VOCAB, SEQ, IMG = 40, 32, 5  # image: 4 patches + class token


def tiny_config(
    vocab: int,
    *,
    encoders: Sequence[str] = ("vision", "text"),
    max_len: int = 64,
    img_size: int = 8,
    patch_size: int = 4,
    enc_dim: int = 16,
    enc_layers: int = 1,
    vision_freeze: str = "none",
    vision_connector: ConnectorConfig | None = None,
    **decoder,
) -> MetaLMConfig:
    """The test suite's small MetaLM: a 32-wide decoder (2 layers, 4 heads, init_std 0.2 unless ``decoder`` says
    otherwise), a timm ViT (mlp connector) and a native text encoder that shares the decoder's tokenizer (linear
    connector), the encoders named in ``encoders`` in that order (the order fixes the parameters' random init)."""
    built = {
        "vision": EncoderConfig(
            "timm",
            dict(
                model_name="vit_tiny_patch16_224",
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=enc_dim,
                depth=enc_layers,
                num_heads=2,
            ),
            freeze=vision_freeze,
            connector=vision_connector or ConnectorConfig("mlp"),
        ),
        "text": EncoderConfig(
            "native_text",
            dict(vocab_size=vocab, dim=enc_dim, n_layers=enc_layers, n_heads=2, max_len=max_len),
            connector=ConnectorConfig("linear"),
        ),
    }
    dec = dict(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=max_len, init_std=0.2) | decoder
    return MetaLMConfig(DecoderConfig(**dec), {name: built[name] for name in encoders})


def tiny_metalm(vocab: int, *, seed: int = 0, training: bool = False, **config) -> MetaLM:
    """``tiny_config(vocab, **config)`` with random weights drawn after ``torch.manual_seed(seed)``, in eval mode
    unless ``training``."""
    torch.manual_seed(seed)
    return MetaLM(tiny_config(vocab, **config)).train(training)


def small_model(seed: int = 0, dropout: float = 0.0) -> MetaLM:
    """The model for ``make_batch``'s stream, in training mode."""
    return tiny_metalm(
        VOCAB,
        seed=seed,
        training=True,
        encoders=("text", "vision"),
        max_len=SEQ,
        init_std=0.02,
        vision_connector=ConnectorConfig("mlp", layers=2),
        dropout=dropout,
    )


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
    image = Dock(
        "vision",
        {"pixel_values": torch.randn(batch_size, 3, 8, 8, generator=g)},
        torch.arange(batch_size),
        contiguous_positions(torch.ones(batch_size, dtype=torch.long), IMG),
    )
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
        docks.append(
            Dock(
                d.encoder,
                {k: v[keep] for k, v in d.inputs.items()},
                d.batch_index[keep] - rows.start,
                d.positions[keep],
            )
        )
    return Batch(batch.input_ids[rows], batch.labels[rows], batch.attention_mask[rows], docks)


def batch_fingerprint(batch) -> str:
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
