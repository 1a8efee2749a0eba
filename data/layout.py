"""The docking layout: how an image, an encoder-read text span and an image + text prefix become decoder ids,
positions and ``Dock``s. Pretraining batches (``data.pipeline``), prompts for scoring and finetuning
(``data.prompts``) and the demo all lay out their inputs here, so a model meets one layout everywhere.

- An image is ``<image> <vec>*N </image>``: its N vectors dock at the ``<vec>`` positions, the first one
  ``IMAGE_OFFSET`` after ``<image>``.
- An encoder-read text span keeps its own decoder ids (the text encoder shares the decoder's tokenizer); its
  vectors dock back at those ids' positions.
- An image + text prefix is an image followed by text whose first tokens go through the text encoder
  (pretraining's image-caption items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from data.tokenizer import Tokenizer
from metalm.docking import Dock, contiguous_positions, span_dock

IMAGE_OFFSET = 1  # the first <vec> follows <image>


def encoder_sized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` in RGB at the encoder's input ``size`` (height, width), resized bicubically when it differs."""
    image = image.convert("RGB")
    return image if image.size == (size[1], size[0]) else image.resize((size[1], size[0]), Image.BICUBIC)


def image_tensor(image: Image.Image, size: tuple[int, int], mean, std) -> torch.Tensor:
    """RGB image -> normalised ``(3, H, W)`` float tensor at the encoder's input size."""
    image = encoder_sized(image, size)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size[0], size[1], 3)
    x = x.permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def image_ids(tokenizer: Tokenizer, vectors: int) -> list[int]:
    """The placeholder ids of one image: ``<image> <vec>*vectors </image>``."""
    return [tokenizer.image_start_id] + [tokenizer.vec_id] * vectors + [tokenizer.image_end_id]


def image_text_ids(tokenizer: Tokenizer, vectors: int, text: list[int]) -> tuple[list[int], int]:
    """An image followed by the ids ``text`` and ``</s>``, and where ``text`` starts (its prefix is what the text
    encoder may read)."""
    ids = image_ids(tokenizer, vectors)
    return ids + text + [tokenizer.eos_id], len(ids)


def image_dock(
    encoder: str, pixels: Sequence[torch.Tensor], rows: Sequence[int], starts: Sequence[int], vectors: int
) -> Dock:
    """The dock of images ``pixels`` (each ``(3, H, W)``) in batch rows ``rows`` whose first ``<vec>`` is at
    ``starts``; each image fills ``vectors`` consecutive positions."""
    positions = contiguous_positions(torch.tensor(list(starts)), vectors)
    return Dock(encoder, {"pixel_values": torch.stack(list(pixels))}, torch.tensor(list(rows)), positions)


@dataclass
class DockLayout:
    """What docks where in one batch, gathered row by row: images (row, first ``<vec>``, pixels) for the vision
    encoder and ``[start, end)`` spans for the text encoder; ``docks`` builds them, images first."""

    vision: str | None
    text: str | None
    image_tokens: int
    pixels: list[torch.Tensor] = field(default_factory=list)
    image_rows: list[int] = field(default_factory=list)
    image_starts: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)

    def add_image(self, row: int, start: int, pixels: torch.Tensor) -> None:
        """An image whose first ``<vec>`` is at ``start`` of batch row ``row``."""
        self.pixels.append(pixels)
        self.image_rows.append(row)
        self.image_starts.append(start)

    def add_span(self, row: int, start: int, end: int) -> None:
        """Ids ``[start, end)`` of batch row ``row``, read by the text encoder."""
        self.spans.append((row, start, end))

    def docks(self, input_ids: torch.Tensor, pad_id: int) -> list[Dock]:
        """The image dock and the span dock (each only when it has a segment) over the batch ``input_ids``."""
        docks = []
        if self.pixels:
            docks.append(image_dock(self.vision, self.pixels, self.image_rows, self.image_starts, self.image_tokens))
        if self.spans:
            docks.append(span_dock(input_ids, self.spans, self.text, pad_id))
        return docks
