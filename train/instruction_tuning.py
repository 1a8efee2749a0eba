"""Instruction tuning on FLAN-style data with task clusters held out for zero-shot: the job behind
train/instruct.py.

Examples are rendered by random templates and packed into rows by ``data.batching.InstructBatcher``, trained on
the shared loop, and at the end scored before and after tuning by the eval library's instruction evaluator
(``final_evaluation``), into a per-cluster table.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from data.batching import InstructBatcher
from data.tasks import InstructionExample, read_instructions
from data.world import current_world
from eval.evaluators import evaluate_instructions
from eval.settings import NEW_TOKENS, DecodeSettings, EvalSettings
from train.config import option, parse_config
from train.loop import train, validation_loss, write_summary
from train.tuning import TuneConfig, load_pretrained, report_final

log = logging.getLogger("metalm.instruct")


@dataclass
class InstructConfig(
    TuneConfig,
    defaults={"max_steps": 900, "out": "runs/instruct", "eval_every": 300, "ckpt_every": 300, "eval_limit": 60},
):
    """Instruction tuning's data and held-out clusters on top of the shared tuning fields."""

    encode_user: str = option(
        "auto",
        "read the user's words through the text encoder (auto: when the model has one)",
        choices=("auto", "true", "false"),
    )
    seq_len: int = option(256, "tokens per training row", min=1)
    data: str = option("", "instruction jsonl to train on (default: the world's instructions_train.jsonl)")
    val_data: str = option("", "instruction jsonl to validate and evaluate on (default: the world's val file)")
    image_root: str = option("", "folder image paths are relative to (default: each file's folder)")
    heldout_tasks: str = option("yesno,count", "comma-separated task clusters never trained on (zero-shot tests)")
    pack: bool = option(True, "pack several short examples into each row of seq_len tokens")


def parse_instruct_config(argv: list[str] | None = None, description: str = "") -> InstructConfig:
    """Instruction tuning's config from the command line: defaults, then ``--config``, then flags."""
    return parse_config(argv, InstructConfig, description)


def split_tasks(
    examples: list[InstructionExample], heldout: set[str]
) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """(examples of trained clusters, examples of held-out clusters)."""
    return [e for e in examples if e.task not in heldout], [e for e in examples if e.task in heldout]


def evaluate_checkpoint(checkpoint: Path, cfg: InstructConfig, val: Path, out: Path, encode: bool) -> dict:
    """Instruction following of ``checkpoint`` on ``val`` (``eval_limit`` examples per cluster), as eval/instruct.py
    scores it; results in ``out``. Its printed summary is left out: this job prints the per-cluster table."""
    print(f"evaluating {checkpoint} on {val}", flush=True)
    settings = EvalSettings(
        checkpoint, out=out, limit=cfg.eval_limit, decode=DecodeSettings(max_new_tokens=NEW_TOKENS["instruction"])
    )
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate_instructions(read_instructions(val, cfg.image_root or None), settings, encode_user=encode)


def cluster_table(before: dict, after: dict, heldout: set[str]) -> dict:
    """Per task cluster, exact match (and rank classification where the examples list options) before and after
    tuning, printed as a table and returned."""
    b, a = before["results"][0], after["results"][0]
    table = {}
    print("per task cluster (validation), before -> after instruction tuning:")
    print(f"  {'cluster':21s} {'exact match':>14s} {'rank classification':>22s} {'chance':>7s} {'majority':>9s}")
    for key in sorted(k for k in a if k.startswith("exact_match/")):
        task = key.split("/", 1)[1]
        row = table[task] = {
            "kind": "held out" if task in heldout else "trained",
            "before": b[key]["mean"],
            "after": a[key]["mean"],
        }
        line = f"  {task:10s} {'(' + row['kind'] + ')':10s} {row['before']:6.2f} -> {row['after']:4.2f}"
        if f"option_accuracy/{task}" in a:
            row["option_chance"] = a[f"option_chance/{task}"]
            row["option_majority"] = a[f"option_majority/{task}"]
            row["option_before"] = b[f"option_accuracy/{task}"]["mean"]
            row["option_after"] = a[f"option_accuracy/{task}"]["mean"]
            line += (
                f" {row['option_before']:14.2f} -> {row['option_after']:.2f} {row['option_chance']:7.2f}"
                f" {row['option_majority']:9.2f}"
            )
        print(line)
    return table


def final_evaluation(cfg: InstructConfig, final: Path, val_file: Path, heldout: set[str], encode: bool) -> dict:
    """Instruction following of the starting and the tuned checkpoint (``eval-before.json``, ``eval-after.json`` in the
    run directory); returns the per-cluster table."""
    out = Path(cfg.out)
    before = evaluate_checkpoint(Path(cfg.init_from), cfg, val_file, out / "eval-before.json", encode)
    after = evaluate_checkpoint(final, cfg, val_file, out / "eval-after.json", encode)
    return cluster_table(before, after, heldout)


def instruction_tune(cfg: InstructConfig) -> dict:
    """The whole instruction-tuning job; returns (and writes to ``out/summary.json``) its losses and, with
    ``final_eval``, the per-cluster table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env, model, tokenizer, prompts, encode = load_pretrained(cfg, cfg.encode_user, "--encode_user")
    world = Path(cfg.world)
    train_file = Path(cfg.data) if cfg.data else world / "instructions_train.jsonl"
    val_file = Path(cfg.val_data) if cfg.val_data else world / "instructions_val.jsonl"
    if not cfg.data or not cfg.val_data:  # the world's files: make or update them
        current_world(world)
    root = cfg.image_root or None
    heldout = {t.strip() for t in cfg.heldout_tasks.split(",") if t.strip()}
    train_ex, _ = split_tasks(read_instructions(train_file, root).examples, heldout)
    val_seen, _ = split_tasks(read_instructions(val_file, root).examples, heldout)
    batcher = InstructBatcher(
        train_ex, prompts, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed, encode, cfg.pack, env.rank, env.world_size
    )
    val_batcher = InstructBatcher(
        val_seen, prompts, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed + 1, encode, cfg.pack
    )
    if env.main:
        clusters = sorted({e.task for e in train_ex})
        log.info(
            "%d training examples in clusters %s; held out: %s; packed rows: %s; encoder-read instructions: %s",
            len(train_ex),
            clusters,
            sorted(heldout),
            cfg.pack,
            encode,
        )

    val_loss = validation_loss(val_batcher.batch, cfg.eval_batches, env.device)
    result = train(cfg, model, batcher, env, val_loss)
    summary: dict = {
        **result.run_summary(),
        "heldout_tasks": sorted(heldout),
        "encode_user": encode,
        "train_examples": len(train_ex),
    }
    if result.final_dir is not None and env.main:
        report_final(result, summary, "validation loss (trained clusters)")
        if cfg.final_eval:
            summary["clusters"] = final_evaluation(cfg, result.final_dir, val_file, heldout, encode)
    if env.main:  # a run a signal stopped early writes one too: how it ended, and where it can continue
        write_summary(cfg.out, summary)
    return summary
