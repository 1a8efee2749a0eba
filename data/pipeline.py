"""From streamed samples to semi-causal pretraining batches.

Text documents are tokenized (paragraphs joined by ``</p>``, documents ended by ``</s>``), packed into rows of
``seq_len`` tokens, and given non-overlapping spans that go through the text encoder, never across a document end
(``metalm.semicausal.sample_spans``). Image-text samples become ``<image> <vec>*N </image> caption </s>`` items,
packed whole into rows; the image is docked at the ``<vec>`` positions and a random-length prefix of the caption
goes through the text encoder, so the model learns to continue from what the encoders saw. With a joint
vision-language encoder (``PipelineConfig.joint_encoder``) the image and that prefix go through it together
instead (``data.layout.DockLayout.add_joint``), as in the paper's vision-language MetaLM. Every batch has the
same number of text and image-text rows (``text_weight``), so all processes run the same modules every step.

A text encoder with its own tokenizer (``PipelineConfig.text_tokenizer``: a pretrained BERT/MiniLM) changes the
lengths: its span takes one ``<vec>`` placeholder per encoder id instead of its decoder tokens (``data.layout``).
So spans are chosen before packing, per document, on decoder ids: each document is cut into windows of
``seq_len`` decoder tokens and ``sample_spans`` picks spans inside each window (never across the document's end,
whose ``</s>`` stays causal), from an RNG of their own seeded from ``seed``. The document then becomes a sequence
of units, single causal tokens and whole spans (their own ids and as many placeholders), packed into rows of
exactly ``seq_len`` positions: causal tokens may continue into the next row, a span never does. A span is read by
the encoder only when its placeholders and the token after it fit in the current row and its ids fit the
encoder's ``text_max_len``; otherwise its decoder tokens stay in the row as ordinary causal text. So the token
after a span is always in the span's row, predicted from the span's last position, and a span's own decoder
tokens never appear in the row. Image-text items draw their prefix length at layout time (same RNG scheme), and
pack whole by their laid-out length. Everything is a function of the samples and ``seed``, so ``skip`` (build
and drop) resumes exactly. With a shared tokenizer the layout and RNG draws are the ones above, unchanged.

``BatchStream`` and ``load_batches`` build these batches from shards, in the training process or in DataLoader
worker processes beside it, with the same exact resume either way.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.batch import Batch
from data.layout import IMAGE_OFFSET, DockLayout, image_tensor, image_text_ids, own_ids, placeholder_ids
from data.reader import ReaderStats, iter_samples
from encoders.tokenization import TextTokenizer
from metalm.loss import IGNORE_INDEX
from metalm.semicausal import sample_spans, scaled_span_lengths

# the sample kinds the text and the image-text stream build rows from; BatchStream skips and counts others
TEXT_KINDS = ("text",)
IMAGE_TEXT_KINDS = ("caption",)


@dataclass
class PipelineConfig:
    seq_len: int = 256
    batch_size: int = 16
    text_weight: float = 0.5
    span_ratio: float = 0.25
    span_min: int = 0  # 0: the paper's 64 scaled to seq_len / 2048
    span_max: int = 0
    prefix_max: float = 0.5
    image_size: tuple[int, int] = (32, 32)
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_tokens: int = 17
    text_encoder: str | None = "text"
    vision_encoder: str | None = "vision"
    seed: int = 0
    text_tokenizer: TextTokenizer | None = None  # the text encoder's own tokenizer; None: it shares the decoder's
    text_max_len: int = 0  # the most ids the text encoder reads (0: no limit)
    joint_encoder: str | None = None  # reads an image and its caption prefix together (then vision_encoder is None)

    def __post_init__(self) -> None:
        if self.joint_encoder is not None and self.vision_encoder is not None:
            raise ValueError(
                f"PipelineConfig: vision_encoder {self.vision_encoder!r} and joint_encoder {self.joint_encoder!r} "
                "both set; images dock through one of them"
            )

    @property
    def image_encoder(self) -> str | None:
        """The encoder that reads the images: the joint one when set, else the vision encoder (or None)."""
        return self.joint_encoder or self.vision_encoder

    def span_lengths(self) -> tuple[int, int]:
        lo, hi = scaled_span_lengths(self.seq_len)
        return self.span_min or lo, self.span_max or max(hi, self.span_min or lo)

    @property
    def text_rows(self) -> int:
        if self.image_encoder is None:
            return self.batch_size
        return round(self.batch_size * self.text_weight)


def document_tokens(text: str, tokenizer) -> list[int]:
    """A document's ids: paragraphs (split on blank lines) joined by ``</p>``, ended by ``</s>``."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    ids: list[int] = []
    for i, paragraph in enumerate(paragraphs):
        if i:
            ids.append(tokenizer.par_id)
        ids.extend(tokenizer.encode(paragraph))
    ids.append(tokenizer.eos_id)
    return ids


