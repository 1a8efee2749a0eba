"""The paper's claims in miniature: MetaLM against a plain causal GPT of the same decoder size, on the bundled world.

    python eval/report.py                       # trains both models, finetunes, evaluates, writes the report
    python eval/report.py --metalm runs/tiny/final   # reuse the main command's checkpoint instead of pretraining

Both models have the ``tiny`` decoder and read the same number of text tokens in pretraining, on batches of the
same size and length: MetaLM on the world's documents (with semi-causal spans through its text encoder) and
image-caption pairs for its own steps, the GPT on the same documents read causally until it has read as many text
tokens as MetaLM did (documents and captions; ``count_text_tokens`` rebuilds both runs' batches to count them, so
the GPT takes fewer steps: MetaLM's image-text rows hold image vectors). Then, as the paper does:

- **finetuning**: both are finetuned on the world's entailment task for the same steps (MetaLM reads the input
  through its bidirectional encoder, the GPT causally); MetaLM also with its decoder frozen (the paper's recipe:
  only the encoders and connectors train), and on VQA;
- **zero-shot**: held-out colour-shape pairs for captions and (after VQA finetuning) questions; the language tasks
  with no demonstrations;
- **in-context**: k = 0, 1, 4 demonstrations (several seeded trials), with no, contextual and prototypical
  calibration; MetaLM also with its demonstrations docked through the encoder (its in-context customization);
- **instructions**: MetaLM instruction-tuned with clusters held out, the held-out clusters scored before and after
  under every instruction template, mean and best over the templates (FLAN's way of reporting them).

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


def pretrain_config(args: argparse.Namespace, steps: int, **fields):
    """The report's ``PretrainConfig``: ``steps`` steps on ``args.world`` with ``args.seed``, and ``fields``."""
    # the training library loads torch and the model code (seconds): imported here so --help answers at once
    from train.pretraining import PretrainConfig

    return PretrainConfig(max_steps=steps, world=args.world, eval_every=0, seed=args.seed, **fields)


def pretrain_run(cfg) -> None:
    """Pretraining (train/pretrain.py's job, in this process) with ``cfg``."""
    from train.pretraining import pretrain

    pretrain(cfg)  # it checks the config first


def finetune_run(args: argparse.Namespace, base: Path, task: str, out: Path, freeze_decoder: bool = False) -> None:
    """Finetuning (train/finetune.py's job, in this process) from ``base`` on ``task`` with the report's settings;
    ``freeze_decoder``: only the encoders and connectors train (the paper's recipe)."""
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
        freeze_decoder=freeze_decoder,
    )
    finetune(cfg)  # it checks the config first


def batch_text_tokens(batch, tokenizer, image_tokens: int) -> tuple[int, int]:
    """(document tokens, caption tokens) of one pretraining batch: its real positions less each image's ``<image>``,
    ``image_tokens`` vectors and ``</image>``; a row holding an image is an image-text row, its text a caption. A
    semi-causal span counts as the text it is, whichever of the decoder or the text encoder reads it."""
    real = batch.attention_mask.bool()
    ids = batch.input_ids
    images = (ids == tokenizer.image_start_id) & real
    marks = images | ((ids == tokenizer.image_end_id) & real)
    per_row = real.sum(1) - marks.sum(1) - images.sum(1) * image_tokens
    captioned = images.any(1)
    return int(per_row[~captioned].sum()), int(per_row[captioned].sum())


