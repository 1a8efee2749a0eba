"""A joint vision-language encoder: image patches and a text prefix attend to each other in one bidirectional stack."""

from __future__ import annotations

import torch
from torch import nn

from .base import IMAGE_TEXT, EncoderOutput
from .text import StackEncoder, key_padding_mask, transformer_stack

_IMAGE, _TEXT = 0, 1


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class JointVisionLanguageEncoder(StackEncoder):
    """[CLS, patches] ++ text tokens, each with learned positions and a modality-type embedding, through one
    pre-norm ``nn.TransformerEncoder``; text padding is a key padding mask, so it never changes real outputs.

    It reads the decoder's own token ids (the paper's vision-language MetaLM: the image and a caption prefix go
    through it together) and offers what data code needs of an image encoder: ``image_size``, ``num_tokens``
    (image vectors, first in its output) and ``normalization()``."""

    reads = IMAGE_TEXT

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        max_text_len: int,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = {
            "vocab_size": vocab_size,
            "dim": dim,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "image_size": list(_pair(image_size)),
            "patch_size": list(_pair(patch_size)),
            "max_text_len": max_text_len,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.image_size = _pair(image_size)
        patch = _pair(patch_size)
        if self.image_size[0] % patch[0] or self.image_size[1] % patch[1]:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {patch}")
        self.num_image_tokens = 1 + (self.image_size[0] // patch[0]) * (self.image_size[1] // patch[1])
        self.num_tokens = self.num_image_tokens  # the image encoders' name for it (encoders/vision.py)
        self.max_text_len = max_text_len
        self.output_dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.empty(dim))
        self.image_position = nn.Parameter(torch.empty(self.num_image_tokens, dim))
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.text_position = nn.Parameter(torch.empty(max_text_len, dim))
        self.modality_embedding = nn.Embedding(2, dim)
        for weight in (
            self.cls_token,
            self.image_position,
            self.token_embedding.weight,
            self.text_position,
            self.modality_embedding.weight,
        ):
            nn.init.normal_(weight, std=0.02)
        self.encoder = transformer_stack(dim, n_layers, n_heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) its pixels are normalised with: trained from scratch here, so [-1, 1] scaling."""
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    @staticmethod
    def image_inputs(pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs that read images alone: an empty text prefix (one masked padding id per image)."""
        empty = torch.zeros(pixel_values.shape[0], 1, dtype=torch.long, device=pixel_values.device)
        return {"pixel_values": pixel_values, "input_ids": empty, "attention_mask": empty}

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """``pixel_values`` (N, 3, H, W), ``input_ids`` and right-padded ``attention_mask`` (N, T) ->
        (N, L_img + T, dim); the mask is all True over the image part and ``attention_mask`` over the text."""
        pixels, input_ids = inputs["pixel_values"], inputs["input_ids"]
        n, length = input_ids.shape
        if length > self.max_text_len:
            raise ValueError(f"text of {length} tokens exceeds max_text_len={self.max_text_len}")
        text_mask = inputs.get("attention_mask")
        text_mask = torch.ones_like(input_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        image = torch.cat([self.cls_token.expand(n, 1, -1), patches], dim=1)
        image = image + self.image_position + self.modality_embedding.weight[_IMAGE]
        text = self.token_embedding(input_ids) + self.text_position[:length] + self.modality_embedding.weight[_TEXT]
        image_mask = torch.ones(n, image.shape[1], dtype=torch.bool, device=text_mask.device)
        mask = torch.cat([image_mask, text_mask], dim=1)
        x = self.encoder(torch.cat([image, text], dim=1), src_key_padding_mask=key_padding_mask(mask))
        return EncoderOutput(self.norm(x), mask)
