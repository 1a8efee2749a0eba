"""The one protocol every bidirectional encoder follows, and the freeze policy that applies to all of them.

An encoder maps a batch of N segments (images, text spans, image + text prefix) to hidden states
``(N, L, output_dim)`` and an output mask ``(N, L)`` saying which of the L vectors are real. The interface
decoder docks those vectors at placeholder positions; it never looks inside the encoder. Each encoder class
declares what it reads (``Encoder.reads``), so data code picks encoders by that, not by their class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """Hidden states ``(N, L, d)`` and a boolean mask ``(N, L)``: True where a vector is real, not padding."""

    hidden_states: torch.Tensor
    mask: torch.Tensor


PIXELS = "pixels"  # ``pixel_values`` (N, 3, H, W) of images
DECODER_IDS = "decoder_ids"  # ``input_ids`` of the decoder's own tokenizer, so each vector docks at its token
OWN_IDS = "own_ids"  # ``input_ids`` of the encoder's own tokenizer (a pretrained BERT, MiniLM, ...)
IMAGE_TEXT = "image_text"  # ``pixel_values`` and ``input_ids`` together: an image and a text prefix
READS = (PIXELS, DECODER_IDS, OWN_IDS, IMAGE_TEXT)


class Encoder(nn.Module):
    """Base class: subclasses set ``reads`` (one of ``READS``) and ``output_dim`` and implement ``forward`` and
    ``blocks``."""

    reads: str
    output_dim: int

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The transformer layers in input-to-output order; ``all_but_last_N`` unfreezes the last N."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Modules after the last block (a final norm): trainable whenever any block is."""
        return []

    def extra_state(self) -> dict:
        """What ``build_encoder`` needs to rebuild this encoder without its original files (JSON-able)."""
        return {}


FREEZE_POLICY = re.compile(r"^(none|all|all_but_last_(\d+))$")


def apply_freeze(encoder: Encoder, policy: str) -> None:
    """Set ``requires_grad`` by policy: ``none`` trains all, ``all`` freezes all, ``all_but_last_N`` trains the
    last N blocks and the modules after them (the paper trains the text encoder's last two layers)."""
    match = FREEZE_POLICY.match(policy)
    if match is None:
        raise ValueError(f"freeze policy {policy!r}: expected 'none', 'all' or 'all_but_last_N' (e.g. all_but_last_2)")
    if policy == "none":
        encoder.requires_grad_(True)
        return
    n = 0 if policy == "all" else int(match.group(2))
    blocks = encoder.blocks() if n else []
    if n > len(blocks):  # checked before touching requires_grad, so a bad policy changes nothing
        raise ValueError(f"freeze policy {policy!r}: the encoder has only {len(blocks)} blocks")
    encoder.requires_grad_(False)
    if n == 0:
        return
    for block in blocks[len(blocks) - n :]:
        block.requires_grad_(True)
    for module in encoder.head_modules():
        module.requires_grad_(True)
