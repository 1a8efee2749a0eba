"""Finetuning a pretrained MetaLM on one task: the job behind train/finetune.py.

Every example becomes a prompt from ``data.templates`` followed by its answer (``read_examples``), batched by
``data.batching.ExampleBatcher`` with the loss on the answer only, and trained on the shared loop. At the end the
final checkpoint is scored by the task's evaluator from the eval library (``final_evaluation``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from data import tasks
from data.batching import Example, ExampleBatcher
from data.templates import CLASSIFICATION, caption_prompt, qa_prompt
from eval.evaluators import demo_answer, evaluate, evaluate_world
from eval.settings import NEW_TOKENS, DecodeSettings, EvalSettings
from train.config import option, parse_config
from train.loop import train, validation_loss, write_summary
from train.tuning import TuneConfig, load_pretrained, report_final

log = logging.getLogger("metalm.finetune")
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
    answer_eos: bool = option(
        True,
        "end each answer with </s> as a target (needed where answers are generated; a classifier's label word is "
        "ranked and needs none: with a pretrained decoder </s> is a new row, and with --freeze_decoder a row that "
        "can never be learned)",
    )


def parse_finetune_config(argv: list[str] | None = None, description: str = "") -> FinetuneConfig:
    """Finetuning's config from the command line: defaults, then ``--config``, then flags."""
    return parse_config(argv, FinetuneConfig, description)


def read_task_data(cfg: FinetuneConfig, split: str) -> tasks.TaskData:
    """The task's examples for ``split`` ("train" or "val"), read by the task's ``data.tasks`` reader from the
    files the config names (world tasks: the world directory)."""
    world_split = cfg.train_split if split == "train" else cfg.val_split
    data_file = cfg.train_data if split == "train" else cfg.val_data
    labels_file = cfg.train_labels if split == "train" else cfg.val_labels
    if cfg.task not in WORLD_TASKS and not data_file:
        raise ValueError(f"task {cfg.task}: give --{split}_data (the task's {split} file)")
    kind = tasks.get_task(cfg.task).kind
    if cfg.task in WORLD_TASKS:
        return tasks.get_task(cfg.task).reader(cfg.world, world_split)
    if kind == "vqa":
        if not labels_file:
            raise ValueError(f"task {cfg.task}: give --{split}_labels (the annotations json)")
        return tasks.read_vqa(data_file, labels_file, cfg.images)
    if kind == "caption":
        return tasks.read_coco_captions(data_file, cfg.images)
    if cfg.task in ("snli-ve", "nlvr2"):
        return tasks.get_task(cfg.task).reader(data_file, cfg.images)
    return tasks.read_glue(data_file, cfg.task)


def read_examples(cfg: FinetuneConfig, split: str) -> list[Example]:
    """The task's (prompt, answer) pairs for ``split`` ("train" or "val"): its examples rendered by the shared
    templates."""
    kind = tasks.get_task(cfg.task).kind
    data = read_task_data(cfg, split)
    out: list[Example] = []
    for ex in data.examples:
        if kind == "vqa":
            out.append(Example(qa_prompt(ex.question, ex.image), " " + demo_answer(ex)))
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


def final_evaluation(cfg: FinetuneConfig, checkpoint: Path, encode: bool) -> dict:
    """The task's evaluation on ``checkpoint`` (validation files, ``eval_limit`` examples, the input read by the
    text encoder when it was in training), with the decoding its eval script uses; results in ``out/eval.json``."""
    settings = EvalSettings(checkpoint, out=Path(cfg.out) / "eval.json", limit=cfg.eval_limit, encode_input=encode)
    print(f"evaluating {checkpoint} on {cfg.task} ({cfg.val_split if cfg.task in WORLD_TASKS else cfg.val_data})")
    if cfg.task in WORLD_TASKS:
        settings = replace(settings, decode=DecodeSettings(max_new_tokens=NEW_TOKENS["vqa"]))
        return evaluate_world(cfg.world, cfg.val_split, [cfg.task.removeprefix("world-")], settings)
    kind = tasks.get_task(cfg.task).kind
    if kind in NEW_TOKENS:
        settings = replace(settings, decode=DecodeSettings(max_new_tokens=NEW_TOKENS[kind]))
    benchmark = f"glue-{cfg.task}" if cfg.task in GLUE_TASKS else cfg.task
    return evaluate(cfg.task, read_task_data(cfg, "val"), settings, benchmark=benchmark)


def finetune(cfg: FinetuneConfig) -> dict:
    """The whole finetuning job; returns (and writes to ``out/summary.json``) its losses and final evaluation."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env, model, tokenizer, prompts, encode = load_pretrained(cfg, cfg.encode_input, "--encode_input")
    train_examples = read_examples(cfg, "train")
    val_examples = read_examples(cfg, "val")
    max_len = model.config.decoder.max_seq_len
    batcher = ExampleBatcher(
        train_examples,
        prompts,
        tokenizer,
        cfg.batch_size,
        max_len,
        cfg.seed,
        encode,
        env.rank,
        env.world_size,
        answer_eos=cfg.answer_eos,
    )
    val_batcher = ExampleBatcher(
        val_examples, prompts, tokenizer, cfg.batch_size, max_len, cfg.seed + 1, encode, answer_eos=cfg.answer_eos
    )
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

    val_loss = validation_loss(val_batcher.batch, min(cfg.eval_batches, val_batcher.per_epoch), env.device)
    result = train(cfg, model, batcher, env, val_loss)
    summary = {
        "task": cfg.task,
        **result.run_summary(),
        "encode_input": encode,
        "train_examples": len(train_examples),
    }
    if result.final_dir is not None and env.main:
        report_final(result, summary, "validation loss")
        if cfg.final_eval:
            summary["eval"] = final_evaluation(cfg, result.final_dir, encode)
    if env.main:  # a run a signal stopped early writes one too: how it ended, and where it can continue
        write_summary(cfg.out, summary)
    return summary
