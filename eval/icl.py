"""In-context learning: k-shot prompts from seeded demonstrations, plain or through the encoder.

A demonstration is an input prompt (text and images) followed by its answer. Two ways to show them:

- ``causal``: everything is plain text the decoder reads left to right (GPT-3 style few-shot prompting);
- ``encoder``: MetaLM's in-context customization: each demonstration's text, answer included, goes through the
  bidirectional text encoder and docks at its positions (images are docked as always); only the query is read
  causally. The scored or generated answer of the query is never docked, so the semi-causal rule holds.
- ``encoder_inputs``: each demonstration's input goes through the encoder and its answer is read causally, so the
  decoder sees every label word as it will produce the query's; with ``encode_query`` the query's input is
  encoded too, the layout of a model finetuned with its inputs read by the encoder.

Demonstrations are drawn without replacement from a pool (a training split) by a seeded RNG, in one of two designs
(``DRAWS``): ``per_trial``, one set for all queries of a trial, each trial with its own seed (the scripts' default;
the shared demonstrations are a prefix every query reuses, so a scorer runs them once), or ``per_example``, a set
per query as GPT-3 drew them (Brown et al. 2020, Section 2: "K examples drawn at random from the training set for
each example in the evaluation set"), never holding the query itself. Scores are reported as mean and standard
deviation over trials (eval/runners.py, eval/icl_real.py). Where a benchmark file has no training split,
``split_pool`` sets a seeded part of it aside as the pool, so no query can be shown as a demonstration.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from data.prompts import Prompt, Segment, through_encoder
from eval.settings import MODES

DRAWS = ("per_trial", "per_example")


@dataclass(frozen=True)
class Demo:
    """One demonstration: the input as a prompt, and the answer text that follows it."""

    prompt: Prompt
    answer: str
    key: Hashable = None  # identifies the source example, so a query never sees itself


def as_segments(prompt: Prompt | str) -> list[Segment]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def few_shot_prompt(
    demos: Sequence[Demo], query: Prompt | str, mode: str = "causal", sep: str = "\n\n", encode_query: bool = False
) -> Prompt:
    """``demo_1 answer_1 sep ... demo_k answer_k sep query``; in ``encoder`` mode each demonstration (input and
    answer) is docked through the text encoder, in ``encoder_inputs`` mode its input only; ``encode_query`` sends
    the query's text through it too (the layout of a model finetuned with its inputs encoded), while the answer
    that follows stays causal."""
    if mode not in MODES:
        raise ValueError(f"in-context mode {mode!r}: expected one of {MODES}")
    prompt: list[Segment] = []
    for demo in demos:
        shown = as_segments(demo.prompt) + [demo.answer]
        if mode == "encoder":
            shown = through_encoder(shown)
        elif mode == "encoder_inputs":
            shown = through_encoder(as_segments(demo.prompt)) + [demo.answer]
        prompt += shown
        prompt.append(sep)
    query = through_encoder(as_segments(query)) if encode_query else as_segments(query)
    return _merge_text(prompt + query)


def _merge_text(segments: list[Segment]) -> list[Segment]:
    """Join adjacent plain strings so each is tokenized as one piece (as a single prompt string would be)."""
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + seg
        elif not (isinstance(seg, str) and not seg):
            out.append(seg)
    return out


def sample_demos(pool: Sequence[Demo], k: int, rng: random.Random, exclude: Hashable = None) -> list[Demo]:
    """``k`` distinct demonstrations from ``pool`` (none whose key is ``exclude``), in random order."""
    if k == 0:
        return []
    candidates = [d for d in pool if exclude is None or d.key != exclude]
    if len(candidates) < k:
        raise ValueError(f"{k}-shot prompts need {k} demonstrations but the pool has only {len(candidates)}")
    return rng.sample(candidates, k)


def split_pool(n_items: int, pool_size: int, seed: int) -> tuple[list[int], list[int]]:
    """``(queries, pool)``: indices of ``n_items`` items, ``pool_size`` of them drawn by ``random.Random(seed)`` as
    the demonstration pool (sorted), the rest, in file order, as the queries; disjoint, so no query is ever shown."""
    if not 0 <= pool_size < n_items:
        raise ValueError(f"pool_size {pool_size}: expected 0 <= pool_size < {n_items} (the items in the file)")
    pool = sorted(random.Random(seed).sample(range(n_items), pool_size))
    chosen = set(pool)
    return [i for i in range(n_items) if i not in chosen], pool


def draw_demos(
    pool: Sequence[Demo], k: int, query_keys: Sequence[Hashable], draws: str, seed: int, trial: int
) -> list[list[Demo]]:
    """The demonstrations of each query in trial ``trial``: ``per_trial``, one set drawn by ``random.Random(seed +
    trial)`` for every query (as ``eval.runners.classify``); ``per_example``, a set per query drawn by its own RNG
    (seeded by seed, trial and the query's position) from the pool less the query (``exclude`` its key)."""
    if draws not in DRAWS:
        raise ValueError(f"demonstration draws {draws!r}: expected one of {DRAWS}")
    if draws == "per_trial":
        shared = sample_demos(pool, k, random.Random(seed + trial))
        return [shared for _ in query_keys]
    rngs = [random.Random(f"{seed}/{trial}/{i}") for i in range(len(query_keys))]
    return [sample_demos(pool, k, rng, exclude=key) for rng, key in zip(rngs, query_keys, strict=True)]


def prompt_text(demos: Sequence[Demo], query: str, sep: str = "\n\n") -> str:
    """A plain-text few-shot prompt: ``demo_1 answer_1 sep ... demo_k answer_k sep query`` (``few_shot_prompt`` in
    ``causal`` mode, as one string)."""
    prompt = few_shot_prompt(demos, query, "causal", sep)
    if not all(isinstance(seg, str) for seg in prompt):
        raise ValueError("prompt_text takes text demonstrations and queries only (no images or encoded text)")
    return "".join(prompt)  # type: ignore[arg-type]
