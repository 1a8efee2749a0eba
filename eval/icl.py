"""In-context learning: k-shot prompts from seeded demonstrations, plain or through the encoder.

A demonstration is an input prompt (text and images) followed by its answer. Two ways to show them:

- ``causal``: everything is plain text the decoder reads left to right (GPT-3 style few-shot prompting);
- ``encoder``: MetaLM's in-context customization: each demonstration's text, answer included, goes through the
  bidirectional text encoder and docks at its positions (images are docked as always); only the query is read
  causally. The scored or generated answer of the query is never docked, so the semi-causal rule holds.

Demonstrations are drawn without replacement from a pool (a training split) by a seeded RNG; the scripts use one
set for all queries of a trial, each trial with its own seed, and report mean and standard deviation over trials
(eval/runners.py).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from data.prompts import Prompt, Segment, through_encoder
from eval.settings import MODES


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
    answer) is docked through the text encoder; ``encode_query`` sends the query's text through it too (the layout
    of a model finetuned with its inputs encoded), while the answer that follows stays causal."""
    if mode not in MODES:
        raise ValueError(f"in-context mode {mode!r}: expected one of {MODES}")
    prompt: list[Segment] = []
    for demo in demos:
        shown = as_segments(demo.prompt) + [demo.answer]
        prompt += through_encoder(shown) if mode == "encoder" else shown
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
