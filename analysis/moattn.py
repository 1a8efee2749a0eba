"""Momentum attention (MoAttn) measured: the same small model trained with and without momentum on the bundled world.

Dai et al. 2023 ("Why Can GPT Learn In-Context?", ACL Findings; section 5, "Momentum-Based Attention") read
attention as a meta-optimizer's update and add the momentum of gradient descent to it:

    MoAttn(V, K, q_t) = Attn(V, K, q_t) + EMA(v_1 .. v_{t-1})
                      = V softmax(K^T q_t / sqrt(d)) + sum_{i=1}^{t-1} eta^i v_{t-i}

per head, causal (``metalm.attention.momentum_term``; ``m_t = eta (m_{t-1} + v_{t-1})``; the decay counts real
tokens, not padding). The authors' released code (microsoft/LMOps ``understand_icl/``, e.g.
``fairseq/fairseq/modules/multihead_attention.py``) holds the ICL-vs-finetuning analysis but no MoAttn, so this
follows the paper's formula; note that the momentum is not normalised: its weights sum to up to
``eta / (1 - eta)`` (9 at eta 0.9) against the attention's 1. They report lower
language-modeling perplexity and better in-context accuracy with it. This module trains two arms that differ only
in ``decoder.attention`` (``sdpa`` vs ``momentum`` with ``eta``): the same preset and shape, data, steps, batch
layout and seeds (each seed gives both arms the same initial weights and batch order; the momentum adds no
parameters). For each run it measures

- validation perplexity ``exp(validation loss)`` on pretraining's fixed validation batches (nats/token);
- in-context accuracy with k = 0, 1, 4 demonstrations from the training split, several seeded trials per k
  (``eval.evaluators.evaluate``; the trial mean is the run's figure), on the world's entailment task
  (``world-entail``: True/False ranked by log-probability, no calibration; chance 0.5) and its multiple choice
  (``world-choice``: four options ranked by summed log-probability; chance 0.25);

and reports mean ± std (population) over seeds per arm, with the per-seed paired difference momentum - sdpa.
``compare_attention`` runs everything in this process through ``train.pretraining.pretrain``; ``write_results``
writes ``results.json``, ``results.md`` and ``moattn.png``. Command: ``analysis/compare_attention.py``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics import mean_std
from eval.settings import EvalSettings

ARMS = ("sdpa", "momentum")
"""The compared attention backends: PyTorch's fused attention, and MoAttn (the same plus the momentum term)."""
TASKS = {"world-entail": "none", "world-choice": "acc"}
"""The in-context tasks and the accuracy each reports: entailment by label ranking without calibration, multiple
choice by summed log-probability of each option."""
CHANCE = {"world-entail": 0.5, "world-choice": 0.25}
"""Each task's accuracy by guessing uniformly (two labels; four options), drawn in the plot."""


@dataclass
class CompareSettings:
    """One comparison: the model, its training, and the in-context evaluation, shared by both arms."""

    world: str = "data/world"
    runs: str = "runs/moattn"  # run directories, one per arm and seed
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eta: float = 0.9
    preset: str = "tiny-gpt"
    decoder: dict[str, Any] = field(default_factory=lambda: {"dim": 128, "n_layers": 2, "n_heads": 4})
    steps: int = 200
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    eval_batches: int = 8
    shots: list[int] = field(default_factory=lambda: [0, 1, 4])
    trials: int = 4
    limit: int = 100  # validation examples of the in-context task
    threads: int = 0  # torch threads while training and scoring (0: leave as is)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds}: expected one or more distinct seeds")
        if not 0.0 < self.eta < 1.0:
            raise ValueError(f"eta = {self.eta}: expected a value in (0, 1)")
        if "attention" in self.decoder or "momentum_eta" in self.decoder:
            raise ValueError("decoder: give no attention / momentum_eta; the arms set them (eta: --eta)")


