"""In-context prompts: demonstrations are seeded, never the query, and docked through the encoder on request."""

from __future__ import annotations

import random

import pytest

from data.prompts import EncodedSeg, ImageSeg
from eval.icl import Demo, few_shot_prompt, sample_demos, through_encoder
from eval.settings import shots_list

POOL = [Demo(f"Question: q{i}? Answer:", f" a{i}", key=i) for i in range(10)]


def test_causal_prompt_is_plain_text_in_order():
    prompt = few_shot_prompt(POOL[:2], "Question: q? Answer:")
    assert prompt == ["Question: q0? Answer: a0\n\nQuestion: q1? Answer: a1\n\nQuestion: q? Answer:"]


def test_zero_shot_prompt_is_the_query():
    assert few_shot_prompt([], "Question: q? Answer:") == ["Question: q? Answer:"]


def test_encoder_mode_docks_each_demonstration_and_keeps_images():
    img = ImageSeg("x.png")
    demos = [Demo([img, "Question: q0? Answer:"], " a0"), Demo("Question: q1? Answer:", " a1")]
    prompt = few_shot_prompt(demos, [img, "Question: q? Answer:"], mode="encoder")
    assert prompt == [
        img,
        EncodedSeg("Question: q0? Answer: a0"),
        "\n\n",
        EncodedSeg("Question: q1? Answer: a1"),
        "\n\n",
        img,
        "Question: q? Answer:",
    ]
    # the query itself is never encoder-read
    assert not isinstance(prompt[-1], EncodedSeg)


def test_encoder_inputs_mode_docks_inputs_and_keeps_every_answer_causal():
    prompt = few_shot_prompt(POOL[:2], "Question: q? Answer:", mode="encoder_inputs", encode_query=True)
    assert prompt == [
        EncodedSeg("Question: q0? Answer:"),
        " a0\n\n",
        EncodedSeg("Question: q1? Answer:"),
        " a1\n\n",
        EncodedSeg("Question: q? Answer:"),
    ]
    # without encode_query the query is plain text after the last causal answer
    plain = few_shot_prompt(POOL[:1], "Question: q? Answer:", mode="encoder_inputs")
    assert plain == [EncodedSeg("Question: q0? Answer:"), " a0\n\nQuestion: q? Answer:"]


def test_through_encoder_joins_text_runs():
    assert through_encoder(["a", "b", ImageSeg("i"), "c"]) == [EncodedSeg("ab"), ImageSeg("i"), EncodedSeg("c")]


def test_demos_are_seeded_distinct_and_exclude_the_query():
    a = sample_demos(POOL, 4, random.Random(3), exclude=5)
    b = sample_demos(POOL, 4, random.Random(3), exclude=5)
    assert a == b and len({d.key for d in a}) == 4 and all(d.key != 5 for d in a)
    c = sample_demos(POOL, 4, random.Random(4), exclude=5)
    assert a != c
    with pytest.raises(ValueError, match="pool has only 9"):
        sample_demos(POOL, 10, random.Random(0), exclude=0)


def test_shots_list():
    assert shots_list("0,1,4") == [0, 1, 4]
    for bad in ("", "a", "-1", "1,,x"):
        with pytest.raises(ValueError, match="--shots"):
            shots_list(bad)
