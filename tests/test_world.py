"""The bundled world: deterministic, atomic, in its public formats, held-out pairs kept out, images as described."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import world
from data.world import (
    ALL_PAIRS,
    COLORS,
    HELDOUT_PAIRS,
    NUMBERS,
    SEEN_PAIRS,
    SHAPES,
    SLOTS,
    SPLITS,
    Scene,
    Thing,
    generate_world,
    mentions,
)

SMALL = dict(n_train=40, n_val=10, n_test=10, n_heldout=12, n_docs=16)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "world", seed=3, **SMALL)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_texts(root: Path, split: str) -> tuple[list[str], list[str]]:
    """(every piece of text a split carries, its short question + answer strings, each about at most one thing)."""
    texts = [a["caption"] for a in json.loads((root / f"captions_{split}.json").read_text())["annotations"]]
    qs = json.loads((root / "vqa" / f"{split}_questions.json").read_text())["questions"]
    anns = json.loads((root / "vqa" / f"{split}_annotations.json").read_text())["annotations"]
    short = [f"{q['question']} {a['multiple_choice_answer']}" for q, a in zip(qs, anns, strict=True)]
    tasks = load_jsonl(root / f"instructions_{split}.jsonl")
    short += [f"{t['input']} {t['output']}" for t in tasks if t["task"] in ("vqa", "yesno")]
    texts += [f"{t['instruction']} {t['input']} {t['output']}" for t in tasks]
    texts += [r["text"] for r in load_jsonl(root / "text" / f"corpus_{split}.jsonl")]
    texts += [
        f"{r['question']} {r['choices'][r['label']]}" for r in load_jsonl(root / "text" / f"choice_{split}.jsonl")
    ]
    texts += (root / "text" / f"entail_{split}.tsv").read_text().splitlines()
    return texts + short, short


def test_deterministic(small, tmp_path):
    again = generate_world(tmp_path / "again", seed=3, **SMALL)
    assert files(again) == files(small)
    other = files(generate_world(tmp_path / "other", seed=4, **SMALL))
    assert other.keys() == files(small).keys()
    assert other["captions_train.json"] != files(small)["captions_train.json"]
    assert other["images/train/000000.png"] != files(small)["images/train/000000.png"]


def test_heldout_pairs_only_in_heldout_split(small):
    meta = json.loads((small / "meta.json").read_text())
    assert [tuple(p) for p in meta["heldout_pairs"]] == list(HELDOUT_PAIRS)
    for split in ("train", "val", "test"):
        for row in load_jsonl(small / f"scenes_{split}.jsonl"):
            assert not {(c, s) for c, s, _ in row["things"]} & set(HELDOUT_PAIRS)
        texts, short = split_texts(small, split)
        for color, shape in HELDOUT_PAIRS:
            assert not [t for t in texts if mentions(t, color, shape)], split
            # a question with its answer names at most one thing, so never both halves of a held-out pair
            assert not [t for t in short if re.search(rf"\b{color}\b", t) and re.search(rf"\b{shape}s?\b", t)]
        for row in load_jsonl(small / "text" / f"choice_{split}.jsonl"):
            shape = re.match(r"Which color is the (\w+) in", row["question"])
            assert not shape or not {(c, shape[1]) for c in row["choices"]} & set(HELDOUT_PAIRS)
    scenes = load_jsonl(small / "scenes_heldout.jsonl")
    assert len(scenes) == SMALL["n_heldout"]
    assert all({(c, s) for c, s, _ in r["things"]} & set(HELDOUT_PAIRS) for r in scenes)
    captions = json.loads((small / "captions_heldout.json").read_text())["annotations"]
    assert all(any(mentions(a["caption"], c, s) for c, s in HELDOUT_PAIRS) for a in captions)


def test_public_formats(small):
    meta = json.loads((small / "meta.json").read_text())
    assert meta["version"] == world.VERSION and meta["params"]["seed"] == 3 and meta["image_size"] == 32
    assert set(meta["splits"]) == set(SPLITS)
    for split, n in zip(SPLITS, (40, 10, 10, 12), strict=True):
        listed = meta["splits"][split]
        assert len(listed["images"]) == n
        assert all((small / f).is_file() for k, f in listed.items() if k != "images")
        coco = json.loads((small / f"captions_{split}.json").read_text())
        assert [im["file_name"] for im in coco["images"]] == listed["images"]
        ids = {im["id"] for im in coco["images"]}
        for im in coco["images"]:
            assert set(im) == {"id", "file_name", "width", "height"} and (im["width"], im["height"]) == (32, 32)
            with Image.open(small / im["file_name"]) as img:
                assert img.mode == "RGB" and img.size == (32, 32)
        per_image = Counter(a["image_id"] for a in coco["annotations"])
        assert set(per_image) == ids and set(per_image.values()) <= {1, 2}
        assert all(a["caption"].endswith(".") for a in coco["annotations"])

        qs = json.loads((small / "vqa" / f"{split}_questions.json").read_text())["questions"]
        anns = json.loads((small / "vqa" / f"{split}_annotations.json").read_text())["annotations"]
        assert [q["question_id"] for q in qs] == [a["question_id"] for a in anns]
        assert len({q["question_id"] for q in qs}) == len(qs) and {q["image_id"] for q in qs} <= ids
        for a in anns:
            assert {
                "question_id",
                "image_id",
                "question_type",
                "answer_type",
                "multiple_choice_answer",
                "answers",
            } <= set(a)
            assert len(a["answers"]) == 10 and a["answer_type"] in {"yes/no", "number", "other"}
            assert all(set(x) == {"answer", "answer_confidence", "answer_id"} for x in a["answers"])
            assert Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0] == a["multiple_choice_answer"]

        with (small / "text" / f"entail_{split}.tsv").open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert list(rows[0]) == ["index", "sentence1", "sentence2", "label"] and len(rows) == n
        assert {r["label"] for r in rows} <= {"entailment", "not_entailment"}
        for r in load_jsonl(small / "text" / f"choice_{split}.jsonl"):
            assert len(r["choices"]) == 4 == len(set(r["choices"])) and 0 <= r["label"] < 4
        docs = load_jsonl(small / "text" / f"corpus_{split}.jsonl")
        assert docs and all(len(d["text"].split()) >= 100 and "\n\n" in d["text"] for d in docs)
        tasks = load_jsonl(small / f"instructions_{split}.jsonl")
        assert all({"task", "instruction", "image", "input", "output"} <= set(t) and t["output"] for t in tasks)
        assert all(set(t) <= {"task", "instruction", "image", "input", "output", "options"} for t in tasks)
        assert all(t["output"] in t.get("options", [t["output"]]) and len(t.get("options", "xx")) > 1 for t in tasks)
        assert all(t["image"] is None or (small / t["image"]).is_file() for t in tasks)
    assert len(load_jsonl(small / "text" / "corpus_train.jsonl")) == SMALL["n_docs"]
    tasks = {t["task"] for s in SPLITS for t in load_jsonl(small / f"instructions_{s}.jsonl")}
    assert len(tasks) >= 6


def classify(mask: np.ndarray) -> str:
    """Shape of a filled mask: a square fills its box; a triangle is much wider at the bottom than at the top."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if box.mean() > 0.95:
        return "square"
    third = box.shape[0] // 3
    return "triangle" if box[-third:].sum() > 2 * box[:third].sum() else "circle"


