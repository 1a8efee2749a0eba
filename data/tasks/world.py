"""The bundled world's files (``python -m data.world``) named from its ``meta.json`` and read by the benchmark
readers, one split at a time."""

from __future__ import annotations

from pathlib import Path

from data.tasks.captions import read_coco_captions
from data.tasks.choice import read_choice_jsonl
from data.tasks.classification import read_glue
from data.tasks.examples import (
    CaptionExample,
    ChoiceExample,
    ClassificationExample,
    OnError,
    StrPath,
    TaskData,
    VQAExample,
)
from data.tasks.parsing import read_task_json
from data.tasks.vqa import coco_image_files, read_vqa

_WORLD_FILES = {
    "captions": "captions_{split}.json",
    "vqa_questions": "vqa/{split}_questions.json",
    "vqa_annotations": "vqa/{split}_annotations.json",
    "entail": "text/entail_{split}.tsv",
    "choice": "text/choice_{split}.jsonl",
    "scenes": "scenes_{split}.jsonl",
    "instructions": "instructions_{split}.jsonl",
    "corpus": "text/corpus_{split}.jsonl",
}


def world_files(world_dir: StrPath, split: str) -> dict[str, Path]:
    """Paths of one split of a generated world (``python -m data.world --out DIR``): ``root`` (image file names in
    its jsons are relative to it), ``captions``, ``vqa_questions``, ``vqa_annotations``, ``entail``, ``choice``,
    ``scenes``, ``instructions``, ``corpus``; names come from its ``meta.json``."""
    root = Path(world_dir)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no world at {root} (no meta.json); generate one with python -m data.world --out DIR")
    splits = read_task_json(meta_path, "the world's meta.json").get("splits", {})
    if split not in splits:
        raise ValueError(f"{meta_path}: no split {split!r}; the world has {sorted(splits)}")
    names = {k: splits[split].get(k, v.format(split=split)) for k, v in _WORLD_FILES.items()}
    return {"root": root, **{k: root / v for k, v in names.items()}}


def read_world_vqa(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[VQAExample]:
    """One split of the world's VQAv2-format files; images found through its COCO captions json's ``images``."""
    files = world_files(world_dir, split)
    return read_vqa(
        files["vqa_questions"],
        files["vqa_annotations"],
        files["root"],
        coco_image_files(files["captions"]),
        on_error=on_error,
    )


def read_world_captions(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[CaptionExample]:
    """One split of the world's COCO-format captions."""
    files = world_files(world_dir, split)
    return read_coco_captions(files["captions"], files["root"], on_error=on_error)


def read_world_entail(
    world_dir: StrPath, split: str, *, on_error: OnError = "error"
) -> TaskData[ClassificationExample]:
    """One split of the world's RTE-style ``text/entail_{split}.tsv`` (entailment / not_entailment)."""
    return read_glue(world_files(world_dir, split)["entail"], "world-entail", on_error=on_error)


def read_world_choice(world_dir: StrPath, split: str, *, on_error: OnError = "error") -> TaskData[ChoiceExample]:
    """One split of the world's ``text/choice_{split}.jsonl`` (see :func:`read_choice_jsonl`)."""
    return read_choice_jsonl(world_files(world_dir, split)["choice"], on_error=on_error)
