"""Finetuning a pretrained MetaLM on one task: the job behind train/finetune.py.

Every example becomes a prompt from ``data.templates`` followed by its answer (``read_examples``), batched by
``data.batching.ExampleBatcher`` with the loss on the answer only, and trained on the shared loop. At the end the
final checkpoint is scored by the task's evaluation script, run as a separate command (``final_evaluation``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data import tasks
from data.batching import Example, ExampleBatcher
from data.templates import CLASSIFICATION, caption_prompt, qa_prompt
from train.config import option, parse_config
from train.loop import train, validation_loss, write_summary
from train.tuning import TuneConfig, load_pretrained, report_final

log = logging.getLogger("metalm.finetune")
ROOT = Path(__file__).resolve().parents[1]
WORLD_TASKS = ("world-vqa", "world-captions", "world-entail", "world-choice")
GLUE_TASKS = ("sst2", "mnli", "rte", "qnli", "mrpc", "qqp", "cola", "wnli")
FILE_TASKS = ("vqav2", "okvqa", "coco", "snli-ve", "nlvr2", *GLUE_TASKS)


@dataclass
class FinetuneConfig(
    TuneConfig, defaults={"max_steps": 300, "out": "runs/finetune", "eval_every": 100, "ckpt_every": 100}
):
    """Finetuning's task and data on top of the shared tuning fields; a shorter schedule than pretraining's."""

    task: str = option("world-vqa", "task to finetune on", choices=WORLD_TASKS + FILE_TASKS)
    train_data: str = option("", "training file (questions json, captions json, tsv or jsonl); world tasks: unused")
    train_labels: str = option("", "VQA: the training annotations json")
    val_data: str = option("", "validation file of the same format (used for the validation loss and the final eval)")
    val_labels: str = option("", "VQA: the validation annotations json")
    images: str = option("", "image directory of the task's files")
    train_split: str = option("train", "world tasks: the split to train on")
    val_split: str = option("val", "world tasks: the split to validate and evaluate on")
    encode_input: str = option(
        "auto",
        "send the prompt's text through the text encoder (auto: when the model has one)",
        choices=("auto", "true", "false"),
    )


def parse_finetune_config(argv: list[str] | None = None, description: str = "") -> FinetuneConfig:
    """Finetuning's config from the command line: defaults, then ``--config``, then flags."""
    return parse_config(argv, FinetuneConfig, description)


def read_examples(cfg: FinetuneConfig, split: str) -> list[Example]:
    """The task's (prompt, answer) pairs for ``split`` ("train" or "val") from data.tasks readers and the shared
    templates; the files come from the config (world tasks: the world directory)."""
    world_split = cfg.train_split if split == "train" else cfg.val_split
    data_file = cfg.train_data if split == "train" else cfg.val_data
    labels_file = cfg.train_labels if split == "train" else cfg.val_labels
    if cfg.task not in WORLD_TASKS and not data_file:
        raise ValueError(f"task {cfg.task}: give --{split}_data (the task's {split} file)")
    kind = tasks.get_task(cfg.task).kind
    if cfg.task == "world-vqa":
        data = tasks.read_world_vqa(cfg.world, world_split)
    elif cfg.task == "world-captions":
        data = tasks.read_world_captions(cfg.world, world_split)
    elif cfg.task == "world-entail":
        data = tasks.read_world_entail(cfg.world, world_split)
    elif cfg.task == "world-choice":
        data = tasks.read_world_choice(cfg.world, world_split)
    elif kind == "vqa":
        if not labels_file:
            raise ValueError(f"task {cfg.task}: give --{split}_labels (the annotations json)")
        data = tasks.read_vqa(data_file, labels_file, cfg.images)
    elif kind == "caption":
        data = tasks.read_coco_captions(data_file, cfg.images)
    elif cfg.task in ("snli-ve", "nlvr2"):
        data = getattr(tasks, "read_snli_ve" if cfg.task == "snli-ve" else "read_nlvr2")(data_file, cfg.images)
    else:
        data = tasks.read_glue(data_file, cfg.task)
    out: list[Example] = []
    for ex in data.examples:
        if kind == "vqa":
            best = ex.meta.get("multiple_choice_answer") or Counter(ex.answers).most_common(1)[0][0]
            out.append(Example(qa_prompt(ex.question, ex.image), " " + best))
        elif kind == "caption":
            refs = ex.references if split == "train" else ex.references[:1]
            out += [Example(caption_prompt(ex.image), ref) for ref in refs]
        elif kind == "choice":
            context, continuation = ex.options[ex.label]
            out.append(Example([context], continuation))
        else:
            template = CLASSIFICATION[cfg.task]
            word = template.verbalizers[template.index(ex.label, f"{data.report.source}: example {ex.id}")]
            out.append(Example(template.prompt(ex.texts, ex.images), word))
    if not out:
        raise ValueError(f"task {cfg.task}: no {split} examples read ({data.report.source})")
    return out


