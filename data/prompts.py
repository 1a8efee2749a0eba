"""Prompts of text, images and encoder-read text, turned into decoder ids and docks.

A prompt is a list of segments, read left to right:

- ``str``: plain text the decoder reads causally;
- ``ImageSeg(image)``: an image docked through the vision encoder between ``<image>`` and ``</image>``;
- ``EncodedSeg(text)``: text read by the bidirectional text encoder (MetaLM's "in-context customization"): with
  an encoder that shares the decoder's tokenizer it docks at the text's own decoder positions; with one that has
  its own tokenizer (a pretrained BERT/MiniLM) the text is re-tokenized by it and takes one ``<vec>`` placeholder
  position per encoder id (``data.layout``); right after an image, a joint vision-language encoder reads it
  together with the image, as pretraining's caption prefixes;
- ``SpecialSeg(token)``: one special token, e.g. ``"</s>"``, ``"</p>"`` or a chat model's ``"<|im_start|>"``.

Evaluation (``eval/scoring.py``) and the finetuning batches (``data/batching.py``) both build their inputs here,
so a model is scored on exactly the layout it was finetuned on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from data.layout import (
    IMAGE_OFFSET,
    DockLayout,
    first_encoder,
    image_ids,
    image_reader,
    image_tensor,
    own_ids,
    placeholder_ids,
)
from data.tokenizer import SPECIAL_TOKENS, Tokenizer
from encoders.base import DECODER_IDS, IMAGE_TEXT, OWN_IDS
from metalm.docking import Dock


@dataclass(frozen=True)
class ImageSeg:
    """An image (a path or a PIL image) docked through the vision encoder."""

    image: str | Path | Image.Image


class TextTooLong(ValueError):
    """Encoder-read text with more ids of the text encoder's own tokenizer than the encoder takes."""


TEXT_READS = (DECODER_IDS, OWN_IDS)  # what a text encoder reads: the decoder's ids, or its own tokenizer's


@dataclass(frozen=True)
class EncodedSeg:
    """Text that the bidirectional text encoder reads; its vectors dock at the text's decoder positions, or at one
    placeholder per vector when the encoder has its own tokenizer."""

    text: str


@dataclass(frozen=True)
class SpecialSeg:
    """One special token by name (``</s>``, ``</p>``, ...)."""

    token: str


Segment = str | ImageSeg | EncodedSeg | SpecialSeg
Prompt = Sequence[Segment]


@dataclass
class Encoded:
    """A prompt as decoder ids plus what docks where (positions relative to the prompt's first token)."""

    ids: list[int]
    images: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (first <vec> position, pixels)
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) read by the text encoder
    # (first placeholder, the text encoder's own ids): text re-tokenized by an encoder with its own tokenizer
    own_spans: list[tuple[int, list[int]]] = field(default_factory=list)

    def __add__(self, ids: list[int]) -> Encoded:
        """The same prompt followed by plain ``ids`` (an answer, which is never docked)."""
        return Encoded(self.ids + list(ids), self.images, self.spans, self.own_spans)


def concat(parts: Sequence[Encoded]) -> Encoded:
    """One row of several encoded prompts in turn, each one's docks moved to where it starts."""
    out = Encoded([])
    for part in parts:
        off = len(out.ids)
        out.images += [(off + s, px) for s, px in part.images]
        out.spans += [(off + s, off + e) for s, e in part.spans]
        out.own_spans += [(off + s, own) for s, own in part.own_spans]
        out.ids += part.ids
    return out


