"""The bundled world: seeded images of coloured shapes with captions, VQA, text tasks, instructions and a corpus.

Everything is written in public formats (PNG, COCO captions, VQAv2, GLUE tsv, jsonl) so the loaders for real data
serve it too. A few (color, shape) pairs never appear outside the ``heldout`` split, for zero-shot tests. The
instructions come in task clusters (``IMAGE_TASKS``, ``TEXT_TASKS``, ``MORE_IMAGE_TASKS``, ``MORE_TEXT_TASKS``),
so that some can be held out of instruction tuning; closed-set tasks list their ``options``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

VERSION = 2
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 205, 20),
    "purple": (135, 50, 175),
    "orange": (245, 125, 20),
}
SHAPES = ("circle", "square", "triangle")
SLOTS = ("left", "middle", "right")
SPLITS = ("train", "val", "test", "heldout")
HELDOUT_PAIRS = (("blue", "triangle"), ("yellow", "circle"), ("purple", "square"))
ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
NUMBERS = ("zero", "one", "two", "three", "four")
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
SYNONYMS = {"two": "2", "three": "3", "one": "1", "zero": "0", "purple": "violet", "middle": "center"}
SUPERSAMPLE = 4

log = logging.getLogger("metalm.world")


class Thing(NamedTuple):
    color: str
    shape: str
    slot: str


@dataclass(frozen=True)
class Scene:
    """One to three things, each in its own slot, kept left to right."""

    things: tuple[Thing, ...]

    def __post_init__(self):
        things = [Thing._make(t) for t in self.things]
        slots = [t.slot for t in things]
        if not things or len(set(slots)) != len(slots) or any(s not in SLOTS for s in slots):
            raise ValueError(f"a scene needs 1-3 things in distinct slots of {SLOTS}, got {self.things}")
        unknown = [t for t in things if t.color not in COLORS or t.shape not in SHAPES]
        if unknown:
            raise ValueError(f"unknown color or shape in {unknown}: colors are {list(COLORS)}, shapes {SHAPES}")
        object.__setattr__(self, "things", tuple(sorted(things, key=_slot_index)))

    def find(self, color: str | None = None, shape: str | None = None) -> list[Thing]:
        return [t for t in self.things if color in (None, t.color) and shape in (None, t.shape)]

    def at(self, slot: str) -> Thing | None:
        return next((t for t in self.things if t.slot == slot), None)

    def pairs(self) -> set[tuple[str, str]]:
        return {(t.color, t.shape) for t in self.things}


def _slot_index(thing: Thing) -> int:
    return SLOTS.index(thing.slot)


def sample_scene(
    rng: random.Random, pairs: Sequence[tuple[str, str]] = SEEN_PAIRS, required: Sequence[tuple[str, str]] = ()
) -> Scene:
    """A random scene of (color, shape) ``pairs``; with ``required``, at least one thing is one of those."""
    n = rng.choices((1, 2, 3), weights=(2, 3, 4))[0]
    slots = rng.sample(SLOTS, n)
    chosen = [rng.choice(pairs) for _ in range(n)]
    if required:
        chosen[0] = rng.choice(required)
    return Scene(tuple(Thing(c, s, slot) for (c, s), slot in zip(chosen, slots, strict=True)))


def render(scene: Scene, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """RGB image of ``scene``, each thing in its third of the width; ``rng`` varies background, size, height and
    tint (without it the image is canonical: white, centred, mid-sized)."""
    vary = rng.uniform if rng else lambda lo, hi: (lo + hi) / 2
    big = size * SUPERSAMPLE
    grey = 255 if rng is None or rng.random() < 0.5 else rng.randint(225, 245)
    image = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    third = big / 3
    for thing in scene.things:
        r = big * vary(0.25, 0.31) / 2
        cx = (SLOTS.index(thing.slot) + 0.5) * third + vary(-1, 1) * max(0.0, third / 2 - r - SUPERSAMPLE)
        cy = big / 2 + vary(-1, 1) * (big / 2 - r - 2 * SUPERSAMPLE)
        color = tuple(min(255, max(0, round(v + vary(-10, 10)))) for v in COLORS[thing.color])
        if thing.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        elif thing.shape == "square":
            r *= 0.85
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=color)
    return image.resize((size, size), Image.BOX)


def _a(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def _named(thing: Thing) -> str:
    return f"{_a(thing.color)} {thing.color} {thing.shape}"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _count(n: int, noun: str) -> str:
    return f"{NUMBERS[n]} {noun}" + ("" if n == 1 else "s")


def _phrase(scene: Scene) -> str:
    """The scene as a noun phrase: ``a red circle on the left and a blue square on the right``."""
    return _join([f"{_named(t)} {WHERE[t.slot]}" for t in scene.things])


CAPTION_TEMPLATES: tuple[Callable[[Scene], str], ...] = (
    lambda s: _phrase(s) + ".",
    lambda s: _join([f"{WHERE[t.slot]} there is {_named(t)}" for t in s.things]) + ".",
    lambda s: f"{_count(len(s.things), 'shape')}: {_phrase(s)}.",
    lambda s: f"a picture of {_phrase(s)}.",
)


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A lower-case, left-to-right description naming every thing's color, shape and slot."""
    return (rng.choice(CAPTION_TEMPLATES) if rng else CAPTION_TEMPLATES[0])(scene)