def eval_command(cfg: FinetuneConfig, checkpoint: Path, encode: bool) -> list[str]:
    """The evaluation script run on the final checkpoint, with the task's validation files."""
    out = Path(cfg.out) / "eval.json"
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--limit", str(cfg.eval_limit)]
    common += ["--encode-input"] if encode else []
    if cfg.task in WORLD_TASKS:
        task = {"world-vqa": "vqa", "world-captions": "captions", "world-entail": "entail", "world-choice": "choice"}
        return ["eval/world.py", *common, "--world", cfg.world, "--split", cfg.val_split, "--tasks", task[cfg.task]]
    if cfg.task in ("vqav2", "okvqa"):
        return [
            "eval/vqa.py",
            *common,
            "--benchmark",
            cfg.task,
            "--questions",
            cfg.val_data,
            "--annotations",
            cfg.val_labels,
            "--images",
            cfg.images,
        ]
    if cfg.task == "coco":
        return ["eval/caption.py", *common, "--captions", cfg.val_data, "--images", cfg.images]
    if cfg.task in ("snli-ve", "nlvr2"):
        script = "eval/snli_ve.py" if cfg.task == "snli-ve" else "eval/nlvr2.py"
        return [script, *common, "--data", cfg.val_data, "--images", cfg.images]
    return ["eval/glue.py", *common, "--task", cfg.task, "--data", cfg.val_data]


def final_evaluation(cfg: FinetuneConfig, checkpoint: Path, encode: bool) -> dict:
    """The task's evaluation script on ``checkpoint``, run as its own command; returns its results JSON."""
    cmd = [sys.executable, *eval_command(cfg, checkpoint, encode)]
    cmd[1] = str(ROOT / cmd[1])
    print("evaluating:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((Path(cfg.out) / "eval.json").read_text())


def finetune(cfg: FinetuneConfig) -> dict:
    """The whole finetuning job; returns (and writes to ``out/summary.json``) its losses and final evaluation."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env, model, tokenizer, prompts, encode = load_pretrained(cfg, cfg.encode_input, "--encode_input")
    train_examples = read_examples(cfg, "train")
    val_examples = read_examples(cfg, "val")
    max_len = model.config.decoder.max_seq_len
    batcher = ExampleBatcher(
        train_examples, prompts, tokenizer, cfg.batch_size, max_len, cfg.seed, encode, env.rank, env.world_size
    )
    val_batcher = ExampleBatcher(val_examples, prompts, tokenizer, cfg.batch_size, max_len, cfg.seed + 1, encode)
    if env.main:
        trainable = model.num_params(trainable_only=True)
        log.info(
            "%s: %d training and %d validation examples; %d of %d parameters trainable; encoder-read input: %s",
            cfg.task,
            len(train_examples),
            len(val_examples),
            trainable,
            model.num_params(),
            encode,
        )

    evaluate = validation_loss(val_batcher.batch, min(cfg.eval_batches, val_batcher.per_epoch), env.device)
    result = train(cfg, model, batcher, env, evaluate, save_extra=tokenizer.save)
    summary = {
        "task": cfg.task,
        "steps": result.step,
        "encode_input": encode,
        "stopped_by_signal": result.stopped_by_signal,
        "train_examples": len(train_examples),
    }
    if result.final_dir is not None and env.main:
        report_final(result, summary, "validation loss")
        if cfg.final_eval:
            summary["eval"] = final_evaluation(cfg, result.final_dir, encode)
        write_summary(cfg.out, summary)
    return summary
