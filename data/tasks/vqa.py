"""VQAv2 and OK-VQA: a questions json, an annotations json and COCO-named images in, ``VQAExample`` out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.shards import existing
from data.tasks.examples import ExampleId, MissingImageError, OnError, StrPath, TaskData, TaskDataError, VQAExample
from data.tasks.parsing import Collector, ImageFiles, get_field, read_task_json, top_list


def _coco_folder_and_name(subtype: str, image_id: ExampleId) -> tuple[str, str]:
    """COCO's image folder and file name for a VQA ``data_subtype``: ``val2014/COCO_val2014_000000000042.jpg``;
    test-dev2015 questions use test2015 images; 2017 images are named by the zero-padded id alone."""
    folder = "test2015" if subtype == "test-dev2015" else subtype
    if folder.endswith("2017"):
        return folder, f"{int(image_id):012d}.jpg"
    return folder, f"COCO_{folder}_{int(image_id):012d}.jpg"


def read_vqa(
    questions_json: StrPath,
    annotations_json: StrPath | None,
    images_dir: StrPath,
    image_name: str | Mapping[Any, str] | None = None,
    *,
    on_error: OnError = "error",
) -> TaskData[VQAExample]:
    """VQAv2 or OK-VQA: a questions json and (unless the split is unannotated) an annotations json.

    Format (VQAv2, Goyal et al. 2017; OK-VQA, Marino et al. 2019, uses the same one): the questions file is
    ``{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}], ...}``, the annotations
    file ``{"annotations": [{"question_id", "image_id", "answers": [{"answer", "answer_confidence", "answer_id"}],
    "answer_type", "question_type", "multiple_choice_answer"}], ...}``. OK-VQA answers also carry ``raw_answer``;
    the ``answer`` field is the one read. With ``annotations_json=None`` (test-dev / test) answers are empty.

    Image of a question, relative to ``images_dir``: the question's ``file_name`` if it has one; else
    ``image_name[image_id]`` when ``image_name`` is a mapping (the bundled world: see :func:`coco_image_files`);
    else ``image_name.format(image_id=..., subtype=...)`` when it is a template; else COCO's naming from
    ``data_subtype`` (``COCO_val2014_{image_id:012d}.jpg``; ``{image_id:012d}.jpg`` for 2017). Template and COCO
    names are looked up in ``images_dir`` and in its ``<subtype>`` folder (e.g. ``val2014/``)."""
    qpath = existing(questions_json, "VQA questions json")
    qdata = read_task_json(qpath, "a VQA questions json")
    questions = top_list(qdata, "questions", qpath, "a list of {image_id, question, question_id}")
    subtype = qdata.get("data_subtype")
    root = Path(images_dir)
    if isinstance(image_name, str):
        try:
            image_name.format(image_id=0, subtype="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"image_name {image_name!r} may only use {{image_id}} and {{subtype}}: {e!r}") from None
    files = {str(k): v for k, v in image_name.items()} if isinstance(image_name, Mapping) else None
    if image_name is None and not isinstance(subtype, str) and not all("file_name" in q for q in questions):
        raise TaskDataError(
            f"{qpath}: missing top-level field 'data_subtype' (e.g. 'val2014') needed to name COCO "
            "images; pass image_name, a template with {image_id} or a mapping image_id -> file",
            "missing_field",
        )

    by_qid: dict[Any, dict] | None = None
    apath = None
    if annotations_json is not None:
        apath = existing(annotations_json, "VQA annotations json")
        annotations = top_list(
            read_task_json(apath, "a VQA annotations json"),
            "annotations",
            apath,
            "a list of {question_id, image_id, answers, answer_type, question_type}",
        )
        by_qid = {}
        for i, ann in enumerate(annotations):
            qid = get_field(ann, "question_id", f"{apath}: annotations[{i}]", (int, str))
            if qid in by_qid:
                raise TaskDataError(
                    f"{apath}: annotations[{i}]: question_id {qid!r} is annotated twice; expected one annotation "
                    "per question",
                    "duplicate_id",
                )
            by_qid[qid] = ann
    images = ImageFiles(qpath)
    out: Collector[VQAExample] = Collector(qpath, on_error, "a VQA questions json with at least one question")

    def image_of(q: dict, image_id: ExampleId, example: str) -> Path:
        if isinstance(q.get("file_name"), str):
            return images.find([root / q["file_name"]], example)
        if files is not None:
            if str(image_id) not in files:
                raise MissingImageError(f"{qpath}: {example}: image_id {image_id} is not in the image mapping")
            return images.find([root / files[str(image_id)]], example)
        if isinstance(image_name, str):
            name, folder = image_name.format(image_id=image_id, subtype=subtype), subtype
        else:
            folder, name = _coco_folder_and_name(subtype, image_id)
        return images.find([root / name, *([root / folder / name] if isinstance(folder, str) else [])], example)

    def one(i: int, q: Any) -> VQAExample:
        where = f"{qpath}: questions[{i}]"
        qid = get_field(q, "question_id", where, (int, str))
        where = f"{qpath}: question_id {qid}"
        image_id = get_field(q, "image_id", where, (int, str))
        question = get_field(q, "question", where)
        answers, answer_type, question_type, meta = [], None, None, {"image_id": image_id}
        if by_qid is not None:
            ann = by_qid.get(qid)
            if ann is None:
                raise TaskDataError(f"{qpath}: question_id {qid} has no annotation in {apath}", "no_annotation")
            awhere = f"{apath}: question_id {qid}"
            if ann.get("image_id", image_id) != image_id:
                raise TaskDataError(
                    f"{awhere}: image_id {ann['image_id']} differs from the question's {image_id}", "image_id_mismatch"
                )
            raw = get_field(ann, "answers", awhere, list, "a list of {answer, answer_confidence, answer_id}")
            if not raw:
                raise TaskDataError(f"{awhere}: field 'answers' is empty; expected the human answers", "bad_field")
            answers = [get_field(a, "answer", f"{awhere}: answers[{j}]") for j, a in enumerate(raw)]
            answer_type = ann.get("answer_type")
            question_type = ann.get("question_type")
            if "multiple_choice_answer" in ann:
                meta["multiple_choice_answer"] = ann["multiple_choice_answer"]
        image = image_of(q, image_id, f"question_id {qid} (image_id {image_id})")
        return VQAExample(qid, image, question, answers, answer_type, question_type, meta)

    for i, q in enumerate(questions):
        out.add(one, i, q)
    return out.done()


def coco_image_files(captions_json: StrPath) -> dict[int | str, str]:
    """image id -> ``file_name`` from a COCO-format json's ``images`` (to pass as ``read_vqa(image_name=...)``)."""
    path = existing(captions_json, "COCO json")
    images = top_list(read_task_json(path, "a COCO json"), "images", path, "a list of {id, file_name}")
    return {
        get_field(im, "id", f"{path}: images[{i}]", (int, str)): get_field(im, "file_name", f"{path}: images[{i}]")
        for i, im in enumerate(images)
    }
