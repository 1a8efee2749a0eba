"""Streaming reader for the shards ``data.shards`` writes: exact, replayable sample streams that survive bad data.

The same arguments always give the same sequence of samples, because training resumes by replaying the stream.
Shards are split over ranks (``rank``/``world_size``) and then over DataLoader workers; with a shuffle buffer, the
shard order is shuffled per epoch from ``(seed, epoch)`` (the same on every rank, so a pass covers every shard once)
and samples are shuffled in a buffer seeded by ``(seed, epoch, rank, worker)``. Without a buffer the stream is in
file order. A corrupt shard or sample is skipped and counted by reason in ``ReaderStats``; the stream goes on.

Tars are read with the standard ``tarfile`` module, not webdataset's pipeline: webdataset 1.0.2 routes every error
through one handler (so nothing can be counted by reason), and, like ``tarfile`` itself, ends a shard silently at a
cut-off or garbled header, which can pass the last, incomplete sample of a truncated shard on as if it were whole.
Here a header that is not a proper end-of-archive marker counts the shard as ``damaged_tar`` and drops the sample in
progress. Remote URLs (``pipe:``, ``http://`` ...) are opened with webdataset's ``gopen``.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
import zlib
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
from PIL import Image
from torch.utils.data import get_worker_info

from data.shards import IMAGE_EXTS, IMAGE_KINDS, KINDS, is_remote

_log = logging.getLogger(__name__)
_WARNINGS = 5
_EXAMPLES = 20
_RESERVED = frozenset({"key", "kind", "image", "source"})
_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error)


@dataclass
class ReaderStats:
    """Samples yielded and samples/shards skipped, by reason, with the first few messages (shard and key)."""

    samples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        n = sum(self.skipped.values())
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{reason}: {message}")
        if n <= _WARNINGS:
            more = "; further skips are only counted" if n == _WARNINGS else ""
            _log.warning("skipped (%s): %s%s", reason, message, more)

    def copy(self) -> ReaderStats:
        return ReaderStats(self.samples, Counter(self.skipped), list(self.examples))

    def since(self, earlier: ReaderStats) -> ReaderStats:
        """What was counted after ``earlier`` (a ``copy`` of these stats): how a DataLoader worker ships its counts
        to the training process a batch at a time, since each worker process updates only its own stats."""
        return ReaderStats(
            self.samples - earlier.samples, self.skipped - earlier.skipped, self.examples[len(earlier.examples) :]
        )

    def add(self, other: ReaderStats) -> None:
        """Add counts shipped from another process (see ``since``); examples stay capped."""
        self.samples += other.samples
        self.skipped.update(other.skipped)
        self.examples += other.examples[: max(0, _EXAMPLES - len(self.examples))]


def expand_urls(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs from brace patterns (``train-{000000..000003}.tar``), globs, directories (their ``*.tar``, sorted)
    or a list of these; local shards must exist (FileNotFoundError names the one that does not)."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            if is_remote(url):
                urls.append(url)
            elif os.path.isdir(url):
                found = sorted(str(p) for p in Path(url).glob("*.tar"))
                if not found:
                    raise FileNotFoundError(f"no *.tar shards in directory {url}")
                urls += found
            elif glob.has_magic(url):
                found = sorted(glob.glob(url))
                if not found:
                    raise FileNotFoundError(f"no shards match {url}")
                urls += found
            elif os.path.isfile(url):
                urls.append(url)
            else:
                raise FileNotFoundError(f"shard not found: {url}")
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return urls


class _Damaged(Exception):
    pass


class _StrictInfo(tarfile.TarInfo):
    """Makes ``tarfile`` raise at a cut-off or garbled header instead of ending the archive there in silence."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the archive's proper end
        except tarfile.HeaderError as e:
            raise _Damaged(f"bad header at byte {tar.offset} ({e})") from None


def _split_name(name: str) -> tuple[str | None, str]:
    """Member name -> (sample key, extension), the webdataset way: the key ends at the file name's first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _open(url: str):
    if is_remote(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _raw_samples(url: str, stats: ReaderStats) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of one shard, in order; a damaged shard ends there, counted."""
    try:
        f = _open(url)
    except OSError as e:
        stats.skip("unreadable_shard", f"{url}: {e}")
        return
    key, members = None, {}
    with f:
        try:
            with tarfile.open(fileobj=f, mode="r|*", tarinfo=_StrictInfo) as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    base, ext = _split_name(info.name)
                    if base is None:
                        continue
                    if base != key:
                        if key is not None:
                            yield key, members
                        key, members = base, {}
                    members[ext] = tar.extractfile(info).read()
        except (*_DAMAGE, _Damaged) as e:
            lost = f"key {key} and the rest" if key is not None else "all"
            stats.skip("damaged_tar", f"{url}: {type(e).__name__}: {e}; {lost} of the shard lost")
            return
    if key is not None:
        yield key, members


