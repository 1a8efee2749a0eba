"""The language-small MetaLM (SmolLM2-135M-Instruct + MiniLM-L6) against SmolLM2 alone, on real text and a real
task: the helpers that the commands in ``results/real/language-small/README.md`` run around the training scripts.

    python eval/language_small.py documents --text PTB/ptb.valid.txt --lines 40 --out runs/claims/ptb-valid.jsonl
    python eval/language_small.py split --data SST-2/dev.tsv --train 600 --seed 0 --out_dir runs/claims/sst2
    python eval/language_small.py perplexity --checkpoint runs/claims/warmup/final --text PTB/ptb.test.txt \\
        --out results/real/language-small/ppl-warmed.json
    python eval/language_small.py report --dir results/real/language-small

``documents`` turns a text file of lines (the Penn Treebank's) into JSONL documents of ``--lines`` lines each, for
``python -m data.shards text``. ``split`` cuts a labeled GLUE tsv (a dev file, the only labeled one at hand) into a
seeded training part and a held-out part, header kept, so finetuning trains on one and is scored on the other.

``perplexity`` measures how well the decoder predicts text after a span it has *read through the encoder*: the
text is tokenized by the decoder's tokenizer and cut into windows; in each, a seeded span (start in the first
quarter but never first, length ``--span_min..--span_max`` decoder tokens, as pretraining draws them) is read one
of three ways, and only the tokens after the span are scored, the same tokens in every arm:

- ``causal``: the decoder reads the span as ordinary text (SmolLM2 alone; the best the span's content can help);
- ``encoder``: the text encoder reads the span with its own tokenizer and the connector docks its vectors at one
  placeholder position per encoder id (MetaLM's semi-causal layout, as pretraining builds it);
- ``dropped``: the span is removed (no information from it at all);
- ``encoder_other``: the encoder reads *the next window's* span in its place (a control: what the docked vectors
  give beyond the span's content, e.g. the style of the text the connector was trained on).

A model without a text encoder has the ``causal`` and ``dropped`` arms only. What the encoder arm recovers of the
gap between ``dropped`` and ``causal`` is what the docked encoder conveys to the decoder.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402

ARMS = ("causal", "encoder", "dropped", "encoder_other")
ENCODER_ARMS = ("encoder", "encoder_other")


def split_tsv(data: str | Path, train: int, seed: int, out_dir: str | Path) -> dict:
    """Write ``out_dir/train.tsv`` (``train`` seeded rows of ``data``) and ``out_dir/heldout.tsv`` (the rest), each
    with ``data``'s header row; returns the counts."""
    path = Path(data)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < 3:
        raise ValueError(f"{path}: expected a header row and at least two example rows, found {len(lines)} lines")
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    if not 0 < train < len(rows):
        raise ValueError(f"--train {train}: expected between 1 and {len(rows) - 1} ({path} has {len(rows)} rows)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": sorted(order[:train]), "heldout": sorted(order[train:])}
    for name, index in parts.items():
        (out / f"{name}.tsv").write_text(header + "".join(rows[i] for i in index), encoding="utf-8")
    return {"source": str(path), "seed": seed, **{name: len(index) for name, index in parts.items()}}


