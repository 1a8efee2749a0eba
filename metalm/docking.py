"""Docking: encoder vectors replace the decoder's input embeddings at given positions.

A ``Dock`` carries one encoder's inputs for N segments (images, text spans, image + text prefix), which sample
of the batch each segment belongs to, and the decoder positions its output vectors go to. The positions keep
their decoder positional encoding, and the decoder stays causal over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.tokenization import DECODER_TOKENIZER
from metalm.config import eager_checks


@dataclass
class Dock:
    """One encoder's segments: ``inputs`` for the encoder, ``batch_index`` ``(N,)`` and ``positions`` ``(N, L)``
    (decoder positions, one per output vector; -1 pads rows with fewer vectors). ``tokenizer`` names the tokenizer
    that made ``inputs["input_ids"]`` (``DECODER_TOKENIZER``, or an encoder tokenizer's ``describe()``); the model
    refuses ids of another tokenizer than the encoder reads. None: not said (docks built by hand)."""

    encoder: str
    inputs: dict[str, torch.Tensor]
    batch_index: torch.Tensor
    positions: torch.Tensor
    tokenizer: str | None = None

    def to(self, device: torch.device | str) -> Dock:
        return Dock(
            self.encoder,
            {k: v.to(device) for k, v in self.inputs.items()},
            self.batch_index.to(device),
            self.positions.to(device),
            self.tokenizer,
        )


def span_dock(input_ids: torch.Tensor, spans: list[tuple[int, int, int]], encoder: str, pad_id: int = 0) -> Dock:
    """A text dock for spans ``(batch, start, end)`` of ``input_ids`` when encoder and decoder share a tokenizer:
    the encoder reads the span's own tokens and each output vector returns to its token's position."""
    if not spans:
        raise ValueError("span_dock needs at least one (batch, start, end) span")
    width = max(e - s for _, s, e in spans)
    ids = torch.full((len(spans), width), pad_id, dtype=torch.long)
    positions = torch.full((len(spans), width), -1, dtype=torch.long)
    for row, (b, s, e) in enumerate(spans):
        if not 0 <= s < e <= input_ids.shape[1]:
            raise ValueError(f"span ({b}, {s}, {e}) is outside a sequence of length {input_ids.shape[1]}")
        ids[row, : e - s] = input_ids[b, s:e]
        positions[row, : e - s] = torch.arange(s, e)
    return Dock(
        encoder=encoder,
        inputs={"input_ids": ids.to(input_ids.device), "attention_mask": (positions >= 0).long().to(input_ids.device)},
        batch_index=torch.tensor([b for b, _, _ in spans], device=input_ids.device),
        positions=positions.to(input_ids.device),
        tokenizer=DECODER_TOKENIZER,
    )


def own_span_dock(spans: list[tuple[int, int, list[int]]], encoder: str, pad_id: int, tokenizer: str) -> Dock:
    """A text dock for spans ``(batch, start, ids)`` whose ``ids`` come from the encoder's own tokenizer (named by
    ``tokenizer``, its ``describe()``): each span's vectors fill ``len(ids)`` consecutive placeholder positions from
    ``start``, one per vector, as an image's do."""
    if not spans:
        raise ValueError("own_span_dock needs at least one (batch, start, ids) span")
    width = max(len(ids) for _, _, ids in spans)
    ids = torch.full((len(spans), width), pad_id, dtype=torch.long)
    positions = torch.full((len(spans), width), -1, dtype=torch.long)
    for row, (_, start, own) in enumerate(spans):
        if not own:
            raise ValueError(f"span {row} at position {start} has no encoder ids")
        ids[row, : len(own)] = torch.tensor(own, dtype=torch.long)
        positions[row, : len(own)] = torch.arange(start, start + len(own))
    return Dock(
        encoder=encoder,
        inputs={"input_ids": ids, "attention_mask": (positions >= 0).long()},
        batch_index=torch.tensor([b for b, _, _ in spans]),
        positions=positions,
        tokenizer=tokenizer,
    )


def contiguous_positions(starts: torch.Tensor, length: int) -> torch.Tensor:
    """Positions ``(N, length)`` for segments that occupy ``length`` consecutive slots from each start."""
    return starts[:, None] + torch.arange(length, device=starts.device)[None]


def docked_mask(docks: list[Dock], batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Boolean ``(B, T)``: True at every position an encoder vector is docked into."""
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    for dock in docks:
        valid = dock.positions >= 0
        rows = dock.batch_index[:, None].expand_as(dock.positions)[valid]
        mask[rows, dock.positions[valid]] = True
    return mask


def scatter_docked(embeds: torch.Tensor, dock: Dock, vectors: torch.Tensor, vector_mask: torch.Tensor) -> torch.Tensor:
    """Write ``vectors`` ``(N, L, d)`` (the real ones, per ``vector_mask``) into ``embeds`` at the dock's positions."""
    b, t, _ = embeds.shape
    slots = dock.positions >= 0
    n_vec, n_slot = vector_mask.sum(1), slots.sum(1)
    if dock.positions.shape[0] != vectors.shape[0] or dock.batch_index.shape[0] != vectors.shape[0]:
        raise ValueError(
            f"encoder {dock.encoder!r} returned {vectors.shape[0]} segments but the dock has "
            f"{dock.positions.shape[0]} position rows and {dock.batch_index.shape[0]} batch indices"
        )
    if eager_checks():
        bad = (n_vec != n_slot).nonzero()
        if len(bad):
            i = int(bad[0, 0])
            raise ValueError(
                f"encoder {dock.encoder!r} gave {int(n_vec[i])} vectors for segment {i} but the dock has "
                f"{int(n_slot[i])} placeholder positions for it; expected one position per vector"
            )
        if int(dock.batch_index.min()) < 0 or int(dock.batch_index.max()) >= b:
            raise ValueError(f"dock {dock.encoder!r}: batch_index outside 0 .. {b - 1}")
        pos = dock.positions[slots]
        if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= t):
            raise ValueError(f"dock {dock.encoder!r}: positions outside 0 .. {t - 1}")
    # vectors are packed left in each row (mask True first), slots likewise, so the k-th real vector of a row
    # goes to the k-th slot of that row
    vec_order = torch.argsort((~vector_mask).to(torch.int8), dim=1, stable=True)
    slot_order = torch.argsort((~slots).to(torch.int8), dim=1, stable=True)
    src = torch.gather(vectors, 1, vec_order[..., None].expand_as(vectors))
    dst = torch.gather(dock.positions, 1, slot_order)
    keep = torch.arange(dst.shape[1], device=dst.device)[None] < n_slot[:, None]
    flat = dock.batch_index[:, None].expand_as(dst)[keep] * t + dst[keep]
    out = embeds.reshape(b * t, -1).index_copy(0, flat, src[keep].to(embeds.dtype))
    return out.view(b, t, -1)
