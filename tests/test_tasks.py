"""Benchmark readers on tiny fixtures in the published formats (tests/fixtures/<benchmark>/), and on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.tasks import (
    LABELS,
    TASKS,
    CaptionExample,
    ChoiceExample,
    ClassificationExample,
    MissingImageError,
    TaskDataError,
    VQAExample,
    coco_image_files,
    get_task,
    hellaswag_preprocess,
    read_arc,
    read_boolq,
    read_choice_jsonl,
    read_coco_captions,
    read_copa,
    read_flickr30k_tokens,
    read_glue,
    read_hellaswag,
    read_karpathy,
    read_nlvr2,
    read_piqa,
    read_snli_ve,
    read_storycloze,
    read_vqa,
    read_winogrande,
    read_world_captions,
    read_world_choice,
    read_world_entail,
    read_world_vqa,
    world_files,
)
from data.world import generate_world

FIX = Path(__file__).resolve().parent / "fixtures"
VQA = FIX / "vqav2"
VQA_Q, VQA_A = VQA / "v2_OpenEnded_mscoco_val2014_questions.json", VQA / "v2_mscoco_val2014_annotations.json"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIX / name, tmp_path / name))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------------
# VQA


def test_vqav2_fixture():
    data = read_vqa(VQA_Q, VQA_A, VQA)
    assert [e.question_id for e in data] == [42000, 42001, 73000, 133000, 133001]
    first = data[0]
    assert first == VQAExample(
        42000,
        VQA / "val2014" / "COCO_val2014_000000000042.jpg",
        "What is the dog lying on?",
        ["couch"] * 6 + ["sofa"] * 3 + ["blanket"],
        "other",
        "what is the",
        {"image_id": 42, "multiple_choice_answer": "couch"},
    )
    assert [e.answer_type for e in data] == ["other", "yes/no", "number", "other", "yes/no"]
    assert data[2].answers == ["2"] * 9 + ["two"] and data[2].image.name == "COCO_val2014_000000000073.jpg"
    assert all(len(e.answers) == 10 and e.image.is_file() for e in data)
    assert data.report.to_dict() == {"source": str(VQA_Q), "examples": 5, "skipped": {}, "skip_messages": []}
    # images_dir may also be the val2014 folder itself
    assert [e.image for e in read_vqa(VQA_Q, VQA_A, VQA / "val2014")] == [e.image for e in data]


def test_vqav2_test_dev_without_annotations_uses_test2015_images():
    data = read_vqa(VQA / "v2_OpenEnded_mscoco_test-dev2015_questions.json", None, VQA)
    assert [(e.question_id, e.question, e.answers, e.answer_type) for e in data] == [
        (1000, "What is the man holding?", [], None),
        (1001, "Is it raining?", [], None),
    ]
    assert data[0].image == VQA / "test2015" / "COCO_test2015_000000000001.jpg"


def test_okvqa_fixture():
    d = FIX / "okvqa"
    data = read_vqa(d / "OpenEnded_mscoco_val2014_questions.json", d / "mscoco_val2014_annotations.json", d)
    assert [e.question_id for e in data] == [740, 1390, 2855]
    assert data[0].answers == ["race"] * 2 + ["motocross"] * 6 + ["ride"] * 2  # 'answer', not 'raw_answer'
    assert data[2].answers == ["forest"] * 4 + ["wood"] * 4 + ["mountain"] * 2
    assert [e.question_type for e in data] == ["eight", "three", "seven"]
    assert data[1].image == d / "val2014" / "COCO_val2014_000000000139.jpg"


def test_vqa_image_template_mapping_and_file_name(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("pic-42.jpg", "other.png", "by_name.jpg"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    qs = {"questions": [{"image_id": 42, "question": "q?", "question_id": 1}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    assert read_vqa(tmp_path / "q.json", None, tmp_path / "imgs", "pic-{image_id}.jpg")[0].image.name == "pic-42.jpg"
    assert read_vqa(tmp_path / "q.json", None, tmp_path / "imgs", {42: "other.png"})[0].image.name == "other.png"
    qs["questions"][0]["file_name"] = "by_name.jpg"
    (tmp_path / "q.json").write_text(json.dumps(qs))
    assert read_vqa(tmp_path / "q.json", None, tmp_path / "imgs")[0].image.name == "by_name.jpg"
    with pytest.raises(ValueError, match="image_name"):
        read_vqa(tmp_path / "q.json", None, tmp_path / "imgs", "{image}.jpg")


# --------------------------------------------------------------------------------------------------------------------
# Captions


def test_coco_captions_fixture():
    data = read_coco_captions(FIX / "coco" / "captions_val2014.json", FIX / "coco" / "val2014")
    assert [e.image_id for e in data] == [42, 73, 133]
    assert data[0] == CaptionExample(
        42,
        FIX / "coco" / "val2014" / "COCO_val2014_000000000042.jpg",
        [
            "A small brown dog sleeping on a gray couch.",
            "A dog curled up asleep on a sofa cushion.",
            "A puppy naps on the living room couch",  # trailing space stripped
            "Brown dog lying on a couch with a blanket.",
            "A sleepy dog resting on a sofa.",
        ],
    )
    assert all(len(e.references) == 5 for e in data)


def test_nocaps_fixture_keeps_domain():
    d = FIX / "nocaps"
    data = read_coco_captions(d / "nocaps_val_4500_captions.json", d / "validation")
    assert [(e.image_id, e.meta["domain"], e.meta["open_images_id"]) for e in data] == [
        (0, "in-domain", "0013ea2087020901"),
        (1, "near-domain", "00223f6f2e1b7a03"),
        (2, "out-domain", "0040c1b1b4cc0c8f"),
    ]
    assert data[1].references[0] == "A lobster sitting on a white plate." and len(data[1].references) == 4
    assert data[2].image == d / "validation" / "0040c1b1b4cc0c8f.jpg"


def test_coco_image_info_without_annotations_and_images_without_captions(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    (tmp_path / "info.json").write_text(json.dumps({"images": images}))
    assert [(e.image_id, e.references) for e in read_coco_captions(tmp_path / "info.json", tmp_path)] == [
        (1, []),
        (2, []),
    ]
    (tmp_path / "caps.json").write_text(
        json.dumps({"images": images, "annotations": [{"image_id": 2, "caption": "c"}]})
    )
    data = read_coco_captions(tmp_path / "caps.json", tmp_path)
    assert [(e.image_id, e.references) for e in data] == [(2, ["c"])]
    assert data.report.skipped == {"no_references": 1}


def test_karpathy_coco_and_flickr30k():
    coco = read_karpathy(FIX / "coco" / "dataset_coco.json", FIX / "coco", "test")
    assert [(e.image_id, e.image.name) for e in coco] == [
        (42, "COCO_val2014_000000000042.jpg"),
        (73, "COCO_val2014_000000000073.jpg"),
    ]
    assert coco[0].image == FIX / "coco" / "val2014" / "COCO_val2014_000000000042.jpg"  # via 'filepath'
    assert coco[0].references[2] == "A puppy naps on the living room couch"
    assert [e.image_id for e in read_karpathy(FIX / "coco" / "dataset_coco.json", FIX / "coco", ["val", "test"])] == [
        42,
        73,
        133,
    ]
    flickr = read_karpathy(FIX / "flickr30k" / "dataset_flickr30k.json", FIX / "flickr30k" / "flickr30k-images")
    assert [e.image_id for e in flickr] == [10002456, 1000268201]
    assert flickr[0].references[0] == "Several men in hard hats are operating a giant pulley system ."
    train = read_karpathy(FIX / "flickr30k" / "dataset_flickr30k.json", FIX / "flickr30k" / "flickr30k-images", "train")
    assert [e.image_id for e in train] == [1000092795]


def test_flickr30k_token_file():
    data = read_flickr30k_tokens(FIX / "flickr30k" / "results_20130124.token", FIX / "flickr30k" / "flickr30k-images")
    assert [e.image_id for e in data] == [1000092795, 10002456, 1000268201]
    assert (
        data[0].references[0] == "Two young guys with shaggy hair look at their hands while hanging out in the yard ."
    )
    assert all(len(e.references) == 5 for e in data)
    karpathy = read_karpathy(FIX / "flickr30k" / "dataset_flickr30k.json", FIX / "flickr30k" / "flickr30k-images")
    assert data[1].references == karpathy[0].references


# --------------------------------------------------------------------------------------------------------------------
# Classification


GLUE_CASES = [
    ("sst2", "sst2/dev.tsv", 4, 0, {"sentence": "it 's a charming and often affecting journey ."}, "1"),
    (
        "mnli",
        "mnli/dev_matched.tsv",
        3,
        1,
        {
            "premise": "This site includes a list of all award winners and a searchable database of Government "
            "Executive articles.",
            "hypothesis": "The Government Executive articles housed on the website are not able to be searched.",
        },
        "contradiction",
    ),
    (
        "rte",
        "rte/dev.tsv",
        3,
        1,
        {
            "premise": "Yet, we now are discovering that antibiotics are losing their effectiveness against illness. "
            "Disease-causing bacteria are mutating faster than we can come up with new antibiotics to fight "
            "the new variations.",
            "hypothesis": "Bacteria is winning the war against antibiotics.",
        },
        "entailment",
    ),
    (
        "qnli",
        "qnli/dev.tsv",
        3,
        0,
        {
            "question": "What came into force after the new constitution was herald?",
            "sentence": "As of that day, the new constitution heralding the Second Republic came into force.",
        },
        "entailment",
    ),
    (
        "mrpc",
        "mrpc/dev.tsv",
        3,
        0,
        {
            "sentence1": "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy .",
            "sentence2": '" The foodservice pie business does not fit our long-term growth strategy .',
        },
        "1",
    ),
    (
        "qqp",
        "qqp/dev.tsv",
        3,
        172974,
        {
            "question1": "Is there a reason why we should travel alone?",
            "question2": "What are some reasons to travel alone?",
        },
        "1",
    ),
    ("cola", "cola/dev.tsv", 3, 2, {"sentence": "The car honked down the road."}, "0"),
    (
        "wnli",
        "wnli/dev.tsv",
        2,
        1,
        {"premise": "Jane knocked on Susan's door but she did not answer.", "hypothesis": "Susan did not answer."},
        "1",
    ),
]


@pytest.mark.parametrize(("task", "file", "n", "example_id", "texts", "label"), GLUE_CASES)
def test_glue_fixtures(task, file, n, example_id, texts, label):
    data = read_glue(FIX / file, task)
    assert len(data) == n
    example = next(e for e in data if e.id == example_id)
    assert example.texts == texts and example.label == label and example.images == []
    assert tuple(example.texts) == TASKS[task].text_fields
    assert all(e.label in LABELS[task] for e in data)
    assert TASKS[task].reader(FIX / file).examples == data.examples


def test_glue_details():
    assert [e.label for e in read_glue(FIX / "sst2/dev.tsv", "sst2")] == ["1", "0", "1", "0"]
    assert [e.label for e in read_glue(FIX / "mnli/dev_matched.tsv", "mnli")] == [
        "neutral",
        "contradiction",
        "entailment",
    ]
    assert [e.id for e in read_glue(FIX / "mrpc/dev.tsv", "mrpc")] == [0, 1, 2]  # no id column: row number
    assert read_glue(FIX / "cola/dev.tsv", "cola")[0].meta == {"source": "gj04"}  # headerless CoLA
    test = read_glue(FIX / "sst2/test.tsv", "sst2", labeled=False)
    assert [(e.id, e.label) for e in test] == [(0, None), (1, None)]
    assert test[0].texts == {"sentence": "uneasy mishmash of styles and genres ."}


def test_snli_ve_fixture():
    d = FIX / "snli-ve"
    data = read_snli_ve(d / "snli_ve_dev.jsonl", d / "flickr30k_images")
    assert [(e.id, e.texts["hypothesis"], e.label) for e in data] == [
        ("1000092795.jpg#0r1e", "Two men are outdoors.", "entailment"),
        ("1000092795.jpg#0r1c", "Two men are sleeping in a dark bedroom.", "contradiction"),
        ("10002456.jpg#2r1n", "The workers are building a bridge.", "neutral"),
        ("10002456.jpg#2r1e", "People are wearing helmets.", "entailment"),
    ]
    assert data[2].images == [d / "flickr30k_images" / "10002456.jpg"]
    assert data[0].meta["sentence1"].startswith("Two young guys")


def test_nlvr2_dev_and_train_fixtures():
    d = FIX / "nlvr2" / "images"
    dev = read_nlvr2(FIX / "nlvr2" / "dev.json", d)
    assert [(e.id, e.label) for e in dev] == [("dev-850-0-0", "True"), ("dev-850-0-1", "False"), ("dev-12-3-0", "True")]
    assert dev[0].texts == {"sentence": "The left image contains exactly two dogs."}
    assert dev[1].images == [d / "dev" / "dev-850-0-img0.png", d / "dev" / "dev-850-0-img1.png"]
    assert [e.images for e in read_nlvr2(FIX / "nlvr2" / "dev.json", d / "dev")] == [e.images for e in dev]
    train = read_nlvr2(FIX / "nlvr2" / "train.json", d / "train")
    assert train[1].images == [
        d / "train" / "37" / "train-5417-2-img0.png",
        d / "train" / "37" / "train-5417-2-img1.png",
    ]


def test_nlvr2_searches_numbered_subdirectories(tmp_path):
    root = copy_fixture("nlvr2", tmp_path)
    rows = [json.loads(line) for line in (root / "train.json").read_text().splitlines()]
    for row in rows:
        del row["directory"]
    write_jsonl(root / "train.json", rows)
    data = read_nlvr2(root / "train.json", root / "images")
    assert data[0].images[0] == root / "images" / "train" / "0" / "train-10171-0-img0.png"
    assert data[1].images[1] == root / "images" / "train" / "37" / "train-5417-2-img1.png"


# --------------------------------------------------------------------------------------------------------------------
# Multiple choice


def test_hellaswag_fixture():
    data = read_hellaswag(FIX / "hellaswag" / "hellaswag_val.jsonl")
    assert [(e.id, e.label) for e in data] == [(24, 3), (92, 3), (4110, 0)]
    ctx = "Roof shingle removal: A man is sitting on a roof. He"
    assert data[0].options == [
        (ctx, " is using wrap to wrap a pair of skis."),
        (ctx, " is ripping level tiles off."),
        (ctx, " is holding a rubik's cube."),
        (ctx, " starts pulling up roofing on a roof."),
    ]
    # WikiHow artifacts: " [title]" becomes ". ", other brackets go, and ctx_b.capitalize() lower-cases "Do";
    # an ending that starts with "[title]" keeps the space left behind (exactly as lm-evaluation-harness does).
    ctx = "Home and Garden: How to clean a cast iron skillet. Rinse the skillet with hot water. do not"
    soap = " use soap, which strips the seasoning from the pan. Scrub off stuck food with a stiff brush."
    assert data[2].options[0] == (ctx, soap)
    assert data[2].options[3] == (ctx, "  Heat the oven to 500 degrees. Leave the skillet on the counter.")
    assert data[1].meta == {"split_type": "zeroshot", "source_id": "activitynet~v_-lJS58hyo1c"}
    assert hellaswag_preprocess(" a [title] b [step] c  ") == "a. b c"


def test_hellaswag_ctx_only_and_unlabeled(tmp_path):
    path = write_jsonl(tmp_path / "hs.jsonl", [{"ind": 1, "ctx": "A cat sits. it", "endings": ["purrs.", "barks."]}])
    data = read_hellaswag(path, labeled=False)
    assert data[0] == ChoiceExample(1, [("A cat sits. it", " purrs."), ("A cat sits. it", " barks.")], None)


def test_piqa_fixture():
    data = read_piqa(FIX / "piqa" / "valid.jsonl", FIX / "piqa" / "valid-labels.lst")
    assert [(e.id, e.label) for e in data] == [(0, 0), (1, 0), (2, 0)]
    assert data[1].options == [
        ("Question: To keep bread fresh longer,\nAnswer:", " store it in a sealed bag in the freezer."),
        ("Question: To keep bread fresh longer,\nAnswer:", " store it in an open bowl next to the stove."),
    ]
    assert [e.label for e in read_piqa(FIX / "piqa" / "valid.jsonl")] == [None] * 3


def test_copa_fixture():
    data = read_copa(FIX / "copa" / "val.jsonl")
    assert data[0] == ChoiceExample(
        0,
        [
            ("The man turned on the faucet therefore", " the toilet filled with water."),
            ("The man turned on the faucet therefore", " water flowed from the spout."),
        ],
        1,
    )
    assert data[2].options[0] == ("My body cast a shadow over the grass because", " the sun was rising.")
    assert [e.label for e in data] == [1, 1, 0]


def test_storycloze_fixture():
    data = read_storycloze(FIX / "storycloze" / "cloze_test_val__spring2016.csv")
    assert [e.label for e in data] == [0, 0, 1]
    story = (
        "Rick grew up in a troubled household. He never found good support in family, and turned to gangs. "
        "It wasn't long before Rick got shot in a robbery. The incident caused him to turn a new leaf."
    )
    assert data[0] == ChoiceExample(
        "138d5bfb-05cc-41e3-bf2c-fa85ebad14e2", [(story, " He is happy now."), (story, " He joined a gang.")], 0
    )


def test_winogrande_fixture():
    data = read_winogrande(FIX / "winogrande" / "dev.jsonl")
    assert [e.label for e in data] == [0, 1, 0]
    assert data[0] == ChoiceExample(
        "3QHITW7OYO7Q6B6ISU2UMJB84ZLAQE-2",
        [
            ("Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."),
            ("Sarah was a much better surgeon than Maria so Maria", " always got the harder cases."),
        ],
        0,
    )
    assert data[2].options[1] == (
        "The trophy doesn't fit into the brown suitcase because the suitcase",
        " is too large.",
    )


def test_arc_fixtures():
    easy = read_arc(FIX / "arc-easy" / "ARC-Easy-Dev.jsonl")
    assert [(e.id, e.label) for e in easy] == [
        ("MCAS_2000_4_6", 0),
        ("Mercury_7179953", 1),
        ("NYSEDREGENTS_2015_4_8", 3),
    ]
    q = "Question: Which object is the best conductor of electricity?\nAnswer:"
    assert easy[2].options == [
        (q, " a wax crayon"),
        (q, " a plastic spoon"),
        (q, " a rubber eraser"),
        (q, " an iron nail"),
    ]
    hard = read_arc(FIX / "arc-challenge" / "ARC-Challenge-Dev.jsonl")
    assert [(len(e.options), e.label) for e in hard] == [(4, 2), (3, 0), (5, 2)]


def test_boolq_both_formats():
    dev = read_boolq(FIX / "boolq" / "dev.jsonl")
    assert [(e.id, e.label, e.meta["title"]) for e in dev] == [
        (0, 0, "Ethanol fuel"),
        (1, 1, "Property tax"),
        (2, 1, "Sorbus aucuparia"),
    ]
    context = dev[1].options[0][0]
    assert context.startswith("Property tax or 'house tax' is a local tax")
    assert context.endswith("\nQuestion: is house tax and property tax are same?\nAnswer:")
    assert [c for _, c in dev[1].options] == [" no", " yes"]
    val = read_boolq(FIX / "boolq" / "val.jsonl")
    assert [(e.id, e.label) for e in val] == [(0, 1), (1, 0)]


# --------------------------------------------------------------------------------------------------------------------
# The bundled world and the registry


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "world", n_train=2, n_val=4, n_test=2, n_heldout=2, n_docs=1)


def test_world_readers(world):
    files = world_files(world, "val")
    questions = json.loads(files["vqa_questions"].read_text())["questions"]
    vqa = read_world_vqa(world, "val")
    assert [e.question_id for e in vqa] == [q["question_id"] for q in questions]
    images = coco_image_files(files["captions"])
    assert all(e.image == world / images[e.meta["image_id"]] and e.image.is_file() for e in vqa)
    assert all(len(e.answers) == 10 and e.answer_type in ("yes/no", "number", "other") for e in vqa)
    captions = read_world_captions(world, "val")
    assert [e.image_id for e in captions] == list(images) and all(e.references for e in captions)
    entail = read_world_entail(world, "val")
    assert len(entail) == 4 and {e.label for e in entail} <= set(LABELS["world-entail"])
    rows = [json.loads(line) for line in files["choice"].read_text().splitlines()]
    choice = read_world_choice(world, "val")
    assert [e.label for e in choice] == [r["label"] for r in rows]
    assert choice[0].options[0] == (f"Question: {rows[0]['question']}\nAnswer:", " " + rows[0]["choices"][0])
    assert read_choice_jsonl(files["choice"]).examples == choice.examples
    assert TASKS["world-vqa"].reader(world, "heldout").examples == read_world_vqa(world, "heldout").examples


def test_world_files_errors(tmp_path, world):
    with pytest.raises(FileNotFoundError, match="no world at"):
        world_files(tmp_path, "val")
    with pytest.raises(ValueError, match="no split 'dev'"):
        world_files(world, "dev")


def test_registry():
    names = {
        "vqav2",
        "okvqa",
        "coco",
        "flickr30k",
        "nocaps",
        "nlvr2",
        "snli-ve",
        "sst2",
        "mnli",
        "rte",
        "qnli",
        "mrpc",
        "qqp",
        "cola",
        "hellaswag",
        "piqa",
        "copa",
        "storycloze",
        "winogrande",
        "arc-easy",
        "arc-challenge",
        "boolq",
        "world-vqa",
        "world-captions",
        "world-entail",
        "world-choice",
    }
    assert names <= set(TASKS)
    for name, spec in TASKS.items():
        assert spec.name == name and spec.kind in ("vqa", "caption", "choice", "classification")
        if spec.kind == "classification":
            assert spec.labels == LABELS[name] and spec.text_fields and set(spec.label_words) == set(spec.labels)
    assert get_task("boolq").reader is read_boolq
    with pytest.raises(KeyError, match="unknown benchmark 'sst-2'.*sst2"):
        get_task("sst-2")


# --------------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_image_error_and_skip(tmp_path):
    d = copy_fixture("vqav2", tmp_path)
    (d / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    q, a = d / VQA_Q.name, d / VQA_A.name
    with pytest.raises(MissingImageError, match=r"question_id 73000 \(image_id 73\).*COCO_val2014_000000000073\.jpg"):
        read_vqa(q, a, d)
    data = read_vqa(q, a, d, on_error="skip")
    assert [e.question_id for e in data] == [42000, 42001, 133000, 133001]
    report = data.report.to_dict()
    assert report["examples"] == 4 and report["skipped"] == {"missing_image": 1}
    assert "COCO_val2014_000000000073.jpg" in report["skip_messages"][0]


@pytest.mark.parametrize("reader", ["coco", "snli-ve", "nlvr2", "flickr30k-tokens"])
def test_missing_image_other_readers(tmp_path, reader):
    if reader == "coco":
        d = copy_fixture("coco", tmp_path)
        (d / "val2014" / "COCO_val2014_000000000133.jpg").unlink()
        call, what = lambda **kw: read_coco_captions(d / "captions_val2014.json", d / "val2014", **kw), "image id 133"
    elif reader == "snli-ve":
        d = copy_fixture("snli-ve", tmp_path)
        (d / "flickr30k_images" / "10002456.jpg").unlink()
        call = lambda **kw: read_snli_ve(d / "snli_ve_dev.jsonl", d / "flickr30k_images", **kw)
        what = "pairID 10002456.jpg#2r1n"
    elif reader == "nlvr2":
        d = copy_fixture("nlvr2", tmp_path)
        (d / "images" / "dev" / "dev-12-3-img1.png").unlink()
        call, what = lambda **kw: read_nlvr2(d / "dev.json", d / "images", **kw), "identifier dev-12-3-0"
    else:
        d = copy_fixture("flickr30k", tmp_path)
        (d / "flickr30k-images" / "10002456.jpg").unlink()
        call = lambda **kw: read_flickr30k_tokens(d / "results_20130124.token", d / "flickr30k-images", **kw)
        what = "image 10002456.jpg"
    with pytest.raises(MissingImageError, match=what) as err:
        call()
    assert str(d) in str(err.value)
    data = call(on_error="skip")
    missing = 2 if reader == "snli-ve" else 1  # two hypotheses share the image
    assert data.report.skipped == {"missing_image": missing} and len(data) == data.report.examples > 0


def test_vqa_question_without_annotation(tmp_path):
    d = copy_fixture("vqav2", tmp_path)
    ann = json.loads((d / VQA_A.name).read_text())
    ann["annotations"] = [a for a in ann["annotations"] if a["question_id"] != 42001]
    (d / VQA_A.name).write_text(json.dumps(ann))
    with pytest.raises(TaskDataError, match=rf"question_id 42001 has no annotation in {d / VQA_A.name}") as err:
        read_vqa(d / VQA_Q.name, d / VQA_A.name, d)
    assert err.value.reason == "no_annotation"
    data = read_vqa(d / VQA_Q.name, d / VQA_A.name, d, on_error="skip")
    assert len(data) == 4 and data.report.skipped == {"no_annotation": 1}


def test_malformed_jsonl_line(tmp_path):
    rows = (FIX / "copa" / "val.jsonl").read_text().splitlines()
    path = write_jsonl(tmp_path / "val.jsonl", [rows[0], '{"premise": "The man', rows[2], "[1, 2]"])
    with pytest.raises(TaskDataError, match=rf"{path}:2: malformed line .*expected one JSON object per line"):
        read_copa(path)
    data = read_copa(path, on_error="skip")
    assert [e.id for e in data] == [0, 2]
    assert data.report.skipped == {"bad_json": 2} and f"{path}:4:" in data.report.messages[1]


@pytest.mark.parametrize(
    ("task", "call", "pattern"),
    [
        ("glue", lambda p: read_glue(p, "rte"), r"rte.tsv:3 \(id 1\): label 'entails' is not in the rte label set"),
        (
            "hellaswag",
            read_hellaswag,
            r"hs.jsonl:1 \(ind 7\): label 4 is not in the hellaswag label set \[0, 1, 2, 3\]",
        ),
        ("arc", read_arc, r"arc.jsonl:1 \(id Q1\): label 'E' is not in the arc label set \['A', 'B'\]"),
        ("nlvr2", lambda p: read_nlvr2(p, p.parent), r"nlvr2.jsonl:1 \(identifier dev-1-0-0\): label 'maybe'"),
        ("winogrande", read_winogrande, r"wg.jsonl:1 \(qID q\): label '3' is not in the winogrande label set \[1, 2\]"),
    ],
)
def test_label_not_in_label_set(tmp_path, task, call, pattern):
    if task == "glue":
        path = tmp_path / "rte.tsv"
        path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tentails\n")
    elif task == "hellaswag":
        path = write_jsonl(tmp_path / "hs.jsonl", [{"ind": 7, "ctx": "c", "endings": ["a", "b", "c", "d"], "label": 4}])
    elif task == "arc":
        q = {"stem": "s", "choices": [{"text": "x", "label": "A"}, {"text": "y", "label": "B"}]}
        path = write_jsonl(tmp_path / "arc.jsonl", [{"id": "Q1", "question": q, "answerKey": "E"}])
    elif task == "nlvr2":
        path = write_jsonl(tmp_path / "nlvr2.jsonl", [{"identifier": "dev-1-0-0", "sentence": "s", "label": "maybe"}])
    else:
        row = {"qID": "q", "sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "3"}
        path = write_jsonl(tmp_path / "wg.jsonl", [row])
    with pytest.raises(TaskDataError, match=pattern) as err:
        call(path)
    assert err.value.reason == "bad_label"


def test_bad_label_skip_is_counted(tmp_path):
    path = tmp_path / "sst.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nodd\tpositive\nbad\t0\n")
    data = read_glue(path, "sst2", on_error="skip")
    assert [e.texts["sentence"] for e in data] == ["good", "bad"] and data.report.skipped == {"bad_label": 1}
    assert "label 'positive' is not in the sst2 label set ['0', '1']" in data.report.messages[0]


def test_missing_column_or_field(tmp_path):
    tsv = tmp_path / "dev_matched.tsv"
    tsv.write_text("index\tsentence1\tgold_label\n0\ta\tneutral\n")
    with pytest.raises(TaskDataError, match=rf"{tsv}: missing column 'sentence2' for mnli"):
        read_glue(tsv, "mnli")
    sst = tmp_path / "test.tsv"
    sst.write_text("index\tsentence\n0\tfine\n")
    with pytest.raises(TaskDataError, match="missing column 'label' for sst2 \\(pass labeled=False"):
        read_glue(sst, "sst2")
    hs = write_jsonl(tmp_path / "hs.jsonl", [{"ind": 3, "ctx": "c", "label": 0}])
    with pytest.raises(TaskDataError, match=rf"{hs}:1 \(ind 3\): missing field 'endings'") as err:
        read_hellaswag(hs)
    assert err.value.reason == "missing_field"
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "question": []}))
    with pytest.raises(TaskDataError, match=rf"{q}: missing top-level field 'questions'"):
        read_vqa(q, None, tmp_path)
    q.write_text(json.dumps({"questions": [{"image_id": 1, "question": "q?", "question_id": 1}]}))
    with pytest.raises(TaskDataError, match="missing top-level field 'data_subtype'"):
        read_vqa(q, None, tmp_path)
    csv_file = tmp_path / "story.csv"
    csv_file.write_text("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4\n")
    with pytest.raises(TaskDataError, match=rf"{csv_file}: missing column 'RandomFifthSentenceQuiz1'"):
        read_storycloze(csv_file)
    snli = write_jsonl(tmp_path / "ve.jsonl", [{"pairID": "p1", "sentence2": "h", "gold_label": "neutral"}])
    with pytest.raises(TaskDataError, match=rf"{snli}:1: missing field 'Flickr30K_ID'"):
        read_snli_ve(snli, tmp_path)
    boolq = write_jsonl(tmp_path / "boolq.jsonl", [{"question": "q", "passage": "p", "answer": "yes"}])
    with pytest.raises(TaskDataError, match=r"field 'answer' is 'yes'; expected true or false"):
        read_boolq(boolq)


def test_other_malformed_input(tmp_path):
    tsv = tmp_path / "rte.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n1\tc\td\tentailment\n")
    with pytest.raises(TaskDataError, match=rf"{tsv}:2: 3 cells, expected 4 tab-separated cells"):
        read_glue(tsv, "rte")
    assert read_glue(tsv, "rte", on_error="skip").report.skipped == {"malformed_row": 1}
    labels = tmp_path / "valid-labels.lst"
    labels.write_text("0\n1\n")
    with pytest.raises(TaskDataError, match=r"valid-labels.lst: 2 labels for 3 records"):
        read_piqa(FIX / "piqa" / "valid.jsonl", labels)
    token = tmp_path / "results.token"
    token.write_text("1000092795.jpg#0\tTwo guys .\nno tab here\n")
    with pytest.raises(TaskDataError, match=rf"{token}:2: malformed line 'no tab here'"):
        read_flickr30k_tokens(token, FIX / "flickr30k" / "flickr30k-images")
    wg = write_jsonl(
        tmp_path / "wg.jsonl", [{"qID": "q", "sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}]
    )
    with pytest.raises(TaskDataError, match="has no '_' blank"):
        read_winogrande(wg)
    broken = tmp_path / "captions.json"
    broken.write_text('{"images": [')
    with pytest.raises(TaskDataError, match=rf"{broken}: not valid JSON at line 1"):
        read_coco_captions(broken, tmp_path)
    with pytest.raises(FileNotFoundError, match="COCO captions json not found"):
        read_coco_captions(tmp_path / "nope.json", tmp_path)
    with pytest.raises(IsADirectoryError, match=f"sst2 tsv expected, but {tmp_path} is a directory"):
        read_glue(tmp_path, "sst2")
    with pytest.raises(ValueError, match="unknown GLUE task 'sst-2'"):
        read_glue(tsv, "sst-2")
    with pytest.raises(ValueError, match="on_error must be 'error' or 'skip'"):
        read_glue(tsv, "rte", on_error="ignore")


def test_example_types_default_lists_are_independent():
    a, b = ChoiceExample(1, [("c", " x")], 0), ClassificationExample(2, {"sentence": "s"}, "1")
    a.images.append(Path("x.png"))
    assert b.images == [] and ChoiceExample(3, [], None).images == []


# --------------------------------------------------------------------------------------------------------------------
# whole files that would give silently odd results: empty, header only, not UTF-8, repeated ids

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
STORY = FIX / "storycloze" / "cloze_test_val__spring2016.csv"


def test_empty_and_header_only_files_are_named(tmp_path):
    empty_jsonl = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(TaskDataError, match=r"empty.jsonl: no examples; expected a COPA jsonl"):
        read_copa(empty_jsonl)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(TaskDataError, match=r"empty.tsv: empty; expected a rte tsv"):
        read_glue(tmp_path / "empty.tsv", "rte")
    (tmp_path / "header.tsv").write_text(RTE_HEADER + "\n")
    with pytest.raises(TaskDataError, match=r"header.tsv: only a header row .*; expected rte examples below it"):
        read_glue(tmp_path / "header.tsv", "rte")
    (tmp_path / "header.csv").write_text(STORY.read_text(encoding="utf-8").splitlines()[0] + "\n")
    with pytest.raises(TaskDataError, match=r"header.csv: only a header row .*; expected StoryCloze stories"):
        read_storycloze(tmp_path / "header.csv")
    q = json.loads(VQA_Q.read_text())
    (tmp_path / "q.json").write_text(json.dumps({**q, "questions": []}))
    with pytest.raises(TaskDataError, match=r"q.json: no examples; expected a VQA questions json with at least one"):
        read_vqa(tmp_path / "q.json", VQA_A, VQA)
    with pytest.raises(TaskDataError, match=r"no examples; expected a Karpathy split json with images of split nope"):
        read_karpathy(FIX / "coco" / "dataset_coco.json", FIX / "coco", "nope")


def test_a_file_whose_every_example_is_skipped_is_an_error(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{", "not json"])
    with pytest.raises(TaskDataError, match=r"bad.jsonl: every example was skipped \(bad_json 2\)"):
        read_copa(bad, on_error="skip")


def test_files_that_are_not_utf8_are_named(tmp_path):
    latin1 = "Caf\xe9 au lait.".encode("latin-1")
    (tmp_path / "dev.tsv").write_bytes(RTE_HEADER.encode() + b"0\t" + latin1 + b"\tA drink.\tentailment\n")
    (tmp_path / "story.csv").write_bytes(STORY.read_bytes().replace(b"Rick grew", latin1))
    lines = (FIX / "copa" / "val.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "val.jsonl").write_bytes(lines[0] + lines[1].replace(b"The", latin1, 1))
    tokens = FIX / "flickr30k" / "results_20130124.token"
    (tmp_path / "r.token").write_bytes(tokens.read_bytes() + b"9.jpg#0\t" + latin1 + b"\n")
    (tmp_path / "labels.lst").write_bytes(b"0\n\xff\n")
    for on_error in ("error", "skip"):
        with pytest.raises(TaskDataError, match=r"dev.tsv: not UTF-8 \(.*\); expected a rte tsv in UTF-8"):
            read_glue(tmp_path / "dev.tsv", "rte", on_error=on_error)
        with pytest.raises(TaskDataError, match=r"story.csv: not UTF-8 \(.*\); expected a StoryCloze csv in UTF-8"):
            read_storycloze(tmp_path / "story.csv", on_error=on_error)
        with pytest.raises(TaskDataError, match=r"val.jsonl:2: not UTF-8 \(.*\); expected a COPA jsonl in UTF-8"):
            read_copa(tmp_path / "val.jsonl", on_error=on_error)
        with pytest.raises(TaskDataError, match=r"r.token: not UTF-8 \(.*\); expected a Flickr30k token file in"):
            read_flickr30k_tokens(tmp_path / "r.token", FIX / "flickr30k" / "flickr30k-images", on_error=on_error)
    with pytest.raises(TaskDataError, match=r"labels.lst: not UTF-8 \(.*\); expected a PIQA labels file"):
        read_piqa(FIX / "piqa" / "valid.jsonl", tmp_path / "labels.lst")


def test_repeated_ids_are_named_or_skipped_and_counted(tmp_path):
    q = json.loads(VQA_Q.read_text())
    (tmp_path / "q.json").write_text(json.dumps({**q, "questions": q["questions"] + q["questions"][:1]}))
    with pytest.raises(TaskDataError, match=r"q.json: question_id 42000 appears twice; expected every example's"):
        read_vqa(tmp_path / "q.json", VQA_A, VQA)
    data = read_vqa(tmp_path / "q.json", VQA_A, VQA, on_error="skip")
    assert len(data) == 5 and data.report.skipped == {"duplicate_id": 1}
    a = json.loads(VQA_A.read_text())
    (tmp_path / "a.json").write_text(json.dumps({**a, "annotations": a["annotations"] + a["annotations"][-1:]}))
    with pytest.raises(TaskDataError, match=r"a.json: annotations\[5\]: question_id 133001 is annotated twice"):
        read_vqa(VQA_Q, tmp_path / "a.json", VQA)
    rows = (FIX / "rte" / "dev.tsv").read_text().splitlines()
    (tmp_path / "dev.tsv").write_text("\n".join(rows + rows[1:2]) + "\n")
    with pytest.raises(TaskDataError, match=r"dev.tsv: id 0 appears twice"):
        read_glue(tmp_path / "dev.tsv", "rte")
    copa = (FIX / "copa" / "val.jsonl").read_text().splitlines()
    data = read_copa(write_jsonl(tmp_path / "val.jsonl", copa + copa[:1]), on_error="skip")
    assert len(data) == len(copa) and data.report.skipped == {"duplicate_id": 1}
