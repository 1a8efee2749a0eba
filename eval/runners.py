"""The three ways of answering that every evaluator shares, and the results files.

- ``classify``: rank a fixed set of label verbalizations by log-probability, with in-context demonstrations and
  calibration (none / contextual / prototypical; all three are computed from the same scores and reported);
- ``choose``: multiple choice, each option a (context, continuation) pair, scored by summed log-probability
  (``acc``) and by mean log-probability per token (``acc_norm``);
- ``answer``: generate an answer per query and score it with the benchmark's metric.

Each runs every ``shots`` value for ``trials`` seeded demonstration sets (one for 0-shot) and reports the
per-trial scores with their mean and standard deviation. ``write_outputs`` writes the results JSON (template,
decoding settings, skipped inputs, scores) and the predictions as jsonl beside it. With ``on_error="skip"``,
``drop_unusable`` and ``usable_pool`` first leave out (and count) the inputs the model cannot take: an image that
does not decode, a query too long for the decoder's window.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.prompts import ImageSeg, TextTooLong, open_image
from data.tasks import ReadReport, TaskData
from eval.calibration import PrototypicalCalibration, contextual_calibration
from eval.icl import Demo, as_segments, few_shot_prompt, sample_demos
from eval.metrics import mean_std
from eval.scoring import Prompt, Scorer
from eval.settings import CALIBRATIONS, DecodeSettings, EvalSettings
from metalm.io import read_json


def device_of(name: str) -> str:
    """``auto``: cuda when available, else cpu; any other name as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_scorer(settings: EvalSettings) -> Scorer:
    return Scorer.from_checkpoint(settings.checkpoint, device_of(settings.device), batch_size=settings.batch_size)


@dataclass
class Query:
    """One test input: ``prompt`` is the input rendered by the template, without its answer."""

    key: Hashable
    prompt: Prompt


@dataclass
class Outcome:
    """What a runner returns: per shot count the scores of each trial, and the predictions of every trial."""

    results: list[dict]
    predictions: list[dict]


class FittedPrompts:
    """Few-shot prompts that fit the decoder's window: when the demonstrations, the query and ``reserve`` tokens
    for what follows (an option, a label word, the answer) do not fit, or a demonstration read by the text encoder
    is longer than it reads, the earliest demonstrations are dropped, and the prompts so shortened are counted for
    the results (``stats``)."""

    def __init__(self, scorer: Scorer, mode: str, encode_query: bool) -> None:
        self.scorer, self.mode, self.encode_query = scorer, mode, encode_query
        self.shortened, self.demos_shown, self.prompts = 0, 0, 0

    def __call__(self, demos: Sequence[Demo], query: Prompt, reserve: int) -> Prompt:
        self.prompts += 1
        for start in range(len(demos) + 1):
            prompt = few_shot_prompt(demos[start:], query, self.mode, encode_query=self.encode_query)
            if not demos:
                return prompt
            try:
                encoded = self.scorer.encode(prompt)
            except TextTooLong:  # a demonstration longer than the text encoder reads: drop the earliest too
                if start == len(demos):
                    raise
                continue
            if len(encoded.ids) + reserve <= self.scorer.max_len or start == len(demos):  # too long alone: the
                self.shortened += start > 0  # scorer says so
                self.demos_shown += len(demos) - start
                self.scorer.keep(prompt, encoded)  # measured once, scored without encoding it again
                return prompt
        raise AssertionError("unreachable")

    def stats(self) -> dict:
        """Counts since the last call, then reset: prompts shortened to fit, mean demonstrations shown."""
        out = {"prompts_shortened": self.shortened, "mean_demonstrations": self.demos_shown / max(self.prompts, 1)}
        self.shortened = self.demos_shown = self.prompts = 0
        return out


def unreadable_image(prompt: Prompt | str) -> str | None:
    """The error of the first image of ``prompt`` that is missing or does not decode, else None."""
    for seg in as_segments(prompt):
        if isinstance(seg, ImageSeg):
            try:
                open_image(seg.image)
            except (OSError, ValueError) as err:
                return str(err)
    return None