def count_text_tokens(cfg, steps: int = 0, target: int = 0) -> dict:
    """The text tokens pretraining with ``cfg`` (a ``PretrainConfig``) consumes: its own batches, rebuilt in this
    process from the same shards, tokenizer, layout and seed as training reads them (``num_workers`` 0), counted over
    ``steps`` steps, or until they reach ``target`` tokens (then ``steps`` is how many that takes)."""
    from data.pipeline import BatchStream
    from data.prepare import prepare_shards, prepare_world
    from data.reader import expand_urls
    from train.pretraining import build_model, job_pipeline_config, job_tokenizer

    if (steps > 0) == (target > 0):
        raise ValueError(f"count_text_tokens: give steps or target (got steps={steps}, target={target})")
    world = prepare_world(cfg.world, cfg.seed)
    tokenizer = job_tokenizer(cfg, world)
    text, captions = prepare_shards(world, "train")
    text = expand_urls(cfg.text_shards) if cfg.text_shards else text
    captions = expand_urls(cfg.image_shards) if cfg.image_shards else captions
    pcfg = job_pipeline_config(cfg, build_model(cfg, tokenizer))
    stream = BatchStream(text, captions, tokenizer, pcfg, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
    documents = caption_tokens = done = 0  # done: micro-batches
    for batch, _ in stream:
        if (steps and done == steps * cfg.grad_accum) or (target and documents + caption_tokens >= target):
            break
        d, c = batch_text_tokens(batch, tokenizer, pcfg.image_tokens)
        documents, caption_tokens, done = documents + d, caption_tokens + c, done + 1
    return {
        "steps": -(-done // cfg.grad_accum),
        "text_tokens": documents + caption_tokens,
        "document_tokens": documents,
        "caption_tokens": caption_tokens,
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
    }


def checkpoint_config(ckpt: Path, args: argparse.Namespace, **fields):
    """The ``PretrainConfig`` a pretrained checkpoint was trained with (its ``train_config.json``), reading its own
    tokenizer; without that file, the one this report would pretrain it with (``fields``), said so."""
    from train.pretraining import PretrainConfig

    saved = ckpt / "train_config.json"
    if saved.is_file():
        known = set(PretrainConfig.__dataclass_fields__)
        values = {k: v for k, v in json.loads(saved.read_text()).items() if k in known}
        return PretrainConfig(**{**values, "tokenizer": str(ckpt), "init_from": ""})
    print(f"{saved} not found: counting its text tokens as this report would pretrain it")
    return pretrain_config(args, args.steps, tokenizer=str(ckpt), **fields)


def reusable(args: argparse.Namespace, final: Path, steps: int = 0) -> bool:
    """With ``--reuse``: whether ``final`` holds a trained model (of ``steps`` steps, when given) to reuse."""
    if not args.reuse or not (final / "model.safetensors").is_file():
        return False
    saved = final / "train_config.json"
    if steps and (not saved.is_file() or json.loads(saved.read_text()).get("max_steps") != steps):
        return False
    print(f"reusing {final}")
    return True


def pretrain(args: argparse.Namespace, runs: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Both pretrained models, and the text tokens each read. The GPT is pretrained until it has read as many text
    tokens as MetaLM did (documents and captions together: every text token MetaLM's decoder or text encoder
    read), so neither has seen more text; its steps follow from that."""
    models = {}
    if args.metalm:
        models["metalm"] = Path(args.metalm)
    else:
        pretrain_run(pretrain_config(args, args.steps, out=str(runs / "metalm")))
        models["metalm"] = runs / "metalm" / "final"
    metalm = checkpoint_config(models["metalm"], args)
    tokens = {"metalm": count_text_tokens(metalm, steps=metalm.max_steps)}
    gpt_fields = {"preset": "tiny-gpt", "vision_warmup_steps": 0}
    if args.gpt:
        models["gpt"] = Path(args.gpt)
        gpt = checkpoint_config(models["gpt"], args, **gpt_fields)
        tokens["gpt"] = count_text_tokens(gpt, steps=gpt.max_steps)
    else:
        # the GPT reads the same world tokenizer, so both score the same token sequences
        fields = {**gpt_fields, "tokenizer": str(models["metalm"]), "out": str(runs / "gpt")}
        tokens["gpt"] = count_text_tokens(pretrain_config(args, 1, **fields), target=tokens["metalm"]["text_tokens"])
        models["gpt"] = runs / "gpt" / "final"
        if not reusable(args, models["gpt"], tokens["gpt"]["steps"]):
            pretrain_run(pretrain_config(args, tokens["gpt"]["steps"], **fields))
    for name, n in tokens.items():
        print(f"{name}: {n['text_tokens']} text tokens read in {n['steps']} pretraining steps")
    return models, tokens


def finetune(
    args: argparse.Namespace, name: str, base: Path, task: str, runs: Path, freeze_decoder: bool = False
) -> Path:
    out = runs / f"{name}-{task}"
    if not reusable(args, out / "final"):
        finetune_run(args, base, task, out, freeze_decoder)
    return out / "final"


def instruct(args: argparse.Namespace, base: Path, runs: Path) -> Path:
    """Instruction tuning (train/instruct.py's job, in this process) of ``base`` for ``args.instruct_steps`` steps
    with ``args.heldout_tasks`` held out; returns the tuned checkpoint."""
    from train.instruction_tuning import InstructConfig, instruction_tune

    out = runs / "metalm-instruct"
    if not reusable(args, out / "final", args.instruct_steps):
        steps = args.instruct_steps
        instruction_tune(
            InstructConfig(
                init_from=str(base),
                out=str(out),
                world=args.world,
                max_steps=steps,
                eval_every=0,
                ckpt_every=steps,
                heldout_tasks=args.heldout_tasks,
                final_eval=False,
                seed=args.seed,
            )
        )
    return out / "final"


def template_summary(per_template: list[dict], key: str) -> dict:
    """Mean, best (and which template gave it) and every template's value of ``key`` in ``per_template`` (one
    instruction-evaluation results entry per template), as FLAN reports held-out tasks over its templates."""
    values = [headline(entry, key)[0] if isinstance(entry.get(key), dict) else entry.get(key) for entry in per_template]
    values = [float("nan") if v is None else float(v) for v in values]
    finite = [(v, i) for i, v in enumerate(values) if v == v]
    if not finite:
        return {"mean": float("nan"), "best": float("nan"), "best_template": None, "templates": values}
    best = max(v for v, _ in finite)
    which = next(i for v, i in finite if v == best)  # ties: the first such template
    return {"mean": sum(v for v, _ in finite) / len(finite), "best": best, "best_template": which, "templates": values}


def instruction_eval(args: argparse.Namespace, checkpoints: dict[str, Path], out: Path) -> dict:
    """The held-out clusters on the world's validation instructions under every instruction template, for each of
    ``checkpoints``: exact match and rank classification per cluster, each as mean and best over the templates."""
    from data.tasks import read_instructions
    from data.templates import INSTRUCTION_TEMPLATES
    from eval.evaluators import evaluate_instructions

    data = read_instructions(Path(args.world) / "instructions_val.jsonl")
    tasks = [t.strip() for t in args.heldout_tasks.split(",") if t.strip()]
    table: dict = {}
    for name, ckpt in checkpoints.items():
        entries = []
        for template in range(len(INSTRUCTION_TEMPLATES)):
            settings = EvalSettings(
                ckpt,
                out / f"instruct-{name}-template{template}.json",
                limit=args.instruct_limit,
                seed=args.seed,
                decode=DecodeSettings(max_new_tokens=NEW_TOKENS["instruction"]),
            )
            entries.append(evaluate_instructions(data, settings, tasks, template=template)["results"][0])
        table[name] = {
            task: {
                "exact_match": template_summary(entries, f"exact_match/{task}"),
                "rank_classification": template_summary(entries, f"option_accuracy/{task}"),
                "chance": entries[0].get(f"option_chance/{task}"),
                "majority": entries[0].get(f"option_majority/{task}"),
            }
            for task in tasks
        }
    return table


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
    models, tokens = pretrain(args, runs)
    ft = {
        ("metalm", "world-entail"): finetune(args, "metalm", models["metalm"], "world-entail", runs),
        ("metalm-frozen", "world-entail"): finetune(
            args, "metalm-frozen", models["metalm"], "world-entail", runs, freeze_decoder=True
        ),
        ("gpt", "world-entail"): finetune(args, "gpt", models["gpt"], "world-entail", runs),
        ("metalm", "world-vqa"): finetune(args, "metalm", models["metalm"], "world-vqa", runs),
    }
    evals = results / "report-evals"
    report: dict = {
        "settings": vars(args),
        "models": {k: str(v) for k, v in models.items()},
        "text_tokens": tokens,
    }

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
        "metalm-frozen/entail": world_eval(
            args,
            ft["metalm-frozen", "world-entail"],
            evals / "ft-metalm-frozen-entail.json",
            "val",
            "entail",
            encode_input=True,
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
    if args.instruct_steps:
        tuned = instruct(args, models["metalm"], runs)
        report["instructions"] = instruction_eval(args, {"before": models["metalm"], "after": tuned}, evals)
    report["minutes"] = (time.time() - started) / 60
    (results / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    write_markdown(report, results)
    return report


def command(settings: dict) -> str:
    """The report's command line, with the flags that change what it does (others at their defaults)."""
    flags = [f"--metalm {settings['metalm']}"] if settings.get("metalm") else []
    flags += [f"--gpt {settings['gpt']}"] if settings.get("gpt") else []
    flags += ["--reuse"] if settings.get("reuse") else []
    if settings.get("instruct_steps", 300) != 300:
        flags.append(f"--instruct_steps {settings['instruct_steps']}")
    return " ".join(["python eval/report.py", *flags])


MODEL_NAMES = {"metalm-frozen": "metalm (decoder frozen)"}


def instruction_lines(table: dict, settings: dict) -> list[str]:
    """The held-out instruction clusters' table: exact match and rank classification, mean and best over the
    templates, before and after instruction tuning."""
    from data.templates import INSTRUCTION_TEMPLATES

    lines = [
        "",
        f"## Held-out instructions over {len(INSTRUCTION_TEMPLATES)} templates (MetaLM)",
        "",
        f"MetaLM instruction-tuned for {settings['instruct_steps']} steps with `{settings['heldout_tasks']}` held "
        f"out, scored on up to {settings['instruct_limit']} validation examples per cluster under each of the "
        "instruction templates (`data.templates.INSTRUCTION_TEMPLATES`): mean and best over the templates, as FLAN "
        "reports held-out tasks (best: template number in brackets).",
        "",
        "| cluster | model | exact match: mean | best | rank classification: mean | best | chance | majority |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def num(v: float | None) -> str:
        return "–" if v is None or v != v else f"{v:.3f}"

    for name, tasks in table.items():
        for task, row in tasks.items():
            em, rank = row["exact_match"], row["rank_classification"]
            lines.append(
                f"| {task} | {name} tuning | {num(em['mean'])} | {num(em['best'])} ({em['best_template']}) | "
                f"{num(rank['mean'])} | {num(rank['best'])} ({rank['best_template']}) | {num(row['chance'])} | "
                f"{num(row['majority'])} |"
            )
    return lines


def write_markdown(report: dict, results: Path) -> Path:
    from metalm.io import pyplot

    plt = pyplot()

    s = report["settings"]
    tokens = report.get("text_tokens", {})
    if tokens:
        m, g = tokens["metalm"], tokens["gpt"]
        pretraining = (
            f"Both models have the `tiny` decoder and read the same number of text tokens in pretraining (seed "
            f"{s['seed']}, batches of {m['batch_size']} rows of {m['seq_len']} positions): MetaLM {m['text_tokens']:,} "
            f"in {m['steps']} steps ({m['document_tokens']:,} of documents, {m['caption_tokens']:,} of captions; the "
            f"rest of its rows are image vectors), the GPT {g['text_tokens']:,} of documents in {g['steps']} steps."
        )
    else:
        pretraining = (
            f"Both models: the `tiny` decoder, {s['steps']} pretraining steps of the same batch size and length "
            f"(seed {s['seed']})."
        )
    lines = [
        "# MetaLM vs a causal GPT on the bundled world (claims in miniature)",
        "",
        f"{pretraining} Finetuning {s['finetune_steps']} steps at lr {s.get('finetune_lr', 3e-4):g}; up "
        f"to {s['limit']} evaluation examples; {s['trials']} seeded demonstration sets per k > 0 (mean ± std). "
        f"Produced by `{command(s)}` in {report['minutes']:.0f} minutes on CPU"
        + (
            " (the models trained by earlier runs reused: their training time is not in it)." if s.get("reuse") else "."
        ),
        "",
    ]
    lines += ["## Finetuning", "", "| model | task | metric | score |", "|---|---|---|---|"]
    for key, res in report["finetuned"].items():
        model, task = key.split("/")
        entry = res["results"][0]
        metric = "vqa_accuracy" if "vqa" in task else "none"
        lines.append(
            f"| {MODEL_NAMES.get(model, model)} | {task} | {'VQA accuracy' if 'vqa' in task else 'accuracy'} | "
            f"{fmt(headline(entry, metric))} |"
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
    if report.get("instructions"):
        lines += instruction_lines(report["instructions"], s) + [""]
    out = results / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"report: {out}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--steps", type=int, default=480, help="MetaLM's pretraining steps (the GPT's: as many as its text tokens take)"
    )
    p.add_argument("--finetune_steps", type=int, default=800)
    p.add_argument("--finetune_lr", type=float, default=1e-3)
    p.add_argument("--metalm", default="", help="reuse this pretrained MetaLM checkpoint (e.g. runs/tiny/final)")
    p.add_argument("--gpt", default="", help="reuse this pretrained GPT baseline checkpoint")
    p.add_argument(
        "--reuse", action="store_true", help="reuse trained models already under --runs (the GPT: of the same steps)"
    )
    p.add_argument("--instruct_steps", type=int, default=300, help="instruction tuning steps of MetaLM (0: skip)")
    p.add_argument("--heldout_tasks", default="yesno,count", help="instruction clusters held out of tuning")
    p.add_argument("--instruct_limit", type=int, default=60, help="held-out examples per cluster and template")
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
