"""The paper's claims in miniature: MetaLM against a plain causal GPT of the same decoder size, on the bundled world.

    python eval/report.py                       # trains both models, finetunes, evaluates, writes the report
    python eval/report.py --metalm runs/tiny/final   # reuse the main command's checkpoint instead of pretraining

Both models have the ``tiny`` decoder and are pretrained for the same number of steps on batches of the same size
and length (equal decoder compute): MetaLM on the world's documents (with semi-causal spans through its text
encoder) and image-caption pairs, the GPT on the same documents read causally. Then, as the paper does:

- **finetuning**: both are finetuned on the world's entailment task for the same steps (MetaLM reads the input
  through its bidirectional encoder, the GPT causally); MetaLM is also finetuned on VQA;
- **zero-shot**: held-out colour-shape pairs for captions and (after VQA finetuning) questions; the language tasks
  with no demonstrations;
- **in-context**: k = 0, 1, 4 demonstrations (several seeded trials), with no, contextual and prototypical
  calibration; MetaLM also with its demonstrations docked through the encoder.

The numbers go to ``results/report.md`` (tables and plots) and ``report.json``, whatever they say.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402
from eval.settings import NEW_TOKENS, DecodeSettings, EvalSettings, shots_list  # noqa: E402


def pretrain_run(args: argparse.Namespace, **fields) -> None:
    """Pretraining (train/pretrain.py's job, in this process) for ``args.steps`` steps on ``args.world``."""
    # the training library loads torch and the model code (seconds): imported here so --help answers at once
    from train.pretraining import PretrainConfig, pretrain

    cfg = PretrainConfig(max_steps=args.steps, world=args.world, eval_every=0, seed=args.seed, **fields)
    pretrain(cfg)  # it checks the config first


def finetune_run(args: argparse.Namespace, base: Path, task: str, out: Path) -> None:
    """Finetuning (train/finetune.py's job, in this process) from ``base`` on ``task`` with the report's settings."""
    from train.finetuning import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        init_from=str(base),
        task=task,
        out=str(out),
        world=args.world,
        max_steps=args.finetune_steps,
        lr=args.finetune_lr,
        final_eval=False,
        seed=args.seed,
    )
    finetune(cfg)  # it checks the config first


def pretrain(args: argparse.Namespace, runs: Path) -> dict[str, Path]:
    models = {}
    if args.metalm:
        models["metalm"] = Path(args.metalm)
    else:
        pretrain_run(args, out=str(runs / "metalm"))
        models["metalm"] = runs / "metalm" / "final"
    if args.gpt:
        models["gpt"] = Path(args.gpt)
    else:
        # the GPT reads the same world tokenizer, so both score the same token sequences
        tok = models["metalm"]
        pretrain_run(args, preset="tiny-gpt", tokenizer=str(tok), out=str(runs / "gpt"), vision_warmup_steps=0)
        models["gpt"] = runs / "gpt" / "final"
    return models


def finetune(args: argparse.Namespace, name: str, base: Path, task: str, runs: Path) -> Path:
    out = runs / f"{name}-{task}"
    if args.reuse and (out / "final" / "model.safetensors").is_file():
        print(f"reusing {out / 'final'}")
        return out / "final"
    finetune_run(args, base, task, out)
    return out / "final"


def world_eval(
    args: argparse.Namespace,
    ckpt: Path,
    out: Path,
    split: str,
    tasks: str,
    shots: str = "0",
    icl_mode: str = "causal",
    encode_input: bool = False,
) -> dict:
    """The world's ``tasks`` (comma-separated) on ``split`` for ``ckpt``, as ``eval/world.py`` runs them by
    default; returns each task's results."""
    # the evaluation library loads torch and the model code (seconds): imported here so --help answers at once
    from eval.evaluators import evaluate_world

    settings = EvalSettings(
        ckpt,
        out,
        shots_list(shots),
        args.trials,
        args.seed,
        icl_mode,
        encode_input,
        args.limit,
        decode=DecodeSettings(max_new_tokens=NEW_TOKENS["vqa"]),
    )
    return evaluate_world(args.world, split, tasks.split(","), settings)["tasks"]


def headline(entry: dict, key: str) -> tuple[float, float]:
    value = entry.get(key)
    return (value["mean"], value["std"]) if isinstance(value, dict) else (float("nan"), float("nan"))


def fmt(mean_std: tuple[float, float]) -> str:
    m, s = mean_std
    if m != m:  # nan
        return "–"
    return f"{m:.3f} ± {s:.3f}" if s else f"{m:.3f}"