def check_image(image: Image.Image, things: list, size: int) -> None:
    """Each slot shows exactly the described thing (its color's pixels, its shape), empty slots only background."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    by_slot = {t[2]: t for t in things}
    for i, slot in enumerate(SLOTS):
        region = pixels[:, round(i * size / 3) : round((i + 1) * size / 3)]
        grey = region.max(-1) - region.min(-1) < 12
        if slot not in by_slot:
            assert grey.all(), slot
            continue
        color, shape, _ = by_slot[slot]
        distance = np.stack([np.abs(region - np.array(rgb)).sum(-1) for rgb in COLORS.values()])
        nearest = Counter(list(COLORS)[i] for i in distance.argmin(0)[~grey])
        assert nearest.most_common(1)[0][0] == color, (slot, nearest)
        assert classify(distance[list(COLORS).index(color)] < 60) == shape, slot


def test_images_show_what_the_scenes_say(small):
    for split in SPLITS:
        for row in load_jsonl(small / f"scenes_{split}.jsonl"):
            with Image.open(small / row["file_name"]) as img:
                check_image(img, row["things"], 32)


def test_render_any_scene_any_size():
    rng = random.Random(0)
    for size in (32, 48):
        for _ in range(150):
            scene = world.sample_scene(rng, ALL_PAIRS)
            check_image(world.render(scene, size, rng), list(scene.things), size)
    assert (
        world.render(Scene((Thing("red", "circle", "left"),))).tobytes()
        == world.render(Scene((Thing("red", "circle", "left"),))).tobytes()
    )


def test_scene_and_captions():
    scene = Scene((("blue", "square", "right"), ("red", "circle", "left")))
    assert [t.slot for t in scene.things] == ["left", "right"]
    assert world.caption(scene) == "a red circle on the left and a blue square on the right."
    assert world.caption(Scene((("orange", "triangle", "middle"),))) == "an orange triangle in the middle."
    with pytest.raises(ValueError, match="distinct slots"):
        Scene((("red", "circle", "left"), ("blue", "square", "left")))
    rng = random.Random(0)
    for _ in range(50):
        scene = world.sample_scene(rng)
        assert scene.pairs() <= set(SEEN_PAIRS)
        assert world.sample_scene(rng, ALL_PAIRS, HELDOUT_PAIRS).pairs() & set(HELDOUT_PAIRS)
        for text in world.captions(scene, rng, 2):
            assert all(t.color in text and t.shape in text and t.slot in text for t in scene.things)


def answer(scene: Scene, question: str) -> str:
    """An independent reading of each VQA question form."""
    where = {v: k for k, v in world.WHERE.items()}
    number = lambda n: NUMBERS[n]
    if m := re.fullmatch(r"what color is the shape (.+)\?", question):
        return scene.at(where[m[1]]).color
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (t,) = [t for t in scene.things if t.shape == m[1]]
        return t.color
    if m := re.fullmatch(r"what shape is (.+)\?", question):
        return scene.at(where[m[1]]).shape
    if m := re.fullmatch(r"which shape is (\w+)\?", question):
        (t,) = [t for t in scene.things if t.color == m[1]]
        return t.shape
    if question == "how many shapes are there?":
        return number(len(scene.things))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return number(sum(t.shape == m[1] for t in scene.things))
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        (t,) = [t for t in scene.things if (t.color, t.shape) == (m[1], m[2])]
        return t.slot
    if m := re.fullmatch(r"is there a shape (.+)\?", question):
        return "yes" if scene.at(where[m[1]]) else "no"
    m = re.fullmatch(r"is there an? (\w+) (\w+)\?", question)
    return "yes" if any((t.color, t.shape) == (m[1], m[2]) for t in scene.things) else "no"


def claim_holds(scene: Scene, claim: str) -> bool:
    """An independent reading of each entailment claim form."""
    where = {v: k for k, v in world.WHERE.items()}
    if m := re.fullmatch(r"There is an? (\w+) (\w+)\.", claim):
        return any((t.color, t.shape) == (m[1], m[2]) for t in scene.things)
    if m := re.fullmatch(r"The shape (.+) is (\w+)\.", claim):
        return scene.at(where[m[1]]).color == m[2]
    if m := re.fullmatch(r"The (\w+) (\w+) is (.+)\.", claim):
        return any(t == (m[1], m[2], where[m[3]]) for t in scene.things)
    if m := re.fullmatch(r"Nothing is (.+)\.", claim):
        return scene.at(where[m[1]]) is None
    if claim == "There is one shape.":
        return len(scene.things) == 1
    m = re.fullmatch(r"There are (\w+) shapes\.", claim)
    return NUMBERS.index(m[1]) == len(scene.things)


def test_questions_and_claims_are_right():
    rng = random.Random(1)
    kinds, labels = Counter(), Counter()
    for _ in range(300):
        scene = world.sample_scene(rng, ALL_PAIRS)
        for qa in world.questions(scene, rng, SEEN_PAIRS, k=5):
            kinds[qa.kind] += 1
            assert answer(scene, qa.question) == qa.answer, (scene, qa)
        true = rng.random() < 0.5
        labels[true] += 1
        assert claim_holds(scene, world.claim(scene, rng, SEEN_PAIRS, true)) == true
        example = world.choice_example(scene, rng, SEEN_PAIRS)
        if example["question"].startswith("How many"):
            assert example["choices"][example["label"]] == NUMBERS[len(scene.things)]
    assert set(kinds) == {"color", "shape", "count", "position", "yesno"} and min(labels.values()) > 100


def test_vqa_answers_have_a_little_noise():
    rng = random.Random(0)
    answers = [[a["answer"] for a in world.vqa_answers("two", rng)] for _ in range(50)]
    assert all(Counter(a).most_common(1)[0] == ("two", Counter(a)["two"]) and a.count("two") >= 8 for a in answers)
    assert any("2" in a for a in answers)
    assert all(a["answer"] == "red" for a in world.vqa_answers("red", rng))


def test_idempotent_and_replaced_when_parameters_change(small, tmp_path):
    out = generate_world(tmp_path / "w", **SMALL)
    stamp = (out / "meta.json").stat().st_mtime_ns
    (out / "derived").mkdir()
    assert generate_world(out, **SMALL) == out and (out / "meta.json").stat().st_mtime_ns == stamp
    assert (out / "derived").is_dir()
    generate_world(out, **{**SMALL, "n_train": 20})
    assert json.loads((out / "meta.json").read_text())["params"]["n_train"] == 20
    assert not (out / "derived").exists() and len(list((out / "images" / "train").iterdir())) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_crash_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = world.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(world, "render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_world(tmp_path / "w", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated world"):
        generate_world(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        world.main(["--help"])
    assert exit_.value.code == 0 and "--n_train" in capsys.readouterr().out
    out = world.main(
        [
            "--out",
            str(tmp_path / "w"),
            "--seed",
            "1",
            "--n_train",
            "5",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--n-heldout",
            "2",
            "--n-docs",
            "2",
        ]
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sizes"] == {"train": 5, "val": 2, "test": 2, "heldout": 2} and meta["params"]["seed"] == 1
    assert set(meta["colors"]) == set(COLORS) and meta["shapes"] == list(SHAPES)


def version1_digest(root: Path) -> str:
    """A digest of everything world version 1 wrote: pixels, JSON without its ``info`` header, text files, and the
    first rows of each instruction file (the version 1 instructions, without the options version 2 gave them;
    later versions append their own rows)."""
    h = hashlib.sha256()
    sizes = json.loads((root / "meta.json").read_text())["sizes"]
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == "meta.json":
            continue
        if p.suffix == ".png":
            data = np.asarray(Image.open(p).convert("RGB")).tobytes()
        elif p.suffix == ".json":
            data = json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "info"}, sort_keys=True)
            data = data.encode()
        elif rel.startswith("instructions_"):  # version 2 also added each closed-set task's options
            n = sizes[rel.removeprefix("instructions_").removesuffix(".jsonl")]
            rows = [json.loads(line) for line in p.read_text().splitlines()[: n + max(1, n // 2)]]
            data = "".join(
                json.dumps({k: v for k, v in r.items() if k != "options"}, separators=(",", ":")) + "\n" for r in rows
            ).encode()
        else:
            data = p.read_bytes()
        h.update(rel.encode() + b"\0" + data)
    return h.hexdigest()


def test_later_versions_keep_every_file_version_1_wrote(small):
    # computed with world version 1 (commit 9ec5d03): a change that moves any random stream of the version 1 files
    # changes the corpus, tokenizer and checkpoints trained on the world, and the numbers in the README
    assert version1_digest(small) == "f265b9fc54c2af0d179b8af99560535c641631d83191d52fa65bd7135a87b8c4"
    rows = load_jsonl(small / "instructions_train.jsonl")
    v1 = SMALL["n_train"] + SMALL["n_train"] // 2
    assert {r["task"] for r in rows[:v1]} <= set(world.IMAGE_TASKS + world.TEXT_TASKS)
    assert {r["task"] for r in rows[v1:]} == set(world.MORE_IMAGE_TASKS + world.MORE_TEXT_TASKS)


def test_an_older_world_is_brought_up_to_date_with_its_own_parameters(small, tmp_path):
    out = generate_world(tmp_path / "w", seed=3, **SMALL)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": world.VERSION - 1}))
    (out / "instructions_val.jsonl").write_text("")
    assert world.current_world(out) == out
    assert json.loads((out / "meta.json").read_text()) == meta
    assert files(out) == files(small)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert world.current_world(out) == out and (out / "meta.json").stat().st_mtime_ns == stamp  # current: untouched


def scene_of_caption(text: str) -> Scene:
    """An independent reading of every caption template."""
    text = re.sub(r"^(a picture of |\w+ shapes?: )", "", text)
    found = re.findall(r"an? (\w+) (\w+) (?:on|in) the (\w+)", text)
    found += [(c, s, w) for w, c, s in re.findall(r"(?:on|in) the (\w+) there is an? (\w+) (\w+)", text)]
    return Scene(tuple(Thing(*t) for t in found))


def parse_thing(text: str) -> tuple[str, str]:
    color, shape = text.split()
    assert color in COLORS and shape in SHAPES, text
    return color, shape


def test_more_instruction_tasks_are_right():
    rng = random.Random(5)
    seen = Counter()
    for i in range(400):
        scene = world.sample_scene(rng, SEEN_PAIRS)
        ex = world.more_image_instruction(scene, f"{i}.png", rng, SEEN_PAIRS)
        seen[ex["task"]] += 1
        assert ex["image"] == f"{i}.png" and ex["instruction"] in world.INSTRUCTIONS[ex["task"]]
        if ex["task"] == "shapes":
            assert ex["output"].split(", ") == [t.shape for t in scene.things]
        elif ex["task"] == "slot":
            found = scene.at(ex["input"].removeprefix("place: "))
            assert ex["output"] == (f"{found.color} {found.shape}" if found else "nothing")
        elif ex["task"] == "locate":
            color, shape = parse_thing(ex["input"].removeprefix("shape: "))
            (t,) = scene.find(color, shape)
            assert ex["output"] == t.slot and ex["options"] == list(SLOTS)
        elif ex["task"] == "check":
            m = re.fullmatch(r"is the shape (on the left|in the middle|on the right) (?:a )?(\w+)\?", ex["input"])
            t = scene.at({v: k for k, v in world.WHERE.items()}[m[1]])
            assert ex["output"] == ("yes" if m[2] in (t.color, t.shape) else "no") and ex["options"] == ["yes", "no"]
            named = (m[2], t.shape) if m[2] in COLORS else (t.color, m[2])
            assert named in SEEN_PAIRS  # a "no" never hints at a held-out pair
        else:
            assert ex["input"] == ""
            options = [parse_thing(o) for o in ex["options"]]
            assert len(set(options)) == 3 and set(options) <= set(SEEN_PAIRS)
            assert [o in scene.pairs() for o in options].count(True) == 1
            assert parse_thing(ex["output"]) in scene.pairs()
    for _ in range(400):
        ex = world.more_text_instruction(rng, lambda: world.sample_scene(rng, SEEN_PAIRS), SEEN_PAIRS)
        seen[ex["task"]] += 1
        assert ex["image"] is None and ex["instruction"] in world.INSTRUCTIONS[ex["task"]]
        if ex["task"] == "mention":
            assert ex["output"].split(", ") == [t.color for t in scene_of_caption(ex["input"]).things]
            continue
        described, rest = re.fullmatch(r"scene: (.+\.) (change: .+|question: .+)", ex["input"]).groups()
        scene = scene_of_caption(described)
        if ex["task"] == "change":
            after = {t.slot: t for t in scene.things}
            if m := re.fullmatch(r"change: add an? (\w+) (\w+) (?:on|in) the (\w+)", rest):
                assert m[3] not in after
                after[m[3]] = Thing(m[1], m[2], m[3])
            else:
                del after[re.fullmatch(r"change: take away the shape (?:on|in) the (\w+)", rest)[1]]
            assert ex["output"] == world._phrase(Scene(tuple(after.values())))
        else:
            side, color, shape = re.fullmatch(
                r"question: what is just to the (left|right) of the (\w+) (\w+)\?", rest
            ).groups()
            (i,) = [i for i, t in enumerate(scene.things) if (t.color, t.shape) == (color, shape)]  # one such
            j = i - 1 if side == "left" else i + 1
            near = scene.things[j] if 0 <= j < len(scene.things) else None
            assert ex["output"] == (f"{near.color} {near.shape}" if near else "nothing")
    assert set(seen) == set(world.MORE_IMAGE_TASKS + world.MORE_TEXT_TASKS) and min(seen.values()) > 60


def test_closed_set_tasks_list_their_options(small):
    rows = [r for s in SPLITS for r in load_jsonl(small / f"instructions_{s}.jsonl")]
    closed = {"vqa", "count", "yesno", "truth", "compare", "locate", "choose", "check"}
    assert {r["task"] for r in rows if "options" in r} == closed
    assert not [r for r in rows if (r["task"] in closed) != ("options" in r)]
    for r in rows:
        if r["task"] in ("yesno", "truth", "check"):
            assert r["options"] == ["yes", "no"]
        elif r["task"] == "count":
            assert r["options"] == ["one", "two", "three"]
        elif r["task"] == "vqa":
            assert r["options"] in (list(COLORS), list(SHAPES), list(SLOTS))
