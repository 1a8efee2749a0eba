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
from encoders.base import IMAGE_TEXT, OWN_IDS, PIXELS
from encoders.tokenization import DECODER_TOKENIZER, TextTokenizer
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


def first_encoder(model, reads: Sequence[str], usable: bool = False) -> str | None:
    """The name of the model's first encoder that reads one of ``reads`` (``Encoder.reads``), or None; with
    ``usable``, an encoder that reads its own tokenizer's ids counts only with that tokenizer attached."""
    for name, enc in model.encoders.items():
        if enc.reads in reads and not (usable and enc.reads == OWN_IDS and enc.tokenizer is None):
            return name
    return None


def image_reader(model) -> str | None:
    """The encoder that reads ``model``'s images: its vision encoder (``PIXELS``) or its joint vision-language one
    (``IMAGE_TEXT``); None without either. A model with both is refused: images dock through one of them."""
    vision, joint = first_encoder(model, (PIXELS,)), first_encoder(model, (IMAGE_TEXT,))
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
    encoder; for the text encoder ``[start, end)`` spans of decoder ids (``add_span``) or, when it has its own
    tokenizer ``own_tokenizer``, spans of its own ids at placeholder positions (``add_own_span``); and image +
    prefix segments for the ``joint`` vision-language encoder (``add_joint``); ``docks`` builds them, images
    first."""

    vision: str | None
    text: str | None
    image_tokens: int
    own_tokenizer: TextTokenizer | None = None
    pixels: list[torch.Tensor] = field(default_factory=list)
    image_rows: list[int] = field(default_factory=list)
    image_starts: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    own_spans: list[tuple[int, int, list[int]]] = field(default_factory=list)
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

    def add_own_span(self, row: int, start: int, ids: list[int]) -> None:
        """The encoder's own ``ids`` of a span (``own_ids``), docked at the ``len(ids)`` placeholder positions from
        ``start`` of batch row ``row``."""
        if self.own_tokenizer is None:
            raise ValueError(f"text encoder {self.text!r}: a span of its own ids, but the layout has no own tokenizer")
        self.own_spans.append((row, start, ids))

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
        if self.own_spans:
            tok = self.own_tokenizer
            docks.append(own_span_dock(self.own_spans, self.text, tok.pad_id, tok.describe()).to(input_ids.device))
        return docks