def run(args: argparse.Namespace) -> dict:
    runs, results = Path(args.runs), Path(args.results)
    runs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    started = time.time()
    models = pretrain(args, runs)
    ft = {
        ("metalm", "world-entail"): finetune(args, "metalm", models["metalm"], "world-entail", runs),
        ("gpt", "world-entail"): finetune(args, "gpt", models["gpt"], "world-entail", runs),
        ("metalm", "world-vqa"): finetune(args, "metalm", models["metalm"], "world-vqa", runs),
    }
    evals = results / "report-evals"
    report: dict = {"settings": vars(args), "models": {k: str(v) for k, v in models.items()}}

    # in-context and zero-shot on the language tasks, both models; MetaLM also with encoder-read demonstrations
    icl = {}
    for name, mode in (("gpt", "causal"), ("metalm", "causal"), ("metalm", "encoder")):
        out = evals / f"icl-{name}-{mode}.json"
        icl[f"{name}/{mode}"] = world_eval(args, models[name], out, "val", "entail,choice", args.shots, mode)
    report["in_context"] = icl
    # zero-shot captions: seen pairs (val) and held-out pairs, MetaLM only (the GPT cannot see images)
    report["captions"] = {
        split: world_eval(args, models["metalm"], evals / f"captions-{split}.json", split, "captions")["captions"]
        for split in ("val", "heldout")
    }
    # finetuned: entailment for both; VQA for MetaLM on seen and held-out pairs
    vqa = ft["metalm", "world-vqa"]
    report["finetuned"] = {
        "metalm/entail": world_eval(
            args, ft["metalm", "world-entail"], evals / "ft-metalm-entail.json", "val", "entail", encode_input=True
        )["entail"],
        "gpt/entail": world_eval(args, ft["gpt", "world-entail"], evals / "ft-gpt-entail.json", "val", "entail")[
            "entail"
        ],
        **{
            f"metalm/vqa-{split}": world_eval(
                args, vqa, evals / f"ft-metalm-vqa-{split}.json", split, "vqa", encode_input=True
            )["vqa"]
            for split in ("val", "heldout")
        },
        "metalm/vqa-before-finetuning": world_eval(args, models["metalm"], evals / "zs-metalm-vqa.json", "val", "vqa")[
            "vqa"
        ],
    }
    report["minutes"] = (time.time() - started) / 60
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, results)
    return report


def write_markdown(report: dict, results: Path) -> Path:
    import matplotlib  # heavy, and needed only to draw the report's plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["settings"]
    lines = [
        "# MetaLM vs a causal GPT on the bundled world (claims in miniature)",
        "",
        f"Both models: the `tiny` decoder, {s['steps']} pretraining steps of the same batch size and length "
        f"(seed {s['seed']}); finetuning {s['finetune_steps']} steps at lr {s.get('finetune_lr', 3e-4):g}; up "
        f"to {s['limit']} evaluation examples; {s['trials']} seeded demonstration sets per k > 0 (mean ± std). "
        f"Produced by `python eval/report.py` "
        f"in {report['minutes']:.0f} minutes on CPU.",
        "",
    ]
    lines += ["## Finetuning", "", "| model | task | metric | score |", "|---|---|---|---|"]
    for key, res in report["finetuned"].items():
        model, task = key.split("/")
        entry = res["results"][0]
        metric = "vqa_accuracy" if "vqa" in task else "none"
        lines.append(
            f"| {model} | {task} | {'VQA accuracy' if 'vqa' in task else 'accuracy'} | {fmt(headline(entry, metric))} |"
        )
    lines += [
        "",
        "## Zero-shot captions (MetaLM; the GPT cannot see images)",
        "",
        "| split | CIDEr-D | BLEU-4 | names the scene's shapes | names its colours | names the unseen pair |",
        "|---|---|---|---|---|---|",
    ]
    for split, res in report["captions"].items():
        e = res["results"][0]
        lines.append(
            f"| {split} | {fmt(headline(e, 'cider_d'))} | {fmt(headline(e, 'bleu_4'))} | "
            f"{fmt(headline(e, 'shapes_named'))} | {fmt(headline(e, 'colors_named'))} | "
            f"{fmt(headline(e, 'unseen_pair_named'))} |"
        )
    lines += [
        "",
        "## In-context learning (language tasks)",
        "",
        "Entailment: accuracy with no / contextual / prototypical calibration. Multiple choice: accuracy by "
        "summed log-probability.",
        "",
        "| model (demonstrations) | k | entail: none | contextual | prototypical | choice: acc |",
        "|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, tasks in report["in_context"].items():
        entail, choice = tasks["entail"]["results"], tasks["choice"]["results"]
        for e, c in zip(entail, choice, strict=True):
            lines.append(
                f"| {key} | {e['shots']} | {fmt(headline(e, 'none'))} | {fmt(headline(e, 'contextual'))} | "
                f"{fmt(headline(e, 'prototypical'))} | {fmt(headline(c, 'acc'))} |"
            )
        ks = [e["shots"] for e in entail]
        for cal, style in (("none", "-"), ("contextual", "--"), ("prototypical", ":")):
            axes[0].errorbar(
                ks,
                [headline(e, cal)[0] for e in entail],
                [headline(e, cal)[1] for e in entail],
                linestyle=style,
                marker="o",
                capsize=3,
                label=f"{key} {cal}",
            )
        axes[1].errorbar(
            ks,
            [headline(c, "acc")[0] for c in choice],
            [headline(c, "acc")[1] for c in choice],
            marker="o",
            capsize=3,
            label=key,
        )
    axes[0].set(title="entailment", xlabel="demonstrations k", ylabel="accuracy")
    axes[1].set(title="multiple choice", xlabel="demonstrations k", ylabel="accuracy")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / "report-icl.png", dpi=120)
    plt.close(fig)
    lines += ["", "![in-context accuracy](report-icl.png)", ""]
    out = results / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"report: {out}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=480, help="pretraining steps of each model")
    p.add_argument("--finetune_steps", type=int, default=800)
    p.add_argument("--finetune_lr", type=float, default=1e-3)
    p.add_argument("--metalm", default="", help="reuse this pretrained MetaLM checkpoint (e.g. runs/tiny/final)")
    p.add_argument("--gpt", default="", help="reuse this pretrained GPT baseline checkpoint")
    p.add_argument("--reuse", action="store_true", help="reuse finetuned models already under --runs")
    p.add_argument("--world", default="data/world")
    p.add_argument("--shots", default="0,1,4")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--limit", type=int, default=200, help="evaluation examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/report", help="where the trained models go")
    p.add_argument("--results", default="results", help="where report.md, report.json and plots go")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