def text_rows(samples: Iterable[dict], tokenizer, seq_len: int) -> Iterator[tuple[list[int], list[tuple[int, int]]]]:
    """Rows of exactly ``seq_len`` ids from concatenated documents, with each row's ``[start, end)`` document
    pieces (a document may continue into the next row; spans stay inside one piece)."""
    buffer: list[int] = []
    bounds: list[tuple[int, int]] = []
    for sample in samples:
        ids = document_tokens(sample["text"], tokenizer)
        while ids:
            take = ids[: seq_len - len(buffer)]
            bounds.append((len(buffer), len(buffer) + len(take)))
            buffer.extend(take)
            ids = ids[len(take) :]
            if len(buffer) == seq_len:
                yield buffer, bounds
                buffer, bounds = [], []


@dataclass
class ImageItem:
    """One image-caption sample laid out for a row: the image, then the caption whose prefix the text encoder reads."""

    ids: list[int]  # <image> <vec>*N </image> caption </s>
    image: torch.Tensor
    caption_len: int
    caption_start: int  # where the caption starts in ids


def image_item(sample: dict, tokenizer, cfg: PipelineConfig) -> ImageItem:
    """An image-caption sample laid out as ``<image> <vec>*N </image> caption </s>``, cut to ``seq_len``."""
    caption = tokenizer.encode(sample["caption"])
    ids, caption_start = image_text_ids(tokenizer, cfg.image_tokens, caption)
    if len(ids) > cfg.seq_len:
        ids = ids[: cfg.seq_len]
        caption = caption[: cfg.seq_len - caption_start - 1]  # </s> is cut first
    pixels = image_tensor(sample["image"], cfg.image_size, cfg.image_mean, cfg.image_std)
    return ImageItem(ids, pixels, len(caption), caption_start)


def whole_rows(items: Iterable, seq_len: int) -> Iterator[list]:
    """Rows of whole items (each with ``ids``), as many as fit in ``seq_len`` (the rest of a row is padding)."""
    row: list = []
    used = 0
    for item in items:
        if used + len(item.ids) > seq_len:
            yield row
            row, used = [], 0
        row.append(item)
        used += len(item.ids)


def image_text_rows(samples: Iterable[dict], tokenizer, cfg: PipelineConfig) -> Iterator[list[ImageItem]]:
    """Rows of whole image-caption items, as many as fit in ``seq_len`` (the rest of a row is padding)."""
    return whole_rows((image_item(sample, tokenizer, cfg) for sample in samples), cfg.seq_len)


def place_images(
    images: list[list], first_row: int, ids: torch.Tensor, mask: torch.Tensor, layout: DockLayout | None
) -> Iterator[tuple[int, int, object]]:
    """Write image-text rows (from batch row ``first_row`` on) into ``ids`` and ``mask`` and their images into
    ``layout`` (None: the caller docks each image, with its prefix through a joint encoder); yields ``(row, where
    the item starts, item)`` of each item, so the caller docks its caption prefix."""
    for r, items in enumerate(images, start=first_row):
        pos = 0
        for item in items:
            n = len(item.ids)
            ids[r, pos : pos + n] = torch.tensor(item.ids)
            mask[r, pos : pos + n] = 1
            if layout is not None:
                layout.add_image(r, pos + IMAGE_OFFSET, item.image)
            yield r, pos, item
            pos += n


def build_batch(
    text: list[tuple[list[int], list[tuple[int, int]]]],
    images: list[list[ImageItem]],
    cfg: PipelineConfig,
    pad_id: int,
    rng: random.Random,
) -> Batch:
    """Stack text rows and image-text rows into one Batch with its text-span and image docks."""
    b = len(text) + len(images)
    ids = torch.full((b, cfg.seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, cfg.seq_len), dtype=torch.long)
    layout = DockLayout(cfg.vision_encoder, cfg.text_encoder, cfg.image_tokens, joint=cfg.joint_encoder)
    lo, hi = cfg.span_lengths()
    for r, (row, bounds) in enumerate(text):
        ids[r] = torch.tensor(row)
        mask[r] = 1
        if cfg.text_encoder is not None:
            for s, e in sample_spans(bounds, rng, cfg.span_ratio, lo, hi):
                layout.add_span(r, s, e)
    joint = cfg.joint_encoder is not None
    for r, pos, item in place_images(images, len(text), ids, mask, None if joint else layout):
        caption_start = pos + item.caption_start
        k = rng.randint(0, int(cfg.prefix_max * item.caption_len))
        if joint:
            layout.add_joint(r, pos + IMAGE_OFFSET, item.image, caption_start, caption_start + k)
        elif k and cfg.text_encoder is not None:
            layout.add_span(r, caption_start, caption_start + k)
    docks = layout.docks(ids, pad_id)
    return Batch(ids, ids.masked_fill(mask == 0, IGNORE_INDEX), mask, docks)