def _why_unusable(scorer: Scorer, prompt: Prompt | str, reserve: int, settings: EvalSettings) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``prompt`` alone (no demonstrations) cannot be scored with ``reserve`` tokens after
    it: an unreadable image, or too many tokens for the decoder's window or for the text encoder; else None."""
    shown = few_shot_prompt([], prompt, settings.icl_mode, encode_query=settings.encode_input)
    try:
        n = len(scorer.encode(shown).ids)
    except TextTooLong as err:  # more than the text encoder reads
        return "too_long", str(err)
    except (OSError, ValueError):
        detail = unreadable_image(prompt)
        if detail is None:
            raise
        return "unreadable_image", detail
    if n + reserve > scorer.max_len:
        window = f"the decoder takes at most {scorer.max_len} (decoder.max_seq_len)"
        return "too_long", f"{n} tokens + {reserve} for the answer; {window}"
    return None


def drop_unusable(
    scorer: Scorer,
    data: TaskData,
    examples: Sequence,
    needs: Callable[[object], tuple[Hashable, Sequence[tuple[Prompt | str, int]]]],
    settings: EvalSettings,
) -> tuple[list, ReadReport]:
    """The examples to evaluate and the report for the results. ``needs(example)`` gives its id and every prompt
    it is scored with, each with the tokens reserved after it (answer, option, label word). With ``on_error="skip"``
    an example with an unreadable image or a prompt too long for the window is left out and counted in a copy of
    ``data.report`` (reasons ``unreadable_image``, ``too_long``), as the reader counts its skips; with ``"error"``
    all are kept and the first such example stops the run with an error naming it."""
    report = copy.deepcopy(data.report)
    if settings.on_error != "skip":
        return list(examples), report
    kept = []
    for ex in examples:
        key, prompts = needs(ex)
        problems = (_why_unusable(scorer, prompt, reserve, settings) for prompt, reserve in prompts)
        problem = next((p for p in problems if p is not None), None)
        if problem is None:
            kept.append(ex)
        else:
            report.skip(problem[0], f"{report.source}: example {key!r}: {problem[1]}")
    if examples and not kept:
        counts = ", ".join(f"{r} {n}" for r, n in sorted(report.skipped.items()))
        raise ValueError(f"{report.source}: every example was skipped ({counts}); first: {report.messages[0]}")
    return kept, report


def usable_pool(pool: Sequence[Demo], settings: EvalSettings, report: ReadReport) -> list[Demo]:
    """The demonstrations whose images can be read; with ``on_error="skip"`` the others are left out and counted in
    ``report`` as ``unreadable_demo_image`` (with ``"error"`` the pool is unchanged)."""
    if settings.on_error != "skip":
        return list(pool)
    kept = []
    for demo in pool:
        detail = unreadable_image(demo.prompt)
        if detail is None:
            kept.append(demo)
        else:
            report.skip("unreadable_demo_image", f"demonstration {demo.key!r}: {detail}")
    return kept


def _tokens(scorer: Scorer, text: str) -> int:
    return len(scorer.tokenizer.encode(text))


def _trials(shots: int, trials: int) -> int:
    return 1 if shots == 0 else trials


