"""The docking layout: how an image, an encoder-read text span and an image + text prefix become decoder ids,
positions and ``Dock``s. Pretraining batches (``data.pipeline``), prompts for scoring and finetuning
(``data.prompts``) and the demo all lay out their inputs here, so a model meets one layout everywhere.

- An image is ``<image> <vec>*N </image>``: its N vectors dock at the ``<vec>`` positions, the first one
  ``IMAGE_OFFSET`` after ``<image>``.
- An encoder-read text span, when the text encoder shares the decoder's tokenizer (``native_text``, reads
  ``DECODER_IDS``), keeps its own decoder ids; its vectors dock back at those ids' positions, one per token.
- When the text encoder has its own tokenizer (a pretrained BERT/MiniLM, ``hf_text``, reads ``OWN_IDS``), the span's
  text (decoded from decoder ids, ``span_text``) is re-tokenized by the encoder's tokenizer with its specials
  (``[CLS] .. [SEP]``, ``own_ids``), and the span takes one ``<vec>`` placeholder position per encoder id, so per
  vector, exactly as an image does (no markers); its dock names the encoder's tokenizer.
- An image + text prefix is an image followed by text whose first tokens go through the text encoder
  (pretraining's image-caption items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from data.tokenizer import Tokenizer
from encoders.tokenization import TextTokenizer
from metalm.docking import Dock, contiguous_positions, own_span_dock, span_dock

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


def span_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of decoder ``ids`` as an encoder with its own tokenizer reads it: paragraphs (``</p>``) become blank
    lines, other special tokens are dropped."""
    pieces, piece = [], []
    for i in ids:
        if i == tokenizer.par_id:
            pieces.append(piece)
            piece = []
        else:
            piece.append(i)
    pieces.append(piece)
    return "\n\n".join(tokenizer.decode(p) for p in pieces)


def own_ids(tokenizer: Tokenizer, encoder_tokenizer: TextTokenizer, ids: Sequence[int]) -> list[int]:
    """Decoder ``ids`` re-tokenized by an encoder's own tokenizer, with its special tokens: what the encoder reads
    of a span, one vector (one decoder position) per id."""
    return encoder_tokenizer.encode(span_text(tokenizer, ids))


def placeholder_ids(tokenizer: Tokenizer, vectors: int) -> list[int]:
    """The decoder ids of a span read by an encoder with its own tokenizer: one ``<vec>`` per vector."""
    return [tokenizer.vec_id] * vectors


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
    encoder, and for the text encoder ``[start, end)`` spans of decoder ids (``add_span``) or, when it has its own
    tokenizer ``own_tokenizer``, spans of its own ids at placeholder positions (``add_own_span``); ``docks`` builds
    them, images first."""

    vision: str | None
    text: str | None
    image_tokens: int
    own_tokenizer: TextTokenizer | None = None
    pixels: list[torch.Tensor] = field(default_factory=list)
    image_rows: list[int] = field(default_factory=list)
    image_starts: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    own_spans: list[tuple[int, int, list[int]]] = field(default_factory=list)

    def add_image(self, row: int, start: int, pixels: torch.Tensor) -> None:
        """An image whose first ``<vec>`` is at ``start`` of batch row ``row``."""
        self.pixels.append(pixels)
        self.image_rows.append(row)
        self.image_starts.append(start)

    def add_span(self, row: int, start: int, end: int) -> None:
        """Ids ``[start, end)`` of batch row ``row``, read by the text encoder."""
        self.spans.append((row, start, end))

    def add_own_span(self, row: int, start: int, ids: list[int]) -> None:
        """The encoder's own ``ids`` of a span (``own_ids``), docked at the ``len(ids)`` placeholder positions from
        ``start`` of batch row ``row``."""
        if self.own_tokenizer is None:
            raise ValueError(f"text encoder {self.text!r}: a span of its own ids, but the layout has no own tokenizer")
        self.own_spans.append((row, start, ids))

    def docks(self, input_ids: torch.Tensor, pad_id: int) -> list[Dock]:
        """The image dock and the span dock (each only when it has a segment) over the batch ``input_ids``."""
        docks = []
        if self.pixels:
            docks.append(image_dock(self.vision, self.pixels, self.image_rows, self.image_starts, self.image_tokens))
        if self.spans:
            docks.append(span_dock(input_ids, self.spans, self.text, pad_id))
        if self.own_spans:
            tok = self.own_tokenizer
            docks.append(own_span_dock(self.own_spans, self.text, tok.pad_id, tok.describe()).to(input_ids.device))
        return docks