def arm_config(settings: CompareSettings, arm: str, seed: int):
    """The pretraining config of one arm and seed: every field but ``attention`` (and the run directory) is the
    same for both arms; ``momentum_eta`` is set in both (sdpa ignores it) so that the configs differ in one field."""
    from train.pretraining import PretrainConfig  # loads torch and the model code

    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: expected one of {', '.join(ARMS)}")
    return PretrainConfig(
        preset=settings.preset,
        model={"decoder": dict(settings.decoder)},
        attention=arm,
        momentum_eta=settings.eta,
        world=settings.world,
        out=str(Path(settings.runs) / f"{arm}-seed{seed}"),
        seed=seed,
        max_steps=settings.steps,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=min(settings.warmup_steps, settings.steps - 1),
        eval_every=0,
        ckpt_every=settings.steps,
        keep_last=1,
        log_every=max(1, settings.steps // 5),
        eval_batches=settings.eval_batches,
        vision_warmup_steps=0,
        peak_flops=1e12,  # skip the start-up matmul timing: MFU is not reported here
    )


def icl_accuracy(checkpoint: Path, settings: CompareSettings, out_dir: Path) -> dict[str, Any]:
    """In-context accuracy of a checkpoint on each of ``TASKS`` (validation split, demonstrations from train): per
    task and k, the trials and their mean; each task's full results go to ``out_dir/<task>.json``."""
    from data.tasks import get_task
    from data.tokenizer import Tokenizer
    from eval.evaluators import evaluate
    from eval.scoring import Scorer
    from metalm import MetaLM

    scorer = Scorer(MetaLM.from_pretrained(checkpoint), Tokenizer.load(checkpoint), progress=False)
    world = Path(settings.world)
    icl = {}
    for task, key in TASKS.items():
        eval_settings = EvalSettings(
            checkpoint=checkpoint,
            out=out_dir / f"{task}.json",
            shots=list(settings.shots),
            trials=settings.trials,
            limit=settings.limit,
        )
        read = get_task(task).reader
        result = evaluate(task, read(world, "val"), eval_settings, read(world, "train"), scorer)
        icl[task] = {
            str(r["shots"]): {"mean": r[key]["mean"], "trials": r[key]["trials"], "n": r["n"]}
            for r in result["results"]
        }
    return icl


def run_arm(settings: CompareSettings, arm: str, seed: int) -> dict[str, Any]:
    """Train one arm with one seed and measure it: validation loss and perplexity, in-context accuracy per k."""
    from train.pretraining import pretrain

    cfg = arm_config(settings, arm, seed)
    start = time.time()
    summary = pretrain(cfg)
    trained = time.time() - start
    if "val_loss" not in summary:
        raise RuntimeError(f"{cfg.out}: the run stopped early ({summary.get('stop_signal')}); nothing to measure")
    final = Path(summary["final"])
    icl = icl_accuracy(final, settings, Path(cfg.out))
    return {
        "arm": arm,
        "seed": seed,
        "run": cfg.out,
        "val_loss": summary["val_loss"],
        "val_ppl": math.exp(summary["val_loss"]),
        "icl": icl,
        "train_seconds": round(trained, 1),
        "eval_seconds": round(time.time() - start - trained, 1),
    }


def summarize(runs: list[dict[str, Any]], shots: list[int]) -> dict[str, Any]:
    """Per arm: mean ± std over seeds of perplexity and of k-shot accuracy; and the per-seed paired differences
    (momentum - sdpa) with their mean ± std, and how many seeds each way."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    metrics = {"val_ppl": lambda r: r["val_ppl"]}
    for task in TASKS:
        for k in shots:
            metrics[f"{task}/{k}shot"] = lambda r, task=task, k=k: r["icl"][task][str(k)]["mean"]
    arms = {}
    for arm in ARMS:
        arms[arm] = {}
        for name, get in metrics.items():
            values = [get(by[arm, s]) for s in seeds]
            m, sd = mean_std(values)
            arms[arm][name] = {"mean": m, "std": sd, "seeds": values}
    diffs = {}
    for name, get in metrics.items():
        values = [get(by["momentum", s]) - get(by["sdpa", s]) for s in seeds]
        m, sd = mean_std(values)
        diffs[name] = {
            "mean": m,
            "std": sd,
            "seeds": values,
            "momentum_lower": sum(v < 0 for v in values),
            "momentum_higher": sum(v > 0 for v in values),
        }
    return {"seeds": seeds, "arms": arms, "momentum_minus_sdpa": diffs}


def compare_attention(settings: CompareSettings) -> dict[str, Any]:
    """Train and measure both arms for every seed (sdpa then momentum per seed); the results dict of
    ``write_results``."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.time()
    runs = [run_arm(settings, arm, seed) for seed in settings.seeds for arm in ARMS]
    return {
        "paper": "Dai et al. 2023, Why Can GPT Learn In-Context?, section 5 (momentum-based attention)",
        "settings": asdict(settings),
        "tasks": TASKS,
        "metric": "validation perplexity exp(nats/token); in-context accuracy (per task: TASKS) mean over trials",
        "runs": runs,
        "summary": summarize(runs, list(settings.shots)),
        "seconds": round(time.time() - start, 1),
    }


def _pm(row: dict[str, float], digits: int) -> str:
    return f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The summary as a markdown table: one row per metric, sdpa, momentum, and the paired difference."""
    s = results["summary"]
    shots = results["settings"]["shots"]
    names = {"val_ppl": "validation perplexity (lower is better)"}
    names.update({f"{t}/{k}shot": f"{t} accuracy, k = {k}" for t in TASKS for k in shots})
    n = len(s["seeds"])
    lines = [
        f"| metric (mean ± std over {n} seeds) | sdpa | momentum (eta {results['settings']['eta']}) | "
        "momentum - sdpa (paired) | seeds momentum lower / higher |",
        "|---|---|---|---|---|",
    ]
    for key, label in names.items():
        digits = 2 if key == "val_ppl" else 3
        d = s["momentum_minus_sdpa"][key]
        lines.append(
            f"| {label} | {_pm(s['arms']['sdpa'][key], digits)} | {_pm(s['arms']['momentum'][key], digits)} | "
            f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f} | {d['momentum_lower']} / {d['momentum_higher']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel of validation perplexity per arm (seeds as dots, mean ± std as a bar), then one per task of
    accuracy against k (mean ± std over seeds)."""
    from metalm.io import pyplot

    plt = pyplot()

    s = results["summary"]
    shots = results["settings"]["shots"]
    fig, axes = plt.subplots(1, 1 + len(TASKS), figsize=(4 * (1 + len(TASKS)), 3.6))
    left = axes[0]
    for i, arm in enumerate(ARMS):
        row = s["arms"][arm]["val_ppl"]
        left.bar(i, row["mean"], yerr=row["std"], color=f"C{i}", alpha=0.6, capsize=4)
        left.scatter([i] * len(row["seeds"]), row["seeds"], color="k", s=12, zorder=3)
        for ax, task in zip(axes[1:], TASKS, strict=True):
            rows = [s["arms"][arm][f"{task}/{k}shot"] for k in shots]
            offset = (i - 0.5) * 0.08  # the two arms side by side at each k
            ax.errorbar(
                [k + offset for k in shots],
                [r["mean"] for r in rows],
                yerr=[r["std"] for r in rows],
                marker="o",
                capsize=3,
                color=f"C{i}",
                label=arm,
            )
    left.set_xticks(range(len(ARMS)), ARMS)
    left.set_ylabel("validation perplexity")
    low = min(min(s["arms"][a]["val_ppl"]["seeds"]) for a in ARMS)
    left.set_ylim(bottom=max(0.0, low * 0.9))
    for ax, task in zip(axes[1:], TASKS, strict=True):
        ax.axhline(CHANCE[task], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("demonstrations k")
        ax.set_ylabel(f"{task} accuracy")
        ax.set_xticks(shots)
        ax.legend()
    fig.suptitle(f"MoAttn vs sdpa on the bundled world ({len(s['seeds'])} seeds, mean ± std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``results.json``, ``results.md`` (the table and the settings) and ``moattn.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    st = results["settings"]
    header = (
        f"# MoAttn vs sdpa on the bundled world\n\n"
        f"{st['preset']} decoder {st['decoder']}, {st['steps']} steps of {st['batch_size']} x {st['seq_len']} "
        f"tokens, seeds {st['seeds']}; in-context: {', '.join(TASKS)} val (first {st['limit']}), k = {st['shots']}, "
        f"{st['trials']} trials. Took {results['seconds']:.0f} s.\n\n"
    )
    (out / "results.md").write_text(header + markdown_table(results))
    plot(results, out / "moattn.png")
    return out