def batches(
    text_samples: Iterable[dict] | None,
    image_samples: Iterable[dict] | None,
    tokenizer,
    cfg: PipelineConfig,
    skip: int = 0,
) -> Iterator[Batch]:
    """Endless semi-causal batches; the first ``skip`` are built and dropped, so a resumed run sees exactly the
    batches an uninterrupted one would (the streams and the span RNG are deterministic)."""
    rng = random.Random(cfg.seed)
    n_text = cfg.text_rows if text_samples is not None else 0
    n_image = cfg.batch_size - n_text if image_samples is not None else 0
    if n_text + n_image == 0:
        raise ValueError("no data: give text samples, image-text samples, or both")
    if image_samples is None and n_text < cfg.batch_size:
        n_text = cfg.batch_size
    if cfg.text_tokenizer is not None and cfg.text_encoder is not None:
        text_iter = own_text_rows(text_samples, tokenizer, cfg) if n_text else None
        image_iter = own_image_text_rows(image_samples, tokenizer, cfg) if n_image else None
    else:
        text_iter = text_rows(text_samples, tokenizer, cfg.seq_len) if n_text else None
        image_iter = image_text_rows(image_samples, tokenizer, cfg) if n_image else None
    index = 0
    while True:
        try:
            text = [next(text_iter) for _ in range(n_text)] if text_iter else []
            images = [next(image_iter) for _ in range(n_image)] if image_iter else []
        except StopIteration:
            return
        if cfg.text_tokenizer is not None and cfg.text_encoder is not None:
            batch = build_own_batch(text, images, cfg, tokenizer.pad_id)
        else:
            batch = build_batch(text, images, cfg, tokenizer.pad_id, rng)
        if index >= skip:
            yield batch
        index += 1


# ---------------------------------------------------------------- a text encoder with its own tokenizer


@dataclass
class OwnRow:
    """A text row laid out for a text encoder with its own tokenizer: ``seq_len`` decoder ids (a span's are
    placeholders) and the spans, ``(start, the encoder's own ids)``, each taking ``len(ids)`` positions."""

    ids: list[int]
    spans: list[tuple[int, list[int]]]


@dataclass
class OwnImageItem:
    """An image-caption item whose caption prefix (``prefix``: the encoder's own ids, possibly none) sits as
    placeholders at ``prefix_start``: ``<image> <vec>*N </image> <vec>*len(prefix) rest-of-caption </s>``."""

    ids: list[int]
    image: torch.Tensor
    prefix_start: int
    prefix: list[int]


def own_rng(seed: int, stream: str) -> random.Random:
    """The RNG of one stream's spans (``text``, ``caption``) in the own-tokenizer layout, seeded from ``seed``."""
    return random.Random(f"metalm/own-spans/{stream}/{seed}")


def encoder_takes(own: list[int], cfg: PipelineConfig) -> bool:
    """Whether the text encoder reads a span of ``len(own)`` of its ids (``text_max_len``, 0: no limit)."""
    return not cfg.text_max_len or len(own) <= cfg.text_max_len


def own_text_rows(samples: Iterable[dict], tokenizer, cfg: PipelineConfig) -> Iterator[OwnRow]:
    """Rows of exactly ``seq_len`` positions from concatenated documents, spans chosen per document and laid out
    for the text encoder's own tokenizer (see the module docstring)."""
    rng = own_rng(cfg.seed, "text")
    lo, hi = cfg.span_lengths()
    row = OwnRow([], [])
    for sample in samples:
        doc = document_tokens(sample["text"], tokenizer)
        spans = []
        for start in range(0, len(doc), cfg.seq_len):
            spans += sample_spans([(start, min(start + cfg.seq_len, len(doc)))], rng, cfg.span_ratio, lo, hi)
        done = 0
        for s, e in [*spans, (len(doc), len(doc))]:
            causal = doc[done:s]
            own = own_ids(tokenizer, cfg.text_tokenizer, doc[s:e]) if e > s else []
            room = cfg.seq_len - (len(row.ids) + len(causal)) % cfg.seq_len  # where the span would start
            if own and not (len(own) < room and encoder_takes(own, cfg)):  # the token after it stays in its row
                causal, own = doc[done:e], []
            while causal:
                take = cfg.seq_len - len(row.ids)
                row.ids += causal[:take]
                causal = causal[take:]
                if len(row.ids) == cfg.seq_len:
                    yield row
                    row = OwnRow([], [])
            if own:
                row.spans.append((len(row.ids), own))
                row.ids += placeholder_ids(tokenizer, len(own))
            done = e


