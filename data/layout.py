"""The docking layout: how an image, an encoder-read text span and an image + text prefix become decoder ids,
positions and ``Dock``s. Pretraining batches (``data.pipeline``), prompts for scoring and finetuning
(``data.prompts``) and the demo all lay out their inputs here, so a model meets one layout everywhere.

- An image is ``<image> <vec>*N </image>``: its N vectors dock at the ``<vec>`` positions, the first one
  ``IMAGE_OFFSET`` after ``<image>``.
- An encoder-read text span keeps its own decoder ids (the text encoder shares the decoder's tokenizer); its
  vectors dock back at those ids' positions.
- An image + text prefix is an image followed by text whose first tokens go through the text encoder
  (pretraining's image-caption items).
- With a joint vision-language encoder (``IMAGE_TEXT``) the image and its text prefix go through that one
  encoder instead: one segment whose image vectors dock at the ``<vec>`` positions and whose text vectors dock
  back at the prefix's positions (it shares the decoder's tokenizer). An image alone is such a segment with an
  empty prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from data.tokenizer import Tokenizer
from encoders.base import IMAGE_TEXT, PIXELS
from encoders.tokenization import DECODER_TOKENIZER
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


def encoder_reading(model, reads: str) -> str | None:
    """The name of ``model``'s first encoder that reads ``reads`` (``encoders.base.READS``), or None."""
    return next((name for name, enc in model.encoders.items() if enc.reads == reads), None)


def image_reader(model) -> str | None:
    """The encoder that reads ``model``'s images: its vision encoder (``PIXELS``) or its joint vision-language one
    (``IMAGE_TEXT``); None without either. A model with both is refused: images dock through one of them."""
    vision, joint = encoder_reading(model, PIXELS), encoder_reading(model, IMAGE_TEXT)
    if vision is not None and joint is not None:
        raise ValueError(
            f"the model has a vision encoder {vision!r} and a joint vision-language encoder {joint!r}: images dock "
            "through one of them, so keep one"
        )
    return vision or joint


def joint_dock(
    encoder: str,
    input_ids: torch.Tensor,
    segments: Sequence[tuple[int, int, torch.Tensor, int, int]],
    vectors: int,
    pad_id: int,
) -> Dock:
    """The dock of a joint encoder's segments ``(row, first <vec>, pixels, prefix start, prefix end)``: it reads
    each image with the decoder ids ``input_ids[row, start:end]`` (right-padded; at least one column, so an empty
    prefix is one masked pad), and its positions are the ``vectors`` image slots then the prefix's slots, -1
    padded, in the order the encoder returns its real vectors."""
    width = max(1, max(end - start for *_, start, end in segments))
    ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
    text = torch.full((len(segments), width), -1, dtype=torch.long)
    for i, (row, _, _, start, end) in enumerate(segments):
        if not 0 <= start <= end <= input_ids.shape[1]:
            raise ValueError(f"prefix ({row}, {start}, {end}) is outside a sequence of length {input_ids.shape[1]}")
        ids[i, : end - start] = input_ids[row, start:end]
        text[i, : end - start] = torch.arange(start, end)
    image = contiguous_positions(torch.tensor([seg[1] for seg in segments]), vectors)
    inputs = {
        "pixel_values": torch.stack([seg[2] for seg in segments]),
        "input_ids": ids,
        "attention_mask": (text >= 0).long(),
    }
    rows = torch.tensor([seg[0] for seg in segments])
    return Dock(encoder, inputs, rows, torch.cat([image, text], dim=1), tokenizer=DECODER_TOKENIZER)


@dataclass
class DockLayout:
    """What docks where in one batch, gathered row by row: images (row, first ``<vec>``, pixels) for the vision
    encoder, ``[start, end)`` spans for the text encoder, and image + prefix segments for the ``joint``
    vision-language encoder; ``docks`` builds them, images first."""

    vision: str | None
    text: str | None
    image_tokens: int
    pixels: list[torch.Tensor] = field(default_factory=list)
    image_rows: list[int] = field(default_factory=list)
    image_starts: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    joint: str | None = None  # the joint encoder (IMAGE_TEXT): every image goes through it, with its prefix
    joints: list[tuple[int, int, torch.Tensor, int, int]] = field(default_factory=list)

    def add_image(self, row: int, start: int, pixels: torch.Tensor) -> None:
        """An image whose first ``<vec>`` is at ``start`` of batch row ``row`` (through a joint encoder: with an
        empty prefix)."""
        if self.joint is not None:
            after = start + self.image_tokens + 1  # past </image>
            self.add_joint(row, start, pixels, after, after)
            return
        self.pixels.append(pixels)
        self.image_rows.append(row)
        self.image_starts.append(start)

    def add_span(self, row: int, start: int, end: int) -> None:
        """Ids ``[start, end)`` of batch row ``row``, read by the text encoder."""
        self.spans.append((row, start, end))

    def add_joint(self, row: int, image_start: int, pixels: torch.Tensor, prefix_start: int, prefix_end: int) -> None:
        """An image whose first ``<vec>`` is at ``image_start`` of row ``row``, read by the joint encoder together
        with the decoder ids ``[prefix_start, prefix_end)`` (empty: the image alone)."""
        if self.joint is None:
            raise ValueError("this layout has no joint vision-language encoder to read an image with its prefix")
        self.joints.append((row, image_start, pixels, prefix_start, prefix_end))

    def docks(self, input_ids: torch.Tensor, pad_id: int) -> list[Dock]:
        """The image dock, the joint dock and the span dock (each only when it has a segment) over the batch
        ``input_ids``."""
        docks = []
        if self.pixels:
            docks.append(image_dock(self.vision, self.pixels, self.image_rows, self.image_starts, self.image_tokens))
        if self.joints:
            docks.append(joint_dock(self.joint, input_ids, self.joints, self.image_tokens, pad_id))
        if self.spans:
            docks.append(span_dock(input_ids, self.spans, self.text, pad_id))
        return docks