def open_image(image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or an image; a missing or unreadable file names itself."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:  # PIL raises several types for broken files
        raise ValueError(f"{path}: not a readable image ({err})") from err


def through_encoder(segments: Sequence[Segment]) -> list[Segment]:
    """The same demonstration with its text read by the text encoder: runs of adjacent text become one span."""
    out: list[Segment] = []
    run = ""
    for seg in segments:
        if isinstance(seg, str):
            run += seg
            continue
        if run:
            out.append(EncodedSeg(run))
            run = ""
        out.append(seg)
    if run:
        out.append(EncodedSeg(run))
    return out


class PromptEncoder:
    """Encodes prompts for one model: which encoder reads images (and at what size, normalisation and token
    count) and which reads text; when not named, the encoder that reads pixels or images with text
    (``data.layout.image_reader``), and the first text encoder that can read text: one that reads the decoder's ids,
    or one with its own tokenizer attached (``Encoder.reads``; ``text_tokenizer`` is then that tokenizer, else
    None). ``joint``: images go through a joint vision-language encoder, which also reads an ``EncodedSeg`` right
    after an image."""

    def __init__(self, model, tokenizer: Tokenizer, vision: str | None = None, text: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.vision = vision or image_reader(model)
        self.text = text or first_encoder(model, TEXT_READS, usable=True)
        self.text_tokenizer = None  # the text encoder's own tokenizer; None: it shares the decoder's
        self.text_max_len = 0  # the most ids it reads (0: no limit), for its own tokenizer's ids
        if self.text is not None:
            enc = model.encoders[self.text]
            if enc.reads not in TEXT_READS:
                raise ValueError(f"encoder {self.text!r} reads {enc.reads!r}; a text encoder reads one of {TEXT_READS}")
            if enc.reads == OWN_IDS:
                if enc.tokenizer is None:
                    raise ValueError(f"text encoder {self.text!r} reads its own tokenizer's ids but has no tokenizer")
                self.text_tokenizer, self.text_max_len = enc.tokenizer, enc.max_len or 0
        self.image_tokens = 0  # no vision encoder: no image ever docks
        self.joint = False
        if self.vision is not None:
            enc = model.encoders[self.vision]
            self.joint = enc.reads == IMAGE_TEXT
            self.image_size = tuple(enc.image_size)
            self.image_mean, self.image_std = (tuple(x) for x in enc.normalization())
            self.image_tokens = enc.num_tokens

    def encode(self, prompt: Prompt | str) -> Encoded:
        """Decoder ids of ``prompt`` (a plain string is one text segment) and where its images and spans dock."""
        if isinstance(prompt, str):
            prompt = [prompt]
        ids: list[int] = []
        images: list[tuple[int, torch.Tensor]] = []
        spans: list[tuple[int, int]] = []
        own_spans: list[tuple[int, list[int]]] = []
        tok = self.tokenizer
        after_image = False  # the segment before was an image: a joint encoder reads encoded text there with it
        for seg in prompt:
            if isinstance(seg, str):
                ids += tok.encode(seg)
            elif isinstance(seg, ImageSeg):
                if self.vision is None:
                    raise ValueError("the prompt has an image but this model has no vision encoder")
                pixels = image_tensor(open_image(seg.image), self.image_size, self.image_mean, self.image_std)
                images.append((len(ids) + IMAGE_OFFSET, pixels))
                ids += image_ids(tok, self.image_tokens)
            elif isinstance(seg, EncodedSeg):
                if self.text is None and not (self.joint and after_image):
                    raise ValueError(
                        "the prompt has encoder-read text but this model has no text encoder: none reads the "
                        "decoder's ids (native_text) or has its own tokenizer attached (hf_text)"
                    )
                piece = tok.encode(seg.text)
                if piece and self.text_tokenizer is not None and not (self.joint and after_image):
                    own = self.own_ids(piece)
                    own_spans.append((len(ids), own))
                    piece = placeholder_ids(tok, len(own))
                elif piece:
                    spans.append((len(ids), len(ids) + len(piece)))
                ids += piece
            elif isinstance(seg, SpecialSeg):
                if seg.token not in SPECIAL_TOKENS and seg.token not in tok.added_tokens:
                    raise ValueError(
                        f"unknown special token {seg.token!r}; expected one of {SPECIAL_TOKENS} or the tokenizer's "
                        "own special tokens"
                    )
                ids.append(tok.backend.token_to_id(seg.token))
            else:
                raise TypeError(f"prompt segment {seg!r}: expected str, ImageSeg, EncodedSeg or SpecialSeg")
            after_image = isinstance(seg, ImageSeg)
        return Encoded(ids, images, spans, own_spans)

    def own_ids(self, piece: list[int]) -> list[int]:
        """Decoder ids ``piece`` as the text encoder's own tokenizer reads them; more than it takes is an error."""
        own = own_ids(self.tokenizer, self.text_tokenizer, piece)
        if self.text_max_len and len(own) > self.text_max_len:
            raise TextTooLong(
                f"encoder-read text of {len(own)} ids of tokenizer {self.text_tokenizer.describe()}: text encoder "
                f"{self.text!r} reads at most {self.text_max_len}; shorten it ({self.tokenizer.decode(piece)!r:.60})"
            )
        return own

    def length(self, prompt: Prompt | str) -> int:
        """Decoder positions ``prompt`` takes (as ``encode(prompt).ids``), without reading its images."""
        segments = [prompt] if isinstance(prompt, str) else prompt
        image = len(image_ids(self.tokenizer, self.image_tokens))
        return sum(image if isinstance(seg, ImageSeg) else len(self.encode([seg]).ids) for seg in segments)

    def collate(
        self, rows: Sequence[Encoded], width: int | None = None, left_pad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[Dock]]:
        """Padded ids ``(B, width)``, attention mask and docks; rows are padded on the left or on the right."""
        width = width or max(len(r.ids) for r in rows)
        b = len(rows)
        ids = torch.full((b, width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        if self.joint:
            layout = DockLayout(None, self.text, self.image_tokens, self.text_tokenizer, joint=self.vision)
        else:
            layout = DockLayout(self.vision, self.text, self.image_tokens, self.text_tokenizer)
        for r, row in enumerate(rows):
            if len(row.ids) > width:
                raise ValueError(f"row {r} has {len(row.ids)} ids; the batch is {width} wide")
            off = width - len(row.ids) if left_pad else 0
            ids[r, off : off + len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
            mask[r, off : off + len(row.ids)] = 1
            if self.joint:
                spans = self._add_joint(layout, r, off, row)
            else:
                spans = row.spans
                for start, px in row.images:
                    layout.add_image(r, off + start, px)
            for s, e in spans:
                layout.add_span(r, off + s, off + e)
            for s, own in row.own_spans:
                layout.add_own_span(r, off + s, own)
        docks = layout.docks(ids, self.tokenizer.pad_id)
        return ids, mask, docks

    def _add_joint(self, layout: DockLayout, r: int, off: int, row: Encoded) -> list[tuple[int, int]]:
        """Add row ``r``'s images to ``layout`` as joint segments, each with the encoded span that starts right
        after its ``</image>`` as its prefix (empty without one); returns the spans left for the text encoder."""
        prefixes = set()
        for start, px in row.images:
            after = start + self.image_tokens + 1
            prefix = next(((s, e) for s, e in row.spans if s == after), (after, after))
            layout.add_joint(r, off + start, px, off + prefix[0], off + prefix[1])
            prefixes.add(prefix)
        return [span for span in row.spans if span not in prefixes]