def own_image_text_rows(samples: Iterable[dict], tokenizer, cfg: PipelineConfig) -> Iterator[list[OwnImageItem]]:
    """Rows of whole image-caption items whose random-length caption prefix is re-tokenized for the text encoder;
    a prefix that would not fit the row or the encoder stays causal text."""
    rng = own_rng(cfg.seed, "caption")

    def items() -> Iterator[OwnImageItem]:
        for sample in samples:
            item = image_item(sample, tokenizer, cfg)
            start = item.caption_start
            k = rng.randint(0, int(cfg.prefix_max * item.caption_len))
            own = own_ids(tokenizer, cfg.text_tokenizer, item.ids[start : start + k]) if k else []
            ids = item.ids[:start] + placeholder_ids(tokenizer, len(own)) + item.ids[start + k :]
            if not own or len(ids) > cfg.seq_len or not encoder_takes(own, cfg):
                ids, own = item.ids, []
            yield OwnImageItem(ids, item.image, start, own)

    return whole_rows(items(), cfg.seq_len)


def build_own_batch(text: list[OwnRow], images: list[list[OwnImageItem]], cfg: PipelineConfig, pad_id: int) -> Batch:
    """Stack own-tokenizer text rows and image-text rows into one Batch; placeholders are never targets."""
    b = len(text) + len(images)
    ids = torch.full((b, cfg.seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, cfg.seq_len), dtype=torch.long)
    docked = torch.zeros((b, cfg.seq_len), dtype=torch.bool)
    layout = DockLayout(
        cfg.vision_encoder, cfg.text_encoder, cfg.image_tokens, cfg.text_tokenizer, joint=cfg.joint_encoder
    )
    for r, row in enumerate(text):
        ids[r] = torch.tensor(row.ids)
        mask[r] = 1
        for s, own in row.spans:
            layout.add_own_span(r, s, own)
            docked[r, s : s + len(own)] = True
    for r, pos, item in place_images(images, len(text), ids, mask, layout):
        if item.prefix:
            start = pos + item.prefix_start
            layout.add_own_span(r, start, item.prefix)
            docked[r, start : start + len(item.prefix)] = True
    docks = layout.docks(ids, pad_id)
    return Batch(ids, ids.masked_fill((mask == 0) | docked, IGNORE_INDEX), mask, docks)