def captions(scene: Scene, rng: random.Random, k: int) -> list[str]:
    """``k`` captions of ``scene`` from distinct templates."""
    return [t(scene) for t in rng.sample(CAPTION_TEMPLATES, k)]


class QA(NamedTuple):
    kind: str
    question: str
    answer: str
    question_type: str
    answer_type: str


def question_pool(scene: Scene, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> dict[str, list[QA]]:
    """Every unambiguous question about ``scene``, by kind; 'no' questions only name ``pairs``."""
    pool: dict[str, list[QA]] = {}

    def add(kind: str, question: str, answer: str, question_type: str) -> None:
        answer_type = {"count": "number", "yesno": "yes/no"}.get(kind, "other")
        pool.setdefault(kind, []).append(QA(kind, question, answer, question_type, answer_type))

    for shape in SHAPES:
        found = scene.find(shape=shape)
        if len(found) == 1:
            add("color", f"what color is the {shape}?", found[0].color, "what color is the")
        add("count", f"how many {shape}s are there?", NUMBERS[len(found)], "how many")
    for t in scene.things:
        add("color", f"what color is the shape {WHERE[t.slot]}?", t.color, "what color is the")
        add("shape", f"what shape is {WHERE[t.slot]}?", t.shape, "what shape is")
        if len(scene.find(t.color, t.shape)) == 1:
            add("position", f"where is the {t.color} {t.shape}?", t.slot, "where is the")
        add("yesno", f"is there {_named(t)}?", "yes", "is there a")
    for color in COLORS:
        found = scene.find(color=color)
        if len(found) == 1:
            add("shape", f"which shape is {color}?", found[0].shape, "which")
    add("count", "how many shapes are there?", NUMBERS[len(scene.things)], "how many")
    absent = [p for p in pairs if p not in scene.pairs()]
    for color, shape in rng.sample(absent, min(len(scene.things), len(absent))):
        add("yesno", f"is there {_a(color)} {color} {shape}?", "no", "is there a")
    for slot in SLOTS:
        add("yesno", f"is there a shape {WHERE[slot]}?", "no" if scene.at(slot) is None else "yes", "is there a")
    return pool


def questions(scene: Scene, rng: random.Random, pairs: Sequence[tuple[str, str]], k: int = 3) -> list[QA]:
    """``k`` questions of distinct kinds (where there are that many)."""
    pool = question_pool(scene, rng, pairs)
    return [rng.choice(pool[kind]) for kind in rng.sample(sorted(pool), min(k, len(pool)))]


def statement(scene: Scene, rng: random.Random) -> str:
    """The scene as one capitalised sentence, for running text."""
    template = rng.choice(("There is {}.", "The picture shows {}.", "We see {}.", "In this picture there is {}."))
    return template.format(_phrase(scene)) if rng.random() < 0.8 else _sentence(CAPTION_TEMPLATES[1](scene))


def _other(rng: random.Random, options: Sequence[str], not_this: str) -> str:
    return rng.choice([o for o in options if o != not_this])


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def claim(scene: Scene, rng: random.Random, pairs: Sequence[tuple[str, str]], true: bool) -> str:
    """A sentence about ``scene`` that is ``true`` or false; it only ever names (color, shape) ``pairs``."""
    t = rng.choice(scene.things)
    kind = rng.choice(("exists", "position", "count", "color_at", "empty" if len(scene.things) < 3 else "count"))
    if kind == "exists":
        absent = [p for p in pairs if p not in scene.pairs()]
        color, shape = (t.color, t.shape) if true else rng.choice(absent)
        return f"There is {_a(color)} {color} {shape}."
    if kind == "position" and len(scene.find(t.color, t.shape)) == 1:
        return f"The {t.color} {t.shape} is {WHERE[t.slot if true else _other(rng, SLOTS, t.slot)]}."
    if kind == "color_at":
        others = [c for c in COLORS if c != t.color and (c, t.shape) in pairs]
        return f"The shape {WHERE[t.slot]} is {t.color if true else rng.choice(others)}."
    if kind == "empty":
        empty = [s for s in SLOTS if scene.at(s) is None]
        slot = rng.choice(empty) if true else t.slot
        return f"Nothing is {WHERE[slot]}."
    n = len(scene.things) if true else _other(rng, (1, 2, 3), len(scene.things))
    return "There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."


def choice_example(scene: Scene, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> dict:
    """A 4-way multiple-choice question about a described scene; distractors never pair a held-out combination."""
    text = _phrase(scene)
    t = rng.choice(scene.things)
    kind = rng.choice(("color", "shape", "count", "position"))
    if kind == "color" and len(scene.find(shape=t.shape)) == 1:
        question, answer = f"Which color is the {t.shape} in: {text}?", t.color
        choices = [answer] + rng.sample([c for c in COLORS if c != t.color and (c, t.shape) in pairs], 3)
    elif kind == "shape":
        slot = rng.choice(SLOTS)
        found = scene.at(slot)
        question, answer = f"Which shape is {WHERE[slot]} in: {text}?", found.shape if found else "none"
        choices = [*SHAPES, "none"]
    elif kind == "position" and len(scene.find(t.color, t.shape)) == 1:
        question, answer = f"Where is the {t.color} {t.shape} in: {text}?", t.slot
        choices = [*SLOTS, "nowhere"]
    else:
        question, answer = f"How many shapes are in: {text}?", NUMBERS[len(scene.things)]
        choices = list(NUMBERS[1:5])
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "label": choices.index(answer)}


INSTRUCTIONS = {
    "caption": (
        "Describe the image.",
        "Write a short caption for this picture.",
        "What does this image show?",
        "Give a one-sentence description of the picture.",
    ),
    "vqa": (
        "Answer the question about the image.",
        "Look at the picture and answer the question.",
        "Use the image to answer the question in a word.",
    ),
    "count": (
        "How many shapes are in the image?",
        "Count the shapes in the picture.",
        "Tell me the number of shapes you see.",
    ),
    "yesno": (
        "Answer yes or no about the image.",
        "Look at the picture. Answer with yes or no.",
        "Is the following true of the image? Say yes or no.",
    ),
    "colors": (
        "List the colors in the image from left to right.",
        "Name the colors of the shapes, left to right.",
        "Which colors appear in the picture? List them from left to right.",
    ),
    "compare": (
        "Compare the two scenes and answer the question.",
        "Read both scene descriptions, then answer.",
        "Here are two scenes. Answer the question about them.",
    ),
    "truth": (
        "Is the claim true for the scene? Answer yes or no.",
        "Read the scene and say whether the claim holds.",
        "Does the description support the claim? Answer yes or no.",
    ),
    "shapes": (
        "List the shapes in the image from left to right.",
        "Name the shapes you see, left to right.",
        "Which shapes are in the picture? Go from left to right.",
    ),
    "slot": (
        "What is at the given place in the picture? Say nothing if it is empty.",
        "Name the colored shape at this place of the image.",
        "Tell me what sits at this place in the picture.",
    ),
    "locate": (
        "Where in the picture is this shape? Answer left, middle or right.",
        "Find the shape in the image and give its place.",
        "Say where the shape is: left, middle or right.",
    ),
    "check": (
        "Check the question against the picture and answer yes or no.",
        "Look at the image. Is this right? Say yes or no.",
        "Answer the question about the picture with yes or no.",
    ),
    "choose": (
        "Which of the options appears in the picture?",
        "Pick the option that is in the image.",
        "One of these is in the picture. Which one?",
    ),
    "mention": (
        "List the colors the text mentions, in order.",
        "Which colors are named in the description? List them.",
        "Extract the colors from the text.",
    ),
    "change": (
        "Apply the change to the scene and describe the result.",
        "Describe the scene after the change.",
        "What does the scene look like after the change?",
    ),
    "relation": (
        "Read the scene and answer the question about where things are.",
        "Answer the question using the scene description.",
        "Use the scene to say which shape is meant.",
    ),
}
IMAGE_TASKS = ("caption", "vqa", "count", "yesno", "colors")
TEXT_TASKS = ("compare", "truth")
# Clusters added in world version 2. They are drawn from a random stream of their own, so every file version 1
# wrote (images, captions, VQA, text tasks, corpus, the first instructions) stays byte for byte the same.
MORE_IMAGE_TASKS = ("shapes", "slot", "locate", "choose", "check")
MORE_TEXT_TASKS = ("mention", "change", "relation")


# The answers a closed-set question allows, listed with it as FLAN lists OPTIONS (in a fixed order).
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": SLOTS,
    "yesno": ("yes", "no"),
    "count": NUMBERS[1:4],
}


