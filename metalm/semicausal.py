"""The semi-causal objective: which spans go through an encoder, and which targets the loss may count.

A docked position holds a vector that has seen its whole span, so a prediction made from inside a span must not
target a token of that span. With labels aligned to inputs (``labels[t]`` is predicted from position ``t-1``),
the rule is simply: **no docked position is ever a target**. The token right after a span is a target, predicted
from the span's last position; every other token is trained causally.
"""

from __future__ import annotations

import random

import torch

from metalm.loss import IGNORE_INDEX


def semicausal_labels(
    labels: torch.Tensor, docked: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Labels with docked positions (and padding) set to ``IGNORE_INDEX``; shape ``(B, T)`` like the inputs."""
    if docked.shape != labels.shape:
        raise ValueError(f"docked mask has shape {tuple(docked.shape)}; expected {tuple(labels.shape)} like labels")
    labels = labels.masked_fill(docked, IGNORE_INDEX)
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return labels


def scaled_span_lengths(seq_len: int, min_len: int = 64, max_len: int = 128, ref_len: int = 2048) -> tuple[int, int]:
    """The paper's 64-128 span lengths are for 2048-token sequences; shorter sequences get proportionally shorter
    spans (at least 2 tokens, so a span is more than one position)."""
    scale = min(1.0, seq_len / ref_len)
    lo = max(2, round(min_len * scale))
    return lo, max(lo, round(max_len * scale))


def sample_spans(
    doc_bounds: list[tuple[int, int]],
    rng: random.Random,
    ratio: float = 0.25,
    min_len: int = 2,
    max_len: int = 8,
    max_tries: int = 64,
) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` spans covering about ``ratio`` of the tokens, each inside one document.

    ``doc_bounds`` are ``[start, end)`` ranges of documents in the sequence. Spans keep a gap of at least one
    causal token between them, so the token after a span is always an ordinary trained target.
    """
    total = sum(e - s for s, e in doc_bounds)
    budget = int(ratio * total)
    taken: list[tuple[int, int]] = []
    covered = 0
    for _ in range(max_tries):
        if covered >= budget:
            break
        length = min(rng.randint(min_len, max_len), budget - covered)
        if length < min_len:
            break
        docs = [(s, e) for s, e in doc_bounds if e - s >= length + 1]
        if not docs:
            break
        s, e = rng.choice(docs)
        start = rng.randint(s, e - length - 1)  # leave the document's last token causal
        end = start + length
        if any(start <= te and ts <= end for ts, te in taken):  # overlapping or touching
            continue
        taken.append((start, end))
        covered += length
    return sorted(taken)