def classify(
    scorer: Scorer,
    queries: Sequence[Query],
    labels: Sequence[int],
    verbalizers: Sequence[str],
    pool: Sequence[Demo],
    settings: EvalSettings,
    content_free: Sequence[Prompt] = (),
) -> Outcome:
    """Accuracy of label ranking with and without calibration. Contextual calibration needs ``content_free``
    prompts (the template with its inputs emptied); prototypical calibration fits its mixture on the test inputs'
    own label log-probabilities (unlabeled; transductive, as Han et al. 2022 allow)."""
    shots, trials, seed, mode = settings.shots, settings.trials, settings.seed, settings.icl_mode
    headline = settings.calibration
    shown = FittedPrompts(scorer, mode, settings.encode_input)
    reserve = max(_tokens(scorer, v) for v in verbalizers)
    k_labels = len(verbalizers)
    results, predictions = [], []
    gold = np.asarray(labels)
    for k in shots:
        per_trial: dict[str, list[float]] = {c: [] for c in CALIBRATIONS}
        for t in range(_trials(k, trials)):
            demos = sample_demos(pool, k, random.Random(seed + t))
            prompts = [shown(demos, q.prompt, reserve) for q in queries]
            options = [[(p, v) for v in verbalizers] for p in prompts]
            scores = scorer.rank(options, desc=f"{k}-shot trial {t}")
            logp = np.array([[s.logprob for s in row] for row in scores])
            preds = {"none": logp.argmax(1)}
            cf_prompts = [shown(demos, cf, reserve) for cf in content_free]
            if cf_prompts:
                cf = scorer.rank([[(p, v) for v in verbalizers] for p in cf_prompts], desc="content-free")
                cf_logp = np.array([[s.logprob for s in row] for row in cf])
                preds["contextual"] = contextual_calibration(logp, cf_logp).argmax(1)
            if len(queries) >= 2 * k_labels:
                proto = PrototypicalCalibration(k_labels, seed=seed + t).fit(logp)
                preds["prototypical"] = proto.predict(logp)
            for name, p in preds.items():
                per_trial[name].append(float((p == gold).mean()))
            chosen = preds.get(headline, preds["none"])
            for q, y, row, p in zip(queries, labels, logp, chosen, strict=True):
                predictions.append(
                    {
                        "id": q.key,
                        "shots": k,
                        "trial": t,
                        "prediction": verbalizers[int(p)].strip(),
                        "label": verbalizers[y].strip(),
                        "logprobs": [round(float(v), 4) for v in row],
                    }
                )
        entry: dict = {"shots": k, "mode": mode, "n": len(queries), **shown.stats()}
        for name, accs in per_trial.items():
            if accs:
                m, s = mean_std(accs)
                entry[name] = {"trials": accs, "mean": m, "std": s}
        entry.update(
            metric=f"accuracy ({headline if headline in entry else 'none'} calibration)",
            score=entry.get(headline, entry["none"])["mean"],
        )
        results.append(entry)
    return Outcome(results, predictions)


def choose(
    scorer: Scorer,
    examples: Sequence[tuple[Hashable, Sequence[tuple[Prompt, str]]]],
    labels: Sequence[int],
    pool: Sequence[Demo],
    settings: EvalSettings,
) -> Outcome:
    """Multiple choice: ``examples`` are ``(id, [(context, continuation), ...])``; the demonstrations are prefixed
    to every option's context. ``acc`` ranks by summed log-probability, ``acc_norm`` by mean per token."""
    shots, trials, seed, mode = settings.shots, settings.trials, settings.seed, settings.icl_mode
    shown = FittedPrompts(scorer, mode, settings.encode_input)
    results, predictions = [], []
    gold = np.asarray(labels)
    for k in shots:
        accs, norms = [], []
        for t in range(_trials(k, trials)):
            demos = sample_demos(pool, k, random.Random(seed + t))
            options = [[(shown(demos, ctx, _tokens(scorer, cont)), cont) for ctx, cont in opts] for _, opts in examples]
            scores = scorer.rank(options, desc=f"{k}-shot trial {t}")
            total = np.array([int(np.argmax([s.logprob for s in row])) for row in scores])
            norm = np.array([int(np.argmax([s.mean for s in row])) for row in scores])
            accs.append(float((total == gold).mean()))
            norms.append(float((norm == gold).mean()))
            for (key, _), y, row, p, pn in zip(examples, labels, scores, total, norm, strict=True):
                predictions.append(
                    {
                        "id": key,
                        "shots": k,
                        "trial": t,
                        "prediction": int(p),
                        "prediction_norm": int(pn),
                        "label": int(y),
                        "logprobs": [round(s.logprob, 4) for s in row],
                    }
                )
        (m, s), (mn, sn) = mean_std(accs), mean_std(norms)
        results.append(
            {
                "shots": k,
                "mode": mode,
                "n": len(examples),
                **shown.stats(),
                "acc": {"trials": accs, "mean": m, "std": s},
                "acc_norm": {"trials": norms, "mean": mn, "std": sn},
                "metric": "acc",
                "score": m,
            }
        )
    return Outcome(results, predictions)


