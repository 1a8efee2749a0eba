"""In-context learning and calibration of a decoder on real classification files (SST-2, RTE, BoolQ): accuracy at
each k with no, contextual (Zhao et al. 2021) and prototypical (Han et al. 2022) calibration, mean and standard
deviation over seeded demonstration sets; a JSON per task, a markdown table and a plot over all tasks in --out_dir.

    python eval/icl_real.py --checkpoint assets/smollm2 --data sst2=SST-2/dev.tsv rte=RTE/dev.tsv \\
        boolq=BoolQ/val.jsonl --shots 0,1,4,8 --trials 3 --limit sst2=400,boolq=120 --out_dir results/real/icl

Prompts are the item-1 zero-shot ones (``data.templates.CLASSIFICATION`` for SST-2 and RTE, ``read_boolq``'s for
BoolQ), plain text without a chat template; a demonstration is the prompt followed by its label word, and
demonstrations are joined by a blank line before the query. Label words are ranked by summed log-probability (the
decoder alone, ``eval.lighteval.DecoderLM``: tokens as transformers gives them, the shared context encoded once and
its KV cache reused by every query, logits only at the scored positions). These files have no training split, so
``--pool_size`` rows of each (drawn by ``--seed``) are set aside as the demonstration pool and the queries are the
first ``--limit`` of the rest (``eval.icl.split_pool``): no query can be shown as a demonstration. Contextual
calibration reads the content-free inputs "N/A", "" and "[MASK]" under the same demonstrations; prototypical
calibration fits its mixture to the queries' own label log-probabilities (unlabeled, as Han et al.'s script does).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402
from eval.settings import CALIBRATIONS, DTYPES, shots_list  # noqa: E402

TASKS = ("sst2", "rte", "boolq")
DRAWS = ("per_trial", "per_example")  # eval.icl.DRAWS, spelled here so --help does not load the library
BOOLQ = "{passage}\nQuestion: {question}?\nAnswer:"  # read_boolq's context


def task_files(values: list[str]) -> dict[str, str]:
    """``["sst2=dev.tsv", ...]`` -> ``{"sst2": "dev.tsv", ...}`` (for ``--data``)."""
    out = {}
    for value in values:
        task, eq, path = value.partition("=")
        if not eq or task not in TASKS or not path:
            raise ValueError(f"--data {value!r}: expected TASK=PATH with TASK one of {TASKS}")
        if task in out:
            raise ValueError(f"--data names {task} twice")
        out[task] = path
    return out


def task_limits(text: str, tasks: list[str]) -> dict[str, int]:
    """``"400"`` (every task) or ``"sst2=400,boolq=120"`` (others: all) -> queries per task (0: all)."""
    text = str(text).strip()
    try:
        if "=" not in text:
            return dict.fromkeys(tasks, int(text))
        out = dict.fromkeys(tasks, 0)
        for part in text.split(","):
            task, _, n = part.partition("=")
            if task.strip() not in tasks:
                raise ValueError(f"--limit names {task.strip()!r}, which is not among --data's tasks {tasks}")
            out[task.strip()] = int(n)
    except ValueError as err:
        if "--limit" in str(err):
            raise
        raise ValueError(f"--limit {text!r}: expected N or TASK=N,TASK=N") from err
    if any(n < 0 for n in out.values()):
        raise ValueError(f"--limit {text!r}: counts must be >= 0")
    return out


def parser() -> FlagParser:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a transformers decoder directory or a MetaLM checkpoint")
    p.add_argument("--data", default=[], nargs="+", help="TASK=PATH for each task: sst2 / rte tsv, boolq jsonl")
    p.add_argument("--shots", default="0,1,4,8", help="comma-separated numbers of demonstrations")
    p.add_argument("--trials", type=int, default=3, help="seeded demonstration sets per k > 0 (one at k = 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pool split and of the first trial")
    p.add_argument("--demos", choices=DRAWS, default="per_trial", help="one set per trial, or one per query (GPT-3)")
    p.add_argument("--pool_size", type=int, default=64, help="rows of each file set aside as the demonstration pool")
    p.add_argument("--limit", default="0", help="queries per task: N, or TASK=N,TASK=N (0: all the rest)")
    p.add_argument("--restarts", type=int, default=100, help="prototypical calibration's EM restarts")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the decoder's weights and activations")
    p.add_argument("--batch_size", type=int, default=16, help="label words scored per forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out_dir", default="results/real/icl", help="icl-TASK.json per task; table and plot of all")
    p.add_argument("--report", action="store_true", help="only rebuild the table and plot from --out_dir's JSON")
    return p


def read_items(task: str, path: str):
    """``(keys, queries, labels, verbalizers, template)`` of a task file: each query is its zero-shot prompt."""
    from data.tasks import read_boolq, read_glue
    from data.templates import CLASSIFICATION

    if task == "boolq":
        examples = read_boolq(path).examples
        return (
            [ex.id for ex in examples],
            [ex.options[0][0] for ex in examples],
            [ex.label for ex in examples],
            [" no", " yes"],
            BOOLQ,
        )
    template = CLASSIFICATION[task]
    examples = read_glue(path, task).examples
    labels = [template.index(ex.label, f"{path}: example {ex.id}") for ex in examples]
    return (
        [ex.id for ex in examples],
        [template.text.format(**ex.texts) for ex in examples],
        labels,
        template.verbalizers,
        template.text,
    )


def content_free(template: str) -> list[str]:
    """The template with every field set to each content-free string (Zhao et al. 2021: "N/A", "", "[MASK]")."""
    import string

    from data.templates import CONTENT_FREE

    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return [template.format(**dict.fromkeys(fields, cf)) for cf in CONTENT_FREE]


def run_task(lm, task: str, path: str, args, limit: int, bar, save=None) -> dict:
    """Every k and trial of one task: label log-probabilities, then accuracy under each calibration. ``save`` gets
    the report so far after each k (``complete`` False until the last), so a long sweep leaves what it finished."""
    import numpy as np

    from eval.calibration import PrototypicalCalibration, contextual_calibration
    from eval.icl import Demo, draw_demos, prompt_text, split_pool
    from eval.metrics import mean_std

    keys, queries, labels, verbalizers, template = read_items(task, path)
    query_idx, pool_idx = split_pool(len(keys), args.pool_size, args.seed)
    if limit:
        query_idx = query_idx[:limit]
    pool = [Demo(queries[i], verbalizers[labels[i]], keys[i]) for i in pool_idx]
    gold = np.array([labels[i] for i in query_idx])
    neutral = content_free(template)
    n_labels = len(verbalizers)
    results, runs = [], []
    start = time.time()

    def report(results: list, runs: list, complete: bool) -> dict:
        return {
            "task": task,
            "data": path,
            "n": len(query_idx),
            "pool": len(pool_idx),
            "queries": f"the first {len(query_idx)} rows not in the pool, in file order",
            "label_prior": np.bincount(gold, minlength=n_labels).tolist(),
            "template": template,
            "verbalizers": verbalizers,
            "content_free": neutral,
            "demonstration_format": "{prompt}{label word}\\n\\n ... {query}",
            "results": results,
            "seconds": round(time.time() - start, 1),
            "query_ids": [keys[i] for i in query_idx],
            "runs": runs,
            "complete": complete,
        }

    for k in args.shots:
        accs: dict[str, list[float]] = {c: [] for c in CALIBRATIONS}
        for trial in range(1 if k == 0 else args.trials):
            demos = draw_demos(pool, k, [keys[i] for i in query_idx], args.demos, args.seed, trial)
            contexts = [prompt_text(d, queries[i]) for d, i in zip(demos, query_idx, strict=True)]
            cf_sets = [demos[0]] if args.demos == "per_trial" else demos  # content-free under each distinct set
            cf_contexts = [prompt_text(d, cf) for d in cf_sets for cf in neutral]
            requests = [(c, v) for c in contexts + cf_contexts for v in verbalizers]
            bar.set_postfix_str(f"{task} k={k} trial {trial}")
            scores = lm.loglikelihood(requests, desc=f"{task} {k}-shot trial {trial}")
            logp = np.array([s.logprob for s in scores]).reshape(-1, n_labels)
            query_lp, cf_lp = logp[: len(contexts)], logp[len(contexts) :].reshape(len(cf_sets), len(neutral), -1)
            preds = {"none": query_lp.argmax(1)}
            if args.demos == "per_trial":
                preds["contextual"] = contextual_calibration(query_lp, cf_lp[0]).argmax(1)
            else:
                preds["contextual"] = np.array(
                    [contextual_calibration(row[None], cf)[0].argmax() for row, cf in zip(query_lp, cf_lp, strict=True)]
                )
            proto = PrototypicalCalibration(n_labels, restarts=args.restarts, seed=args.seed + trial).fit(query_lp)
            preds["prototypical"] = proto.predict(query_lp)
            for name, p in preds.items():
                accs[name].append(float((p == gold).mean()))
            runs.append(
                {
                    "shots": k,
                    "trial": trial,
                    "demonstrations": sorted({d.key for ds in demos for d in ds}, key=str)
                    if args.demos == "per_trial"
                    else "per query",
                    "logprobs": np.round(query_lp, 4).tolist(),
                    "content_free_logprobs": np.round(cf_lp, 4).tolist(),
                    "prototypical_restart": proto.restart_,
                }
            )
            bar.update(1)
        entry: dict = {"shots": k, "trials": len(accs["none"])}
        for name, values in accs.items():
            m, s = mean_std(values)
            entry[name] = {"trials": values, "mean": m, "std": s}
        results.append(entry)
        if save is not None and k != args.shots[-1]:
            save(report(results, runs, complete=False))
    return report(results, runs, complete=True)


def pct(entry: dict) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def write_report(out_dir: Path) -> tuple[Path, Path]:
    """The markdown table and the plot (accuracy vs k per task, a line per calibration) of every icl-*.json."""
    import json

    from metalm.io import pyplot

    plt = pyplot()

    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("icl-*.json"))]
    reports.sort(key=lambda r: TASKS.index(r["task"]) if r["task"] in TASKS else len(TASKS))
    lines = [
        "| task | n queries (pool) | k | trials | no calibration | contextual | prototypical | majority | run time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        majority = 100 * max(r["label_prior"]) / sum(r["label_prior"])
        for e in r["results"]:
            task = r["task"] if r.get("complete", True) else f"{r['task']} (unfinished)"
            row = [task, f"{r['n']} ({r['pool']})", str(e["shots"]), str(e["trials"])]
            row += [pct(e[c]) for c in CALIBRATIONS] + [f"{majority:.1f}", f"{r['seconds']:.0f} s (task)"]
            lines.append("| " + " | ".join(row) + " |")
    table = out_dir / "icl.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, axes = plt.subplots(1, max(len(reports), 1), figsize=(4.2 * max(len(reports), 1), 3.4), squeeze=False)
    for ax, r in zip(axes[0], reports, strict=False):
        ks = [e["shots"] for e in r["results"]]
        for c, marker in zip(CALIBRATIONS, "osd", strict=True):
            mean = [100 * e[c]["mean"] for e in r["results"]]
            std = [100 * e[c]["std"] for e in r["results"]]
            ax.errorbar(ks, mean, yerr=std, marker=marker, capsize=3, label=c)
        ax.axhline(100 * max(r["label_prior"]) / sum(r["label_prior"]), color="grey", ls=":", label="majority")
        ax.set(title=f"{r['task']} (n={r['n']})", xlabel="k (demonstrations)", ylabel="accuracy (%)", xticks=ks)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    plot = out_dir / "icl.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return table, plot


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a long sweep is
    if args.report:
        print("wrote", *write_report(Path(args.out_dir)))
        return {}
    if not args.data or not args.checkpoint:
        p.error("--checkpoint and --data TASK=PATH are required (or --report alone)")
    files = task_files(args.data)
    args.shots = shots_list(args.shots)
    limits = task_limits(args.limit, list(files))
    if args.trials < 1 or args.pool_size < 1 or args.restarts < 1 or args.batch_size < 1:
        p.error("--trials, --pool_size, --restarts and --batch_size must be at least 1")
    if max(args.shots) > args.pool_size:
        p.error(f"--shots up to {max(args.shots)} needs --pool_size of at least that many")
    import json

    import torch
    from tqdm.auto import tqdm

    from eval.lighteval import DecoderLM
    from metalm.io import atomic_write_text

    lm = DecoderLM.load(
        args.checkpoint, device=args.device, batch_size=args.batch_size, dtype=getattr(torch, args.dtype)
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_runs = len(files) * sum(1 if k == 0 else args.trials for k in args.shots)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "limit", "out_dir")}
    out: dict = {}
    with tqdm(total=n_runs, desc="icl runs", unit="run") as bar:
        for task, path in files.items():

            def save(report: dict, task: str = task) -> None:
                report["settings"] = {**settings, "limit": limits[task], "checkpoint": str(args.checkpoint)}
                atomic_write_text(out_dir / f"icl-{task}.json", json.dumps(report, indent=1) + "\n")

            report = run_task(lm, task, path, args, limits[task], bar, save)
            save(report)
            out[task] = report
            summary = ", ".join(
                f"k={e['shots']}: " + " / ".join(pct(e[c]) for c in CALIBRATIONS) for e in report["results"]
            )
            print(f"{task} (n={report['n']}, {report['seconds']:.0f} s) none / contextual / prototypical: {summary}")
    table, plot = write_report(out_dir)
    print(f"wrote {', '.join(str(out_dir / f'icl-{t}.json') for t in files)}, {table}, {plot}")
    return out


if __name__ == "__main__":
    main()