def span_seed(seed: int, role: int, roles: int) -> int:
    """The span RNG seed of worker role ``role`` of ``roles``: ``seed`` itself for a single role (so building
    in-process gives the batches it always did), else a hash of all three, so roles draw unrelated spans."""
    if roles == 1:
        return seed
    digest = hashlib.sha256(f"metalm/spans/{seed}/{role}/{roles}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def role_skip(skip: int, role: int, roles: int) -> int:
    """Batches that role ``role`` of ``roles`` builds and drops so that a loader resumed at global batch ``skip``
    delivers it first: ``ceil((skip - role) / roles)``, at least 0 (see ``BatchStream``)."""
    return max(0, -(-(skip - role) // roles))


class BatchStream(IterableDataset):
    """Semi-causal batches from text and image-text shards, built whole where the stream is iterated: in the
    training process, or in each DataLoader worker (``batch_size=None``: items come out already built).

    Samples of another kind than the stream's (``TEXT_KINDS``, ``IMAGE_TEXT_KINDS``: a VQA shard given as
    captions, say) are skipped and counted as ``wrong_kind``, naming the shard, like other unusable samples.

    Items are ``(batch, stats)``, ``stats`` holding the reader's counts (samples, skips by reason) since this
    worker's previous item: each worker process has its own ``ReaderStats``, so the counts travel with the batches
    and ``load_batches`` sums them in the training process. They cover exactly the batches delivered, not the ones
    a worker built ahead, so they do not depend on timing.

    Roles and exact resume. With N workers, global batch ``g`` is built by role ``g mod N`` as its ``(g // N)``-th
    batch. Role ``r`` reads share ``r`` of N of this rank's samples (``iter_samples(worker=r, workers=N)``, not the
    share of its process's worker id) and draws spans from its own RNG (``span_seed(cfg.seed, r, N)``). torch's
    DataLoader asks its workers for items in turn, 0, 1, ..., N-1, 0, ..., and (``in_order``, its default) hands
    them out in that order, as long as no worker's stream ends (with ``resample=True`` none does). A loader resumed
    at ``skip = s``: worker ``i`` plays role ``(i + s) mod N`` and first builds and drops
    ``max(0, ceil((s - role) / N))`` of its batches (``role_skip``), so it delivers global batches ``s + i``,
    ``s + i + N``, ... and the loader's first batch is global batch ``s``: the tail of the unresumed stream.

    The batches depend on N, so resume with the number of workers the run started with. Iterated in-process it is
    one role of one: the batches of ``batches(iter_samples(...), iter_samples(...), tokenizer, cfg, skip)``.
    """

    def __init__(
        self,
        text_urls: Sequence[str] | None,
        image_urls: Sequence[str] | None,
        tokenizer,
        cfg: PipelineConfig,
        *,
        skip: int = 0,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resample: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if skip < 0:
            raise ValueError(f"skip = {skip}: expected 0 or more")
        self.text_urls = list(text_urls) if text_urls is not None else None
        self.image_urls = list(image_urls) if image_urls is not None else None
        self.tokenizer, self.cfg, self.skip = tokenizer, cfg, skip
        self.reader = dict(
            shuffle_buffer=shuffle_buffer, seed=seed, resample=resample, rank=rank, world_size=world_size
        )

    def roles(self) -> tuple[int, int]:
        """(role, roles) of the process iterating the stream: ``(0, 1)`` outside a DataLoader worker."""
        info = get_worker_info()
        if info is None:
            return 0, 1
        return (info.id + self.skip) % info.num_workers, info.num_workers

    def role_batches(self, role: int, roles: int) -> Iterator[tuple[Batch, ReaderStats]]:
        """The items of role ``role`` of ``roles``, from the first one a loader resumed at ``self.skip`` delivers."""
        stats = ReaderStats()
        kw = dict(self.reader, stats=stats, worker=role, workers=roles)
        text = iter_samples(self.text_urls, **kw, kinds=TEXT_KINDS) if self.text_urls is not None else None
        images = iter_samples(self.image_urls, **kw, kinds=IMAGE_TEXT_KINDS) if self.image_urls is not None else None
        cfg = replace(self.cfg, seed=span_seed(self.cfg.seed, role, roles))
        shipped = ReaderStats()
        for batch in batches(text, images, self.tokenizer, cfg, role_skip(self.skip, role, roles)):
            delta = stats.since(shipped)
            shipped = stats.copy()
            yield batch, delta

    def __iter__(self) -> Iterator[tuple[Batch, ReaderStats]]:
        return self.role_batches(*self.roles())


def _as_is(item: tuple[Batch, ReaderStats]) -> tuple[Batch, ReaderStats]:
    """The DataLoader's ``collate_fn`` for items built whole (torch's default would make the tuple a list)."""
    return item


def _own_session(worker_id: int) -> None:
    """Moves the worker out of training's process group (into a session of its own, so no terminal's job control
    reaches it either). Ctrl-C and a launcher's or scheduler's stop signal the whole group; a worker they killed
    would make training fail at once (torch raises on a dead worker) instead of finishing its step and saving a
    checkpoint. Ignoring the signals in the worker would not do: multiprocessing stops leftover workers at exit
    with SIGTERM. Workers still end with training: the DataLoader shuts them down, and they exit when their parent
    is gone."""
    os.setsid()


def load_batches(
    stream: BatchStream,
    num_workers: int = 0,
    *,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    stats: ReaderStats | None = None,
) -> Iterator[Batch]:
    """The stream's batches, built in this process (``num_workers=0``) or by ``num_workers`` DataLoader worker
    processes beside training (see ``BatchStream`` for the order and exact resume); each batch's reader counts are
    added to ``stats``. ``pin_memory`` (CUDA only) pins the batches for faster copies to the GPU.

    The DataLoader gets its own seeded ``generator``: without one, starting its workers draws a base seed from the
    global torch RNG, which the training checkpoint restores for dropout, and a resumed run would draw differently.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers = {num_workers}: expected 0 (build batches in this process) or more")
    if num_workers == 0:
        items: Iterator[tuple[Batch, ReaderStats]] = iter(stream)
    else:
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor = {prefetch_factor}: expected at least 1")
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            prefetch_factor=prefetch_factor,
            pin_memory=pin_memory,
            worker_init_fn=_own_session,
            generator=torch.Generator().manual_seed(0),
        )
        items = iter(loader)

    def counted() -> Iterator[Batch]:
        for batch, delta in items:
            if stats is not None:
                stats.add(delta)
            yield batch

    return counted()