def _instruction(
    task: str, instruction: str, image: str | None, text: str, output: str, options: Sequence[str] = ()
) -> dict:
    """One instruction record (``data.tasks.read_instructions``); ``options`` only for closed-set tasks."""
    row = {"task": task, "instruction": instruction, "image": image, "input": text, "output": output}
    return {**row, "options": list(options)} if options else row


def image_instruction(scene: Scene, image: str, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> dict:
    """One instruction about an image file, of a random image task."""
    task = rng.choice(IMAGE_TASKS)
    pool = question_pool(scene, rng, pairs)
    options: Sequence[str] = ()
    if task == "caption":
        text, output = "", caption(scene, rng)
    elif task == "vqa":
        qa = rng.choice(pool[rng.choice([k for k in ("color", "shape", "position") if k in pool])])
        text, output, options = qa.question, qa.answer, ANSWER_SETS[qa.kind]
    elif task == "count":
        text, output, options = "", NUMBERS[len(scene.things)], ANSWER_SETS["count"]
    elif task == "yesno":
        qa = rng.choice(pool["yesno"])
        text, output, options = qa.question, qa.answer, ANSWER_SETS["yesno"]
    else:
        text, output = "", ", ".join(t.color for t in scene.things)
    return _instruction(task, rng.choice(INSTRUCTIONS[task]), image, text, output, options)


def text_instruction(rng: random.Random, scene_of: Callable[[], Scene], pairs: Sequence[tuple[str, str]]) -> dict:
    """One text-only instruction: compare two described scenes, or check a claim against one."""
    task = rng.choice(TEXT_TASKS)
    a = scene_of()
    if task == "truth":
        true = rng.random() < 0.5
        text = f"scene: {caption(a, rng)} claim: {claim(a, rng, pairs, true).lower()}"
        output, options = "yes" if true else "no", ANSWER_SETS["yesno"]
    else:
        b = scene_of()
        text = f"scene a: {caption(a, rng)} scene b: {caption(b, rng)} "
        if rng.random() < 0.5:
            text += "which scene has more shapes?"
            na, nb = len(a.things), len(b.things)
            output = "scene a" if na > nb else "scene b" if nb > na else "same"
            options = ("scene a", "scene b", "same")
        else:
            color, shape, _ = rng.choice(rng.choice((a, b)).things)
            text += f"which scenes have {_a(color)} {color} {shape}?"
            ina, inb = bool(a.find(color, shape)), bool(b.find(color, shape))
            output = "both" if ina and inb else "scene a" if ina else "scene b"
            options = ("scene a", "scene b", "both")
    return _instruction(task, rng.choice(INSTRUCTIONS[task]), None, text, output, options)


def more_image_instruction(scene: Scene, image: str, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> dict:
    """One instruction about an image file, of a random task in ``MORE_IMAGE_TASKS``."""
    task = rng.choice(MORE_IMAGE_TASKS)
    unique = [t for t in scene.things if len(scene.find(t.color, t.shape)) == 1]
    if task == "locate" and not unique:
        task = "slot"
    options: Sequence[str] = ()
    if task == "shapes":
        text, output = "", ", ".join(t.shape for t in scene.things)
    elif task == "slot":
        slot = rng.choice(SLOTS)
        found = scene.at(slot)
        text, output = f"place: {slot}", f"{found.color} {found.shape}" if found else "nothing"
    elif task == "locate":
        t = rng.choice(unique)
        text, output, options = f"shape: {t.color} {t.shape}", t.slot, ANSWER_SETS["position"]
    elif task == "check":  # a yes/no question on one shape's color or kind (not on what exists: that is "yesno")
        t, true = rng.choice(scene.things), rng.random() < 0.5
        if rng.random() < 0.5:
            color = t.color if true else rng.choice([c for c in COLORS if c != t.color and (c, t.shape) in pairs])
            text = f"is the shape {WHERE[t.slot]} {color}?"
        else:
            shape = t.shape if true else rng.choice([s for s in SHAPES if s != t.shape and (t.color, s) in pairs])
            text = f"is the shape {WHERE[t.slot]} a {shape}?"
        output, options = "yes" if true else "no", ANSWER_SETS["yesno"]
    else:
        t = rng.choice(scene.things)
        absent = [p for p in pairs if p not in scene.pairs()]
        options = [f"{t.color} {t.shape}"] + [f"{c} {s}" for c, s in rng.sample(absent, 2)]
        rng.shuffle(options)
        text, output = "", f"{t.color} {t.shape}"
    return _instruction(task, rng.choice(INSTRUCTIONS[task]), image, text, output, options)


def _changed(scene: Scene, rng: random.Random, pairs: Sequence[tuple[str, str]]) -> tuple[str, Scene]:
    """A change in words (add a thing to an empty place, or take one away) and the scene after it."""
    empty = [s for s in SLOTS if scene.at(s) is None]
    if empty and (len(scene.things) == 1 or rng.random() < 0.5):
        color, shape = rng.choice(pairs)
        added = Thing(color, shape, rng.choice(empty))
        return f"add {_named(added)} {WHERE[added.slot]}", Scene(tuple(sorted((*scene.things, added), key=_slot_index)))
    gone = rng.choice(scene.things)
    return f"take away the shape {WHERE[gone.slot]}", Scene(tuple(t for t in scene.things if t != gone))


def _neighbour(scene: Scene, thing: Thing, side: str) -> Thing | None:
    """The nearest thing to the ``side`` ('left' or 'right') of ``thing``, if any."""
    i = scene.things.index(thing) + (-1 if side == "left" else 1)
    return scene.things[i] if 0 <= i < len(scene.things) else None


def more_text_instruction(rng: random.Random, scene_of: Callable[[], Scene], pairs: Sequence[tuple[str, str]]) -> dict:
    """One text-only instruction of a random task in ``MORE_TEXT_TASKS``."""
    task = rng.choice(MORE_TEXT_TASKS)
    a = scene_of()
    unique = [t for t in a.things if len(a.find(t.color, t.shape)) == 1]
    if task == "relation" and not unique:  # every shape has a twin: "the red circle" would be ambiguous
        task = "mention"
    if task == "mention":
        text, output = caption(a, rng), ", ".join(t.color for t in a.things)
    elif task == "change":
        change, new = _changed(a, rng, pairs)
        text, output = f"scene: {caption(a, rng)} change: {change}", _phrase(new)
    else:
        t = rng.choice(unique)
        side = rng.choice(("left", "right"))
        near = _neighbour(a, t, side)
        text = f"scene: {caption(a, rng)} question: what is just to the {side} of the {t.color} {t.shape}?"
        output = f"{near.color} {near.shape}" if near else "nothing"
    return _instruction(task, rng.choice(INSTRUCTIONS[task]), None, text, output)


NAMES = (
    ("Anna", "she"),
    ("Ben", "he"),
    ("Clara", "she"),
    ("David", "he"),
    ("Emma", "she"),
    ("Felix", "he"),
    ("Grace", "she"),
    ("Hugo", "he"),
    ("Ida", "she"),
    ("Jonas", "he"),
    ("Lena", "she"),
    ("Max", "he"),
)
FACTS = (
    "A circle is round and has no corners.",
    "A square has four equal sides and four corners.",
    "A triangle has three sides and three corners.",
    "A square has more corners than a triangle.",
    "Red, orange and yellow are warm colors.",
    "Green, blue and purple are cool colors.",
    "Mixing red and yellow gives orange.",
    "Mixing blue and yellow gives green.",
    "Mixing red and blue gives purple.",
    "Every picture has three places: the left, the middle and the right.",
    "Each place holds at most one shape.",
    "The middle is between the left and the right.",
    "A picture can hold one, two or three shapes.",
    "One and one make two.",
    "Two and one make three.",
    "Three is more than two, and two is more than one.",
    "The background of a picture is white or light grey.",
    "Colors and shapes can be mixed in many ways.",
)


def _p_describe(scene: Scene, rng: random.Random, pairs) -> str:
    intro = rng.choice(("Here is a picture.", "Look at this picture.", "We see a new picture.", "Another picture."))
    parts = [intro, statement(scene, rng), _sentence(_count(len(scene.things), "shape")) + " in all."]
    for slot in SLOTS:
        t = scene.at(slot)
        if t is None:
            parts.append(rng.choice((f"Nothing is {WHERE[slot]}.", f"The {slot} is empty.")))
        else:
            options = (
                f"The {t.color} {t.shape} is {WHERE[slot]}.",
                f"{_sentence(WHERE[slot])} is {_named(t)}.",
                f"{_sentence(_named(t))} sits {WHERE[slot]}.",
            )
            parts.append(rng.choice(options))
    return " ".join(parts)


def _p_relations(scene: Scene, rng: random.Random, pairs) -> str:
    things = scene.things
    if len(things) == 1:
        return f"{statement(scene, rng)} The {things[0].color} {things[0].shape} is alone in the picture."
    parts = [statement(scene, rng)]
    for i, a in enumerate(things):
        for b in things[i + 1 :]:
            if rng.random() < 0.5:
                parts.append(f"The {a.color} {a.shape} is to the left of the {b.color} {b.shape}.")
            else:
                parts.append(f"The {b.color} {b.shape} is to the right of the {a.color} {a.shape}.")
    if len(things) == 3:
        a, m, b = things
        parts.append(f"The {m.color} {m.shape} is between the {a.color} {a.shape} and the {b.color} {b.shape}.")
    return " ".join(parts)


def _p_qa(scene: Scene, rng: random.Random, pairs) -> str:
    lines = [f"Question: {_sentence(q.question)} Answer: {q.answer}." for q in questions(scene, rng, pairs, k=4)]
    return " ".join([f"Here are some questions about a picture with {_phrase(scene)}."] + lines)


def _p_count(scene: Scene, rng: random.Random, pairs) -> str:
    parts = ["Let us count the shapes."]
    for i, t in enumerate(scene.things):
        parts.append(f"The {t.color} {t.shape} makes {NUMBERS[i + 1]}.")
    n = len(scene.things)
    parts.append(f"So there {'is' if n == 1 else 'are'} {_count(n, 'shape')}.")
    by_shape = [_count(len(scene.find(shape=s)), s) for s in SHAPES if scene.find(shape=s)]
    parts.append(_sentence(_join(by_shape)) + ".")
    return " ".join(parts)


def _p_change(scene: Scene, rng: random.Random, pairs) -> str:
    empty = [s for s in SLOTS if scene.at(s) is None]
    start = statement(scene, rng)
    if empty and rng.random() < 0.5:
        color, shape = rng.choice(pairs)
        new = Scene((*scene.things, Thing(color, shape, rng.choice(empty))))
        added = next(t for t in new.things if t not in scene.things)
        return f"{start} Now we add {_named(added)} {WHERE[added.slot]}. The picture then shows {_phrase(new)}."
    if empty:
        t = rng.choice(scene.things)
        slot = rng.choice(empty)
        new = Scene(tuple(Thing(t.color, t.shape, slot) if u == t else u for u in scene.things))
        return f"{start} The {t.color} {t.shape} moves from the {t.slot} to the {slot}. Now we see {_phrase(new)}."
    gone = rng.choice(scene.things)
    new = Scene(tuple(u for u in scene.things if u != gone))
    n = len(new.things)
    return (
        f"{start} Then we take away the {gone.color} {gone.shape}. {_sentence(NUMBERS[n])} "
        f"{'shape is' if n == 1 else 'shapes are'} left: {_phrase(new)}."
    )


def _p_story(scene: Scene, rng: random.Random, pairs) -> str:
    name, he = rng.choice(NAMES)
    order = rng.sample(scene.things, len(scene.things))
    parts = [f"{name} drew a picture."]
    for i, t in enumerate(order):
        step = "First" if i == 0 else rng.choice(("Then", "Next", "After that"))
        parts.append(f"{step} {he} drew {_named(t)} {WHERE[t.slot]}.")
    parts.append(f"When {he} was done, the picture had {_count(len(order), 'shape')}: {_phrase(scene)}.")
    return " ".join(parts)


def _p_compare(a: Scene, b: Scene, rng: random.Random) -> str:
    na, nb = len(a.things), len(b.things)
    parts = [f"The first picture showed {_phrase(a)}. The second shows {_phrase(b)}."]
    if na == nb:
        parts.append(f"Both have {_count(na, 'shape')}.")
    else:
        more, fewer = ("first", "second") if na > nb else ("second", "first")
        parts.append(f"The {more} has {_count(max(na, nb), 'shape')}, more than the {fewer}.")
    both = sorted(a.pairs() & b.pairs())
    if both:
        parts.append(f"Both pictures have {_a(both[0][0])} {both[0][0]} {both[0][1]}.")
    elif rng.random() < 0.5:
        parts.append("No shape of the same color is in both pictures.")
    return " ".join(parts)


PARAGRAPHS = (_p_describe, _p_relations, _p_qa, _p_count, _p_change, _p_story)


def document(rng: random.Random, scene_of: Callable[[], Scene], pairs: Sequence[tuple[str, str]]) -> str:
    """A 100-400 word document of paragraphs (separated by blank lines) about a few scenes of the world."""
    target = rng.randint(100, 400)
    paragraphs = [" ".join(rng.sample(FACTS, rng.randint(2, 4)))] if rng.random() < 0.4 else []
    words, previous = sum(len(p.split()) for p in paragraphs), None
    while words < target:
        scene = scene_of()
        block = [f(scene, rng, pairs) for f in rng.sample(PARAGRAPHS, rng.randint(1, 3))]
        if previous is not None and rng.random() < 0.3:
            block.append(_p_compare(previous, scene, rng))
        paragraphs += block
        words += sum(len(p.split()) for p in block)
        previous = scene
    return "\n\n".join(paragraphs)


def vqa_answers(answer: str, rng: random.Random) -> list[dict]:
    """Ten VQAv2 human answers: the canonical one, with up to two replaced by a synonym where one exists."""
    answers = [answer] * 10
    if answer in SYNONYMS:
        for i in rng.sample(range(10), rng.randint(0, 2)):
            answers[i] = SYNONYMS[answer]
    return [
        {"answer": a, "answer_confidence": rng.choice(("yes", "yes", "yes", "maybe")), "answer_id": i + 1}
        for i, a in enumerate(answers)
    ]


def _params(seed: int, n_train: int, n_val: int, n_test: int, n_heldout: int, image_size: int, n_docs: int) -> dict:
    return {
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "n_heldout": n_heldout,
        "image_size": image_size,
        "n_docs": n_docs,
    }


def _dump(path: Path, obj, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    separators = None if indent else (",", ":")
    path.write_text(json.dumps(obj, indent=indent, separators=separators) + "\n", encoding="utf-8")


def _jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows), encoding="utf-8")


def _write_split(root: Path, split: str, n: int, n_docs: int, params: dict, next_image_id: int) -> dict[str, list]:
    """Every file of one split under ``root``; returns the split's file lists for meta.json."""
    seed, size = params["seed"], params["image_size"]
    pairs = ALL_PAIRS if split == "heldout" else SEEN_PAIRS
    required = HELDOUT_PAIRS if split == "heldout" else ()

    def rng(kind: str) -> random.Random:
        return random.Random(f"world/{seed}/{split}/{kind}")

    scene_rng, draw_rng, text_rng = rng("scenes"), rng("render"), rng("text")
    scenes = [sample_scene(scene_rng, pairs, required) for _ in range(n)]
    (root / "images" / split).mkdir(parents=True)
    images, annotations, scene_rows, qs, anns, instructions = [], [], [], [], [], []
    for i, scene in enumerate(scenes):
        image_id, file_name = next_image_id + i, f"images/{split}/{i:06d}.png"
        render(scene, size, draw_rng).save(root / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        scene_rows.append({"image_id": image_id, "file_name": file_name, "things": [list(t) for t in scene.things]})
        for text in captions(scene, text_rng, text_rng.randint(1, 2)):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": text})
        for j, qa in enumerate(questions(scene, text_rng, pairs, k=text_rng.randint(1, 3))):
            qid = image_id * 10 + j
            qs.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            anns.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": qa.question_type,
                    "answer_type": qa.answer_type,
                    "multiple_choice_answer": qa.answer,
                    "answers": vqa_answers(qa.answer, text_rng),
                }
            )
        instructions.append(image_instruction(scene, file_name, text_rng, pairs))

    task_rng = rng("tasks")

    def scene_of() -> Scene:
        return sample_scene(task_rng, pairs, required)

    instructions += [text_instruction(task_rng, scene_of, pairs) for _ in range(max(1, n // 2))]
    more_rng = rng("instructions-v2")
    instructions += [
        more_image_instruction(scene, f"images/{split}/{i:06d}.png", more_rng, pairs) for i, scene in enumerate(scenes)
    ]
    instructions += [
        more_text_instruction(more_rng, lambda: sample_scene(more_rng, pairs, required), pairs)
        for _ in range(max(1, n // 2))
    ]
    entail = []
    for i in range(n):
        scene, true = scene_of(), task_rng.random() < 0.5
        label = "entailment" if true else "not_entailment"
        entail.append(f"{i}\t{statement(scene, task_rng)}\t{claim(scene, task_rng, pairs, true)}\t{label}\n")
    choice = [choice_example(scene_of(), task_rng, pairs) for _ in range(n)]
    doc_rng = rng("corpus")
    corpus = [{"text": document(doc_rng, lambda: sample_scene(doc_rng, pairs, required), pairs)} for _ in range(n_docs)]

    files = {
        "captions": f"captions_{split}.json",
        "scenes": f"scenes_{split}.jsonl",
        "vqa_questions": f"vqa/{split}_questions.json",
        "vqa_annotations": f"vqa/{split}_annotations.json",
        "entail": f"text/entail_{split}.tsv",
        "choice": f"text/choice_{split}.jsonl",
        "corpus": f"text/corpus_{split}.jsonl",
        "instructions": f"instructions_{split}.jsonl",
    }
    info = {"description": f"MetaLM bundled world, {split} split", "version": VERSION}
    _dump(root / files["captions"], {"info": info, "images": images, "annotations": annotations})
    _jsonl(root / files["scenes"], scene_rows)
    vqa_head = {"info": info, "task_type": "Open-Ended", "data_type": "metalm-world", "data_subtype": split}
    _dump(root / files["vqa_questions"], {**vqa_head, "questions": qs})
    _dump(root / files["vqa_annotations"], {**vqa_head, "annotations": anns})
    (root / "text").mkdir(exist_ok=True)
    (root / files["entail"]).write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(entail), encoding="utf-8")
    _jsonl(root / files["choice"], choice)
    _jsonl(root / files["corpus"], corpus)
    _jsonl(root / files["instructions"], instructions)
    return {**files, "images": [im["file_name"] for im in images]}


def _read_meta(out: Path) -> dict | None:
    try:
        return json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(out: Path, params: dict) -> bool:
    meta = _read_meta(out)
    return meta is not None and meta.get("version") == VERSION and meta.get("params") == params


def generate_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 300,
    n_test: int = 300,
    n_heldout: int = 200,
    image_size: int = 32,
    n_docs: int = 3000,
) -> Path:
    """Write the world into ``out_dir`` (all at once, by renaming a finished temp dir) unless it is already there.

    ``n_docs`` corpus documents go to train, proportionally fewer to the other splits. A world made with other
    parameters is replaced, with whatever was derived from it inside ``out_dir``.
    """
    out = Path(os.path.abspath(out_dir))
    params = _params(seed, n_train, n_val, n_test, n_heldout, image_size, n_docs)
    if _is_current(out, params):
        log.info("world at %s is up to date", out)
        return out
    if out.exists() and _read_meta(out) is None and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a generated world (no meta.json); choose an empty directory")
    if image_size < 16 or min(n_train, n_val, n_test, n_heldout, n_docs) < 0:
        raise ValueError(f"need image_size >= 16 and no negative counts, got {params}")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        sizes = {"train": n_train, "val": n_val, "test": n_test, "heldout": n_heldout}
        splits, next_id = {}, 1
        for split, n in sizes.items():
            docs = n_docs if split == "train" else max(1, round(n_docs * n / max(n_train, 1)))
            splits[split] = _write_split(tmp, split, n, docs, params, next_id)
            next_id += n
        meta = {
            "version": VERSION,
            "params": params,
            "seed": seed,
            "image_size": image_size,
            "sizes": sizes,
            "colors": COLORS,
            "shapes": list(SHAPES),
            "slots": list(SLOTS),
            "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
            "splits": splits,
        }
        _dump(tmp / "meta.json", meta, indent=1)
        os.chmod(tmp, 0o755)
        _swap_in(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote world %s in %.1fs", out, time.perf_counter() - start)
    return out


def _swap_in(tmp: Path, out: Path, params: dict) -> None:
    """Rename the finished ``tmp`` to ``out``, moving an older world aside first (another process may win)."""
    old = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None and not out.exists():
            old.rename(out)
            old = None
        if not _is_current(out, params):
            raise
        shutil.rmtree(tmp)
    if old is not None:
        log.warning("replaced the world at %s (it was another version or had other parameters)", out)
        shutil.rmtree(old)


def current_world(out_dir: str | os.PathLike) -> Path:
    """The world at ``out_dir`` brought up to this ``VERSION`` with the parameters it was made with (whatever its
    size); a directory without a world gets the default one."""
    meta = _read_meta(Path(out_dir))
    if meta is None:
        return generate_world(out_dir)
    if meta.get("version") == VERSION or not isinstance(meta.get("params"), dict):
        return Path(os.path.abspath(out_dir))
    log.info("world at %s is version %s; regenerating it as version %d", out_dir, meta.get("version"), VERSION)
    return generate_world(out_dir, **meta["params"])


def mentions(text: str, color: str, shape: str) -> bool:
    """Whether ``text`` names a ``color`` ``shape`` (``"blue triangle"``, ``"triangle is blue"``, plurals)."""
    pattern = rf"\b{color}\s+{shape}s?\b|\b{shape}s?\s+(is|are)\s+{color}\b"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m data.world", description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write the world into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", "--n-train", type=int, default=8000, help="training images")
    parser.add_argument("--n_val", "--n-val", type=int, default=300, help="validation images")
    parser.add_argument("--n_test", "--n-test", type=int, default=300, help="test images")
    parser.add_argument(
        "--n_heldout", "--n-heldout", type=int, default=200, help="images with a held-out (color, shape) pair"
    )
    parser.add_argument("--image_size", "--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--n_docs", "--n-docs", type=int, default=3000, help="training corpus documents")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return generate_world(
        args.out, args.seed, args.n_train, args.n_val, args.n_test, args.n_heldout, args.image_size, args.n_docs
    )


if __name__ == "__main__":
    main()