def line_documents(text: str | Path, lines: int, out: str | Path) -> int:
    """Write the non-empty lines of text file ``text`` as JSONL documents (``{"text": ...}``) of ``lines`` lines each
    (the last may be shorter), the input ``python -m data.shards text`` turns into pretraining shards; returns the
    number of documents."""
    if lines < 1:
        raise ValueError(f"--lines {lines}: expected at least 1")
    rows = [line.strip() for line in Path(text).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{text}: no text lines")
    docs = ["\n".join(rows[i : i + lines]) for i in range(0, len(rows), lines)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return len(docs)


def windows(ids: list[int], window: int, limit: int) -> list[list[int]]:
    """Consecutive non-overlapping ``window``-token pieces of ``ids`` (the last partial one dropped), at most
    ``limit`` of them (0: all)."""
    pieces = [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)]
    return pieces[:limit] if limit else pieces


def draw_span(window: int, span_min: int, span_max: int, rng: random.Random) -> tuple[int, int]:
    """A span ``[start, end)``: start uniform in the window's first quarter but never 0 (with the span dropped, the
    token after it is then predicted from the one before), length uniform in ``[span_min, span_max]``; at least one
    token is left after it."""
    if not 1 <= span_min <= span_max or window // 4 + span_max >= window:
        raise ValueError(
            f"spans of {span_min}..{span_max} tokens do not fit a {window}-token window with text after them"
        )
    start = rng.randint(1, max(1, window // 4))
    return start, start + rng.randint(span_min, span_max)


def span_perplexity(
    model,
    tokenizer,
    text: str,
    window: int = 128,
    span_min: int = 16,
    span_max: int = 32,
    seed: int = 0,
    limit: int = 0,
    batch_size: int = 8,
    arms: tuple[str, ...] = ARMS,
    progress: bool = False,
) -> dict:
    """Perplexity of the tokens after each window's span, per arm (see the module's docstring), and the number of
    tokens scored (the same in every arm)."""
    import torch

    from data.layout import placeholder_ids
    from data.prompts import Encoded, PromptEncoder
    from metalm.loss import IGNORE_INDEX

    enc = PromptEncoder(model, tokenizer)
    encoded = bool(set(arms) & set(ENCODER_ARMS))
    if encoded and enc.text_tokenizer is None:
        raise ValueError("the encoder arm needs a text encoder with its own tokenizer (hf_text); this model has none")
    pieces = windows(tokenizer.encode(text), window, limit)
    if not pieces:
        raise ValueError(f"the text has fewer than {window} tokens: no window to score")
    spans = [draw_span(window, span_min, span_max, random.Random(seed * 100_003 + i)) for i in range(len(pieces))]
    own = [enc.own_ids(ids[s:e]) for ids, (s, e) in zip(pieces, spans, strict=True)] if encoded else []
    totals = {arm: 0.0 for arm in arms}
    counts = {arm: 0 for arm in arms}
    started = time.time()
    for arm in arms:
        for b in range(0, len(pieces), batch_size):
            rows, firsts = [], []
            for i in range(b, min(b + batch_size, len(pieces))):
                ids, (s, e) = pieces[i], spans[i]
                if arm == "causal":
                    row, first = Encoded(list(ids)), e
                elif arm == "dropped":
                    row, first = Encoded(ids[:s] + ids[e:]), s
                else:
                    read = own[i if arm == "encoder" else (i + 1) % len(pieces)]
                    row = Encoded(ids[:s] + placeholder_ids(tokenizer, len(read)) + ids[e:], own_spans=[(s, read)])
                    first = s + len(read)
                rows.append(row)
                firsts.append(first)
            input_ids, mask, docks = enc.collate(rows)  # right-padded: padding is no target (attention_mask)
            before = torch.arange(input_ids.shape[1]) < torch.tensor(firsts)[:, None]
            labels = input_ids.masked_fill(before, IGNORE_INDEX)
            with torch.no_grad():
                out = model(input_ids, docks=docks, attention_mask=mask, labels=labels)
            totals[arm] += float(out.loss) * int(out.n_targets)
            counts[arm] += int(out.n_targets)
            if progress:
                print(f"  {arm}: {min(b + batch_size, len(pieces))}/{len(pieces)} windows", file=sys.stderr)
    if len(set(counts.values())) != 1:
        raise AssertionError(f"the arms scored different numbers of tokens: {counts}")
    return {
        "perplexity": {arm: math.exp(totals[arm] / counts[arm]) for arm in arms},
        "nll": {arm: totals[arm] / counts[arm] for arm in arms},
        "tokens_scored": counts[arms[0]],
        "windows": len(pieces),
        "window": window,
        "span_min": span_min,
        "span_max": span_max,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }


def parser() -> FlagParser:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="a labeled tsv -> train.tsv + heldout.tsv (seeded)")
    s.add_argument("--data", required=True, help="a GLUE tsv with a header row (e.g. SST-2 dev.tsv)")
    s.add_argument("--train", type=int, required=True, help="rows in the training part; the rest are held out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out_dir", required=True)
    d = sub.add_parser("documents", help="a text file's lines -> JSONL documents of --lines lines (for shards)")
    d.add_argument("--text", required=True)
    d.add_argument("--lines", type=int, default=40)
    d.add_argument("--out", required=True)
    q = sub.add_parser("perplexity", help="perplexity after spans read causally, by the encoder, or dropped")
    q.add_argument("--checkpoint", required=True, help="a MetaLM checkpoint directory")
    q.add_argument("--text", required=True, help="a plain text file (e.g. the Penn Treebank test text)")
    q.add_argument("--window", type=int, default=128, help="decoder tokens per window")
    q.add_argument("--span_min", type=int, default=16)
    q.add_argument("--span_max", type=int, default=32)
    q.add_argument("--seed", type=int, default=0, help="seed of the spans")
    q.add_argument("--limit", type=int, default=0, help="windows scored (0: all)")
    q.add_argument("--batch_size", type=int, default=8)
    q.add_argument("--arms", default="", help=f"comma-separated arms (default: all of {', '.join(ARMS)})")
    q.add_argument("--out", required=True, help="results JSON")
    r = sub.add_parser("report", help="the markdown table of the JSON files in --dir")
    r.add_argument("--dir", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "split":
        print(json.dumps(split_tsv(args.data, args.train, args.seed, args.out_dir)))
        return
    if args.command == "documents":
        print(f"{line_documents(args.text, args.lines, args.out)} documents -> {args.out}")
        return
    if args.command == "report":
        print(report(Path(args.dir)))
        return
    import torch

    from data.tokenizer import Tokenizer
    from metalm import MetaLM
    from metalm.io import atomic_write_text

    torch.manual_seed(0)
    model = MetaLM.from_pretrained(args.checkpoint).eval()
    tokenizer = Tokenizer.load(args.checkpoint)
    arms = tuple(args.arms.split(",")) if args.arms else ARMS
    if "text" not in model.encoders:
        arms = tuple(a for a in arms if a not in ENCODER_ARMS)
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms {args.arms!r}: unknown {sorted(unknown)}; expected some of {', '.join(ARMS)}")
    text = Path(args.text).read_text(encoding="utf-8")
    result = span_perplexity(
        model,
        tokenizer,
        text,
        args.window,
        args.span_min,
        args.span_max,
        args.seed,
        args.limit,
        args.batch_size,
        arms,
        progress=True,
    )
    result.update(checkpoint=args.checkpoint, text=args.text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["perplexity"]), f"({result['tokens_scored']} tokens, {result['seconds']} s)")


PPL_ROWS = (
    ("ppl-smollm2.json", "SmolLM2 alone"),
    ("ppl-metalm-untrained.json", "language-small, connector untrained"),
    ("ppl-metalm-warmed.json", "language-small, after the warm-up"),
)
FT_ARMS = {
    "smollm2-unfrozen": "SmolLM2 alone, finetuned (input read causally)",
    "metalm-unfrozen": "language-small, finetuned, decoder too (input read by MiniLM)",
    "metalm-frozen": "language-small, decoder frozen (input read by MiniLM)",
    "metalm-frozen-lr1e-3": "language-small, decoder frozen, lr 1e-3 (input read by MiniLM)",
}
ZERO_SHOT = {
    "smollm2": "SmolLM2 alone, zero-shot",
    "metalm-warmed": "language-small after the warm-up, zero-shot (input read by MiniLM)",
}
ICL = {"smollm2-causal": "SmolLM2 (causal)", "metalm-encoder_inputs": "language-small (inputs read by MiniLM)"}
CALIBRATION_COLUMNS = ("none", "contextual", "prototypical")


def _rank(known: dict, name: str) -> tuple[int, str]:
    """Known names in their table order, then the others by name."""
    return (list(known).index(name), "") if name in known else (len(known), name)


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def report(folder: Path) -> str:
    """Markdown tables of the JSON files this module's commands and the training scripts wrote into ``folder``:
    span perplexity (``ppl-*.json``), finetuning (``ft-ARM-sSEED.json``: a finetuning run's ``eval.json``),
    zero-shot and in-context accuracy (``zeroshot-*.json``, ``icl-*.json``: eval/glue.py results)."""
    out = []
    ppl = [(label, json.loads((folder / name).read_text())) for name, label in PPL_ROWS if (folder / name).is_file()]
    if ppl:
        first = ppl[0][1]
        out += [
            f"Penn Treebank test: perplexity of the {first['tokens_scored']} tokens that follow a span "
            f"({first['windows']} windows of {first['window']} tokens, spans of "
            f"{first['span_min']}-{first['span_max']} tokens, seed {first['seed']})",
            "",
            "| model | span read causally | span read by MiniLM | span dropped | MiniLM reads another window's span |",
            "|---|---|---|---|---|",
        ]
        for label, r in ppl:
            cells = [f"{r['perplexity'][arm]:.2f}" if arm in r["perplexity"] else "—" for arm in ARMS]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("ft-*-s*.json")):
        runs.setdefault(path.stem.rsplit("-s", 1)[0].removeprefix("ft-"), []).append(json.loads(path.read_text()))
    zero = {p.stem.removeprefix("zeroshot-"): json.loads(p.read_text()) for p in sorted(folder.glob("zeroshot-*.json"))}
    zero = dict(sorted(zero.items(), key=lambda kv: _rank(ZERO_SHOT, kv[0])))
    runs = dict(sorted(runs.items(), key=lambda kv: _rank(FT_ARMS, kv[0])))
    if runs or zero:
        out += ["SST-2 held-out accuracy (%), label words ranked, mean ± std over seeds", ""]
        out += ["| model | seeds | no calibration | contextual | prototypical |", "|---|---|---|---|---|"]
        for name, r in zero.items():
            row = r["results"][0]
            cells = [f"{100 * row[c]['mean']:.1f}" for c in CALIBRATION_COLUMNS]
            out.append(
                f"| {ZERO_SHOT.get(name, name + ', zero-shot')} (n = {r['n']}) | — | " + " | ".join(cells) + " |"
            )
        for arm, results in runs.items():
            cells = [_mean_std([r["results"][0][c]["mean"] for r in results]) for c in CALIBRATION_COLUMNS]
            out.append(
                f"| {FT_ARMS.get(arm, arm)} (n = {results[0]['n']}) | {len(results)} | " + " | ".join(cells) + " |"
            )
        out.append("")
    icl = {p.stem.removeprefix("icl-"): json.loads(p.read_text()) for p in sorted(folder.glob("icl-*.json"))}
    icl = dict(sorted(icl.items(), key=lambda kv: _rank(ICL, kv[0])))
    if icl:
        names = list(icl)
        out += [
            "SST-2 in-context accuracy (%), demonstrations drawn from the training part, mean ± std over trials",
            "",
            "| k | " + " | ".join(f"{ICL.get(n, n)}: {c}" for n in names for c in CALIBRATION_COLUMNS) + " |",
            "|---|" + "---|" * (len(names) * len(CALIBRATION_COLUMNS)),
        ]
        shots = sorted({row["shots"] for r in icl.values() for row in r["results"]})
        for k in shots:
            cells = []
            for name in names:
                row = next((row for row in icl[name]["results"] if row["shots"] == k), None)
                for c in CALIBRATION_COLUMNS:
                    cells.append(_mean_std(row[c]["trials"]) if row else "—")
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) if out else f"no results in {folder}"


if __name__ == "__main__":
    main()
