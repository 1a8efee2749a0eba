"""Caption benchmarks: COCO captions json (and NoCaps), Karpathy splits and the Flickr30k token file in,
``CaptionExample`` out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.shards import existing
from data.tasks.examples import CaptionExample, OnError, StrPath, TaskData, TaskDataError
from data.tasks.parsing import Collector, ImageFiles, get_field, int_if_digits, not_utf8, read_task_json, top_list

_CAPTION_META = ("domain", "open_images_id")


def read_coco_captions(
    captions_json: StrPath, images_dir: StrPath, *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """COCO captions (``captions_val2014.json``; NoCaps ``nocaps_val_4500_captions.json`` has the same format).

    Format: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "id", "caption"}]}``; file names
    are relative to ``images_dir``. One example per image, in ``images`` order, with its captions in file order.
    A file without ``annotations`` (NoCaps / COCO test image-info files) gives empty references. When there are
    annotations, an image without any is left out and counted as ``no_references`` (whatever ``on_error`` says).
    NoCaps' ``domain`` and ``open_images_id`` go to ``meta``."""
    path = existing(captions_json, "COCO captions json")
    data = read_task_json(path, "a COCO captions json")
    images = top_list(data, "images", path, "a list of {id, file_name}")
    annotations = top_list(data, "annotations", path, "a list of {image_id, caption}", optional=True)
    root = Path(images_dir)
    files = ImageFiles(path)
    out: Collector[CaptionExample] = Collector(path, on_error, "a COCO captions json with at least one image")
    refs: dict[Any, list[str]] = {}
    for i, im in enumerate(images):
        refs.setdefault(get_field(im, "id", f"{path}: images[{i}]", (int, str)), [])

    def caption(i: int, ann: Any) -> None:
        where = f"{path}: annotations[{i}]"
        image_id = get_field(ann, "image_id", where, (int, str))
        text = get_field(ann, "caption", where)
        if image_id not in refs:
            raise TaskDataError(f"{where}: image_id {image_id!r} is not among the file's images", "unknown_image")
        refs[image_id].append(text.strip())

    for i, ann in enumerate(annotations or []):
        out.add(caption, i, ann)

    def one(i: int, im: dict) -> CaptionExample | None:
        image_id = im["id"]
        file_name = get_field(im, "file_name", f"{path}: images[{i}] (id {image_id})")
        if annotations is not None and not refs[image_id]:
            out.report.skip("no_references", f"{path}: image id {image_id} has no caption")
            return None
        image = files.find([root / file_name], f"image id {image_id}")
        meta = {k: im[k] for k in _CAPTION_META if k in im}
        return CaptionExample(image_id, image, refs[image_id], meta)

    for i, im in enumerate(images):
        out.add(one, i, im)
    return out.done()


def read_karpathy(
    dataset_json: StrPath, images_dir: StrPath, split: str | Sequence[str] = "test", *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """Karpathy & Fei-Fei's caption splits (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_8k.json``).

    Format: ``{"dataset": "coco", "images": [{"filepath"?: "val2014", "filename", "split", "imgid", "cocoid"?,
    "sentences": [{"raw", "tokens", ...}]}]}``. ``split`` is one of train/val/test/restval or a list of them
    (COCO's usual training set is ``["train", "restval"]``). The image is ``images_dir/filepath/filename`` (or
    ``images_dir/filename``); its id is ``cocoid`` when there is one, else the file name's stem (the Flickr id)."""
    path = existing(dataset_json, "Karpathy split json")
    images = top_list(
        read_task_json(path, "a Karpathy split json"), "images", path, "a list of {filename, split, sentences}"
    )
    wanted = {split} if isinstance(split, str) else set(split)
    root = Path(images_dir)
    files = ImageFiles(path)
    out: Collector[CaptionExample] = Collector(path, on_error, f"a Karpathy split json with images of split {split}")

    def one(i: int, im: Any) -> CaptionExample | None:
        where = f"{path}: images[{i}]"
        if get_field(im, "split", where) not in wanted:
            return None
        filename = get_field(im, "filename", where)
        where = f"{path}: images[{i}] ({filename})"
        image_id = im["cocoid"] if "cocoid" in im else int_if_digits(Path(filename).stem)
        sentences = get_field(im, "sentences", where, list, "a list of {raw, tokens}")
        refs = [get_field(s, "raw", f"{where}: sentences[{j}]").strip() for j, s in enumerate(sentences)]
        candidates = [root / im["filepath"] / filename] if isinstance(im.get("filepath"), str) else []
        image = files.find([*candidates, root / filename], f"image {image_id}")
        return CaptionExample(image_id, image, refs, {"split": im["split"]})

    for i, im in enumerate(images):
        out.add(one, i, im)
    return out.done()


_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")


def read_flickr30k_tokens(
    results_token_file: StrPath, images_dir: StrPath, *, on_error: OnError = "error"
) -> TaskData[CaptionExample]:
    """The original Flickr30k captions file ``results_20130124.token`` (Young et al. 2014), one caption a line:
    ``1000092795.jpg#0<TAB>Two young guys ...``. Examples in order of first appearance, id = the file's stem."""
    path = existing(results_token_file, "Flickr30k token file")
    root = Path(images_dir)
    files = ImageFiles(path)
    out: Collector[CaptionExample] = Collector(path, on_error, "a Flickr30k token file, one caption a line")
    refs: dict[str, list[str]] = {}

    def line(n: int, text: str) -> None:
        m = _TOKEN_LINE.match(text)
        if m is None:
            raise TaskDataError(
                f"{path}:{n}: malformed line {text[:60]!r}; expected '<image>.jpg#<n><TAB><caption>'", "malformed_line"
            )
        refs.setdefault(m["file"], []).append(m["caption"].strip())

    with path.open(encoding="utf-8") as f:
        try:
            for n, text in enumerate(f, 1):
                if text.strip():
                    out.add(line, n, text.rstrip("\r\n"))
        except UnicodeDecodeError as e:
            raise not_utf8(path, "a Flickr30k token file", e) from None

    def one(name: str) -> CaptionExample:
        image_id = int_if_digits(Path(name).stem)
        return CaptionExample(image_id, files.find([root / name], f"image {name}"), refs[name])

    for name in refs:
        out.add(one, name)
    return out.done()
