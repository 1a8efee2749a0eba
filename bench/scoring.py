"""Multiple-choice scoring on the SmolLM2-135M shape: our scorer against transformers computing full logits.

Each example is a context (``--context`` random token ids) and ``--options`` continuations of ``--option_tokens``
ids, ARC-like by default (4 short options after a question under a chat template); ``--shape piqa`` adds the
PIQA-like case (2 options of 24 tokens). Both sides score every option's summed log-probability, fp32, same
weights, one process:

  metalm: ``eval.scoring.score_after_prefix``, the contexts batched and run once, their KV cache reused by every
    option, each option run over it less its last token, the output projection only at the scored positions;
  transformers: ``LlamaForCausalLM`` on every (context + option) row, right-padded, full logits at every position,
    log-softmax and gather: how lm-evaluation-harness and lighteval score with transformers.

Both must give the same log-probabilities (1e-3). The calls alternate and the best of ``--runs`` is kept, so other
processes on a shared CPU slow both alike. Real weights with ``--weights DIR`` (``assets/smollm2``), else random
weights of the same shape. Results go to ``bench/results/scoring.{json,md}``.

    python bench/scoring.py [--weights assets/smollm2] [--examples 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root (this checkout's metalm, bench)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.common import RESULTS, machine_info, time_alternating  # noqa: E402
from bench.smollm2 import load_pair  # noqa: E402
from eval.scoring import score_after_prefix  # noqa: E402

OURS, THEIRS = "metalm", "transformers-full-logits"
SHAPES = {"arc": dict(context=64, options=4, option_tokens=6), "piqa": dict(context=56, options=2, option_tokens=24)}


def workload(n: int, context: int, options: int, option_tokens: int, vocab: int, seed: int):
    """``n`` examples of random ids: contexts of ``context`` tokens, each with ``options`` continuations whose
    lengths vary from half to all of ``option_tokens`` (as real options do)."""
    g = torch.Generator().manual_seed(seed)
    contexts = [torch.randint(0, vocab, (context,), generator=g).tolist() for _ in range(n)]
    conts = [
        [
            torch.randint(
                0,
                vocab,
                (int(torch.randint(max(option_tokens // 2, 1), option_tokens + 1, (1,), generator=g)),),
                generator=g,
            ).tolist()
            for _ in range(options)
        ]
        for _ in range(n)
    ]
    return contexts, conts


def ours_scores(decoder, contexts, conts) -> list[float]:
    ids = torch.tensor(contexts)  # equal lengths: no padding
    mask = torch.ones_like(ids)
    with torch.no_grad():
        scores = score_after_prefix(decoder, decoder.embed(ids), mask, conts)
    return [s.logprob for row in scores for s in row]


def theirs_scores(hf, contexts, conts) -> list[float]:
    rows = [(ctx, c) for ctx, opts in zip(contexts, conts, strict=True) for c in opts]
    width = max(len(ctx) + len(c) for ctx, c in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (ctx, c) in enumerate(rows):
        ids[r, : len(ctx) + len(c)] = torch.tensor(ctx + c)
        mask[r, : len(ctx) + len(c)] = 1
    with torch.no_grad():
        logp = hf(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for r, (ctx, c) in enumerate(rows):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(c) - 1)
        out.append(float(logp[r, positions, torch.tensor(c)].sum()))
    return out


def bench_shape(hf, ours, name: str, args) -> dict:
    shape = SHAPES[name]
    contexts, conts = workload(args.examples, **shape, vocab=ours.cfg.vocab_size, seed=args.seed)
    calls = {OURS: lambda: ours_scores(ours, contexts, conts), THEIRS: lambda: theirs_scores(hf, contexts, conts)}
    got = {k: f() for k, f in calls.items()}  # warm-up, and the scores to compare
    diff = max(abs(a - b) for a, b in zip(got[OURS], got[THEIRS], strict=True))
    if diff > 1e-3:
        raise AssertionError(f"{name}: the two scorers differ by {diff:.2e} nats")
    times = time_alternating(calls, args.runs, torch.device("cpu"))
    n_options = sum(len(c) for c in conts)
    rows = {
        k: {"call_s_best": min(ts), "call_s_all": ts, "options_per_s": n_options / min(ts)} for k, ts in times.items()
    }
    return {
        **shape,
        "examples": args.examples,
        "options_scored": n_options,
        "max_abs_diff_nats": diff,
        "results": rows,
        "ratio": rows[OURS]["options_per_s"] / rows[THEIRS]["options_per_s"],
    }


def report(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Multiple-choice scoring, SmolLM2-135M shape: metalm vs transformers full logits ({result['weights']})",
        "",
        f"fp32 on {m['device']} ({m['cpu']}, {m['threads']} threads), torch {m['torch']}, transformers "
        f"{m['transformers']}. metalm: contexts run once with their KV cache reused by every option, logits only at "
        "scored positions (eval.scoring.score_after_prefix); transformers: every context + option row, full logits. "
        f"Calls alternate; best of {result['runs']}. Scores agree to the stated difference.",
        f"Command: `{m['command']}`",
        "",
        "| shape | examples x options | option tokens | metalm (s) | transformers (s) | max diff (nats) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["shapes"].items():
        lines.append(
            f"| {name} (context {r['context']}) | {r['examples']} x {r['options']} | <= {r['option_tokens']} | "
            f"{r['results'][OURS]['call_s_best']:.2f} | {r['results'][THEIRS]['call_s_best']:.2f} | "
            f"{r['max_abs_diff_nats']:.1e} | **{r['ratio']:.2f}x** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="transformers Llama directory; default: seeded random weights")
    parser.add_argument("--examples", type=int, default=16, help="examples scored per call")
    parser.add_argument("--shape", choices=(*SHAPES, "both"), default="both")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per scorer, after one warm-up; best is kept")
    parser.add_argument("--threads", type=int, help="torch intra-op threads; default: torch's own choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf, ours = load_pair(args.weights, args.seed)
    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    result = {
        "benchmark": "multiple-choice scoring, SmolLM2-135M shape, metalm vs transformers full logits, fp32",
        "weights": str(args.weights) if args.weights else f"random (seed {args.seed})",
        "runs": args.runs,
        "machine": machine_info(torch.device("cpu")),
        "shapes": {name: bench_shape(hf, ours, name, args) for name in shapes},
    }
    summary = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("scoring.json", json.dumps(result, indent=2) + "\n"), ("scoring.md", summary)):
        (args.out / name).write_text(text)
    print(summary)


if __name__ == "__main__":
    main()