def answer(
    scorer: Scorer,
    queries: Sequence[Query],
    pool: Sequence[Demo],
    settings: EvalSettings,
    decode: DecodeSettings,
    metric: Callable[[list[str]], dict[str, float]],
    headline: str | None,
) -> Outcome:
    """Generated answers, scored by ``metric(answers) -> {name: value}`` (answers in query order)."""
    shots, trials, seed, mode = settings.shots, settings.trials, settings.seed, settings.icl_mode
    shown = FittedPrompts(scorer, mode, settings.encode_input)
    results, predictions = [], []
    for k in shots:
        per_trial: dict[str, list[float]] = {}
        for t in range(_trials(k, trials)):
            demos = sample_demos(pool, k, random.Random(seed + t))
            answers = scorer.generate(
                [shown(demos, q.prompt, decode.max_new_tokens) for q in queries], decode, desc=f"{k}-shot trial {t}"
            )
            for name, value in metric(answers).items():
                per_trial.setdefault(name, []).append(float(value))
            predictions += [
                {"id": q.key, "shots": k, "trial": t, "prediction": a} for q, a in zip(queries, answers, strict=True)
            ]
        entry: dict = {"shots": k, "mode": mode, "n": len(queries), **shown.stats()}
        for name, vals in per_trial.items():
            m, s = mean_std(vals)
            entry[name] = {"trials": vals, "mean": m, "std": s}
        if headline in entry:
            entry.update(metric=headline, score=entry[headline]["mean"])
        results.append(entry)
    return Outcome(results, predictions)


def default_out(benchmark: str) -> Path:
    return Path("results") / f"{benchmark}.json"


def write_outputs(settings: EvalSettings, benchmark: str, header: dict, outcome: Outcome) -> Path:
    """Write ``<out>.json`` (everything needed to reproduce the number) and ``<out>.predictions.jsonl``."""
    out = Path(settings.out) if settings.out else default_out(benchmark)
    out.parent.mkdir(parents=True, exist_ok=True)
    preds = out.with_suffix(".predictions.jsonl")
    report = {
        "benchmark": benchmark,
        "checkpoint": str(settings.checkpoint),
        "shots": list(settings.shots),
        "trials": settings.trials,
        "seed": settings.seed,
        "icl_mode": settings.icl_mode,
        "encode_input": settings.encode_input,
        **header,
        "results": outcome.results,
        "predictions": str(preds),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)
    with preds.open("w") as f:
        for row in outcome.predictions:
            f.write(json.dumps(row, default=str) + "\n")
    return out


def print_summary(benchmark: str, header: dict, outcome: Outcome, out: Path) -> None:
    """The template and settings first (so a number is never quoted without them), then one line per shot count."""
    print(f"{benchmark}: {header.get('n', '?')} examples; template:")
    for line in str(header.get("template", "")).splitlines():
        print(f"    {line}")
    if "decoding" in header:
        print(f"decoding: {header['decoding']}")
    if header.get("skipped"):
        print(f"skipped: {header['skipped']}")
    for r in outcome.results:
        parts = []
        for name, val in r.items():
            if isinstance(val, dict) and "mean" in val:
                parts.append(f"{name} {val['mean']:.4f} ± {val['std']:.4f}")
        print(f"  {r['shots']}-shot ({r['mode']}): " + ", ".join(parts))
    print(f"results: {out}")


def limited(examples: Sequence, limit: int) -> list:
    return list(examples[:limit] if limit else examples)


def needs_pool(settings: EvalSettings, pool: Sequence[Demo]) -> None:
    """An error unless the demonstration pool holds enough examples for the largest shot count."""
    shots = settings.shots
    if max(shots) > 0 and len(pool) < max(shots):
        raise ValueError(
            f"--shots {','.join(map(str, shots))} needs at least {max(shots)} labeled demonstrations; the "
            f"demonstration pool has {len(pool)} (give a training split with the --demos flags)"
        )


def finish(settings: EvalSettings, benchmark: str, header: dict, outcome: Outcome) -> dict:
    """Write the results and predictions, print the summary, return the results dict."""
    out = write_outputs(settings, benchmark, header, outcome)
    print_summary(benchmark, header, outcome, out)
    return read_json(out, "results")