def _decode(
    key: str, members: dict[str, bytes], url: str, stats: ReaderStats, kinds: Collection[str] | None
) -> dict | None:
    """The sample dict, or None after counting why it is unusable (a kind outside ``kinds``, when given, is)."""
    where = f"{url} key {key}"
    if "json" not in members:
        stats.skip("no_json", where)
        return None
    try:
        meta = json.loads(members["json"].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    except ValueError as e:
        stats.skip("bad_json", f"{where}: {e}")
        return None
    kind = meta.get("kind")
    if kind not in KINDS:
        stats.skip("unknown_kind", f"{where}: kind {kind!r}")
        return None
    if kinds is not None and kind not in kinds:
        stats.skip("wrong_kind", f"{where}: a {kind} sample where {' or '.join(kinds)} samples are read")
        return None
    missing = [name for name in KINDS[kind] if name not in meta]
    if missing:
        stats.skip("missing_field", f"{where}: {kind} without {missing}")
        return None
    if kind in ("text", "caption") and not (isinstance(meta[kind], str) and meta[kind].strip()):
        stats.skip("empty_text", where)
        return None
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    image = None
    if ext is not None:
        try:
            with Image.open(io.BytesIO(members[ext])) as im:
                image = im.convert("RGB")
        except Exception as e:  # PIL raises many types for bad data
            stats.skip("bad_image", f"{where}: {type(e).__name__}: {e}")
            return None
    elif kind in IMAGE_KINDS:
        stats.skip("missing_image", where)
        return None
    sample = {"key": key, "kind": kind, "image": image}
    sample.update((k, v) for k, v in meta.items() if k not in _RESERVED)
    sample["source"] = url
    return sample


def _share(
    urls: list[str], shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, worker: int, workers: int
) -> tuple[list[str], int, int]:
    """This worker's share of one pass: (shards, offset, stride), keeping the samples at positions ``offset`` modulo
    ``stride`` of the shards' concatenated stream. Whole shards when there are enough; else the consumers that would
    go without all read the same shards and take turns, so a pass still covers every sample exactly once."""
    order = list(urls)
    if shuffle:
        random.Random(f"metalm/shards/{seed}/{epoch}").shuffle(order)
    if len(order) >= world_size:
        mine, offset, stride = order[rank::world_size], 0, 1
    else:
        mine, offset, stride = order, rank, world_size
    if len(mine) >= workers:
        return mine[worker::workers], offset, stride
    return mine, offset + stride * worker, stride * workers


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _check(urls: list[str], shuffle_buffer: int, epoch: int, resample: bool, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if shuffle_buffer < 0 or epoch < 0:
        raise ValueError(f"shuffle_buffer and epoch must be >= 0, got {shuffle_buffer} and {epoch}")
    if len(urls) < world_size and not resample:
        raise ValueError(
            f"{len(urls)} shard(s) for {world_size} ranks: rank {len(urls)} and up would get none; write smaller "
            "shards (--max_per_shard) or read with resample=True, which splits the shards' samples over ranks"
        )


def iter_samples(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
    epoch: int = 0,
    resample: bool = False,
    rank: int = 0,
    world_size: int = 1,
    stats: ReaderStats | None = None,
    worker: int | None = None,
    workers: int | None = None,
    kinds: Collection[str] | None = None,
) -> Iterator[dict]:
    """Samples ``{"key", "kind", "image": RGB PIL image | None, **json fields, "source": shard url}`` (json fields
    named key, kind, image or source are shadowed by the reader's) of this rank's and DataLoader worker's share.

    The worker's share comes from ``get_worker_info()`` unless ``worker``/``workers`` name it (both or neither):
    ``data.pipeline.BatchStream`` does, because on resume its DataLoader workers take on rotated roles, and each
    must read the share of the role it plays, not of its process's worker id.

    ``resample=True`` makes passes forever, the epoch going up by one each pass. Fewer shards than ranks raises a
    ValueError for a single pass; with ``resample`` every rank reads all the shards and keeps every
    ``world_size``-th sample, so ranks still see disjoint data. Fewer shards than DataLoader workers splits samples
    the same way. Skips are counted in ``stats`` (a damaged shard once per consumer that reads it); with ``kinds``,
    samples of any other kind are skipped as ``wrong_kind`` (e.g. a VQA shard given as pretraining's captions).
    """
    urls = expand_urls(urls)
    _check(urls, shuffle_buffer, epoch, resample, rank, world_size)
    if (worker is None) != (workers is None):
        raise ValueError(f"worker = {worker}, workers = {workers}: give both (0 <= worker < workers) or neither")
    if workers is not None and not 0 <= worker < workers:
        raise ValueError(f"worker = {worker}: expected 0 <= worker < workers = {workers}")
    share = (worker, workers) if workers is not None else None
    return _stream(urls, shuffle_buffer, seed, epoch, resample, rank, world_size, stats or ReaderStats(), share, kinds)


def _stream(
    urls: list[str],
    shuffle_buffer: int,
    seed: int,
    epoch: int,
    resample: bool,
    rank: int,
    world_size: int,
    stats: ReaderStats,
    share: tuple[int, int] | None,
    kinds: Collection[str] | None,
) -> Iterator[dict]:
    worker, workers = share if share is not None else _worker()  # read where the stream is consumed
    while True:
        mine, offset, stride = _share(urls, shuffle_buffer > 0, seed, epoch, rank, world_size, worker, workers)
        stream = ((key, members, url) for url in mine for key, members in _raw_samples(url, stats))
        raw = (sample for pos, sample in enumerate(stream) if pos % stride == offset)
        if shuffle_buffer > 0:
            raw = _shuffled(raw, shuffle_buffer, random.Random(f"metalm/samples/{seed}/{epoch}/{rank}/{worker}"))
        yielded = 0
        for key, members, url in raw:
            sample = _decode(key, members, url, stats, kinds)
            if sample is not None:
                stats.samples += 1
                yielded += 1
                yield sample
        if not resample:
            return
        if yielded == 0:
            raise RuntimeError(
                f"rank {rank} worker {worker}: a whole pass over {len(mine)} shard(s) gave no valid sample "
                f"(skipped so far: {dict(stats.skipped)}); resampling would loop forever"
            )
        epoch += 1
