"""Finetune a pretrained MetaLM on one task, on the shared training loop, then evaluate with the task's script.

    torchrun --standalone --nproc_per_node=1 train/finetune.py --init_from runs/tiny/final --task world-vqa \\
        --out runs/finetune-vqa

Every example becomes a prompt from ``data.templates`` followed by its answer: classification as the template and
its label word (the paper's "it is [label]"), VQA as ``<image> Question: ... Answer:`` and the annotators' answer,
captioning as the image and one reference caption. The loss counts the answer tokens (and the closing ``</s>``)
only. With ``--encode_input`` (default when the model has a text encoder that shares the decoder's tokenizer) the
prompt's text goes through the bidirectional text encoder and the decoder writes the answer, as MetaLM finetunes;
``--freeze_decoder`` trains only the encoders and connectors (the paper's MNLI recipe). Resume, checkpoints,
SIGTERM handling and NaN checks are the training loop's (train/loop.py). At the end the final checkpoint is
scored by the task's evaluation script, run as a separate command, and its results JSON lands in the run directory.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from data.batch import Batch  # noqa: E402
from data.prompts import Prompt, PromptEncoder, through_encoder  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from metalm.loss import IGNORE_INDEX  # noqa: E402
from metalm.model import MetaLM  # noqa: E402
from train.config import TrainConfig, _f, parse_config  # noqa: E402
from train.loop import setup_env, train, validation_loss, write_summary  # noqa: E402

log = logging.getLogger("metalm.finetune")
ROOT = Path(__file__).resolve().parents[1]
WORLD_TASKS = ("world-vqa", "world-captions", "world-entail", "world-choice")
GLUE_TASKS = ("sst2", "mnli", "rte", "qnli", "mrpc", "qqp", "cola", "wnli")
FILE_TASKS = ("vqav2", "okvqa", "coco", "snli-ve", "nlvr2", *GLUE_TASKS)


@dataclass
class FinetuneConfig(TrainConfig):
    task: str = _f("world-vqa", "task to finetune on", choices=WORLD_TASKS + FILE_TASKS)
    train_data: str = _f("", "training file (questions json, captions json, tsv or jsonl); world tasks: unused")
    train_labels: str = _f("", "VQA: the training annotations json")
    val_data: str = _f("", "validation file of the same format (used for the validation loss and the final eval)")
    val_labels: str = _f("", "VQA: the validation annotations json")
    images: str = _f("", "image directory of the task's files")
    train_split: str = _f("train", "world tasks: the split to train on")
    val_split: str = _f("val", "world tasks: the split to validate and evaluate on")
    encode_input: str = _f("auto", "send the prompt's text through the text encoder (auto: when the model has one)",
                           choices=("auto", "true", "false"))  # fmt: skip
    freeze_decoder: bool = _f(False, "train only encoders and connectors (the paper's MNLI recipe)")
    encoder_freeze: dict = _f({}, "freeze policy per encoder, e.g. {text: none, vision: all}")
    eval_limit: int = _f(200, "examples the final evaluation scores (0: all)")
    final_eval: bool = _f(True, "run the task's evaluation script on the final checkpoint")


FINETUNE_DEFAULTS = dict(max_steps=300, lr=3e-4, warmup_steps=30, out="runs/finetune", eval_every=100,
                         ckpt_every=100, vision_warmup_steps=0)  # fmt: skip


@dataclass
class Example:
    prompt: Prompt
    answer: str  # plain text after the prompt; the target


def read_examples(cfg: FinetuneConfig, split: str) -> list[Example]:
    """The task's (prompt, answer) pairs for ``split`` ("train" or "val") from data.tasks readers and the shared
    templates; the files come from the config (world tasks: the world directory)."""
    from data import tasks
    from data.templates import CLASSIFICATION, caption_prompt, qa_prompt

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


class IndexedBatches:
    """Batches that are a pure function of their index; ``self(skip)`` is the endless stream the training loop
    takes, starting after the ``skip`` batches a resumed run has already consumed."""

    def batch(self, index: int) -> Batch:
        raise NotImplementedError

    def __call__(self, skip: int):
        index = skip
        while True:
            yield self.batch(index)
            index += 1


class ExampleBatcher(IndexedBatches):
    """Seeded, epoch-wise shuffled batches of examples, each ``prompt + answer + </s>`` with labels on the answer
    and ``</s>`` only. Batch ``i`` is the same whether or not earlier ones were skipped (exact resume)."""

    def __init__(self, examples, prompts: PromptEncoder, tokenizer: Tokenizer, batch_size: int, max_len: int,
                 seed: int, encode_input: bool, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        self.examples, self.prompts, self.tok = examples, prompts, tokenizer
        self.batch_size, self.max_len, self.seed = batch_size, max_len, seed
        self.encode_input, self.rank, self.world_size = encode_input, rank, world_size
        self.per_epoch = max(1, len(examples) // (batch_size * world_size))

    def order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.examples)))
        random.Random(f"metalm/finetune/{self.seed}/{epoch}").shuffle(idx)
        return idx

    def indices(self, index: int) -> list[int]:
        """The examples of batch ``index`` on this rank (ranks take consecutive slices of one shuffled order)."""
        epoch, k = divmod(index, self.per_epoch)
        start = (k * self.world_size + self.rank) * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def batch(self, index: int) -> Batch:
        return self.build([self.examples[i] for i in self.indices(index)])

    def build(self, examples: list[Example]) -> Batch:
        rows, answers = [], []
        for ex in examples:
            prompt = through_encoder(ex.prompt) if self.encode_input else ex.prompt
            enc = self.prompts.encode(prompt)
            answer = self.tok.encode(ex.answer) + [self.tok.eos_id]
            if len(enc.ids) + len(answer) > self.max_len:
                raise ValueError(
                    f"an example is {len(enc.ids) + len(answer)} tokens long; the decoder takes {self.max_len} "
                    f"(prompt {ex.prompt!r:.80})"
                )
            rows.append(enc + answer)
            answers.append(len(answer))
        ids, mask, docks = self.prompts.collate(rows)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for r, (row, n) in enumerate(zip(rows, answers, strict=True)):
            end = len(row.ids)
            labels[r, end - n : end] = ids[r, end - n : end]
        return Batch(ids, labels, mask, docks)


def configure_freeze(model: MetaLM, cfg: FinetuneConfig) -> None:
    unknown = sorted(set(cfg.encoder_freeze) - set(model.encoders))
    if unknown:
        raise ValueError(f"encoder_freeze names {unknown}; this model's encoders are {sorted(model.encoders)}")
    for name, policy in cfg.encoder_freeze.items():
        model.config.encoders[name].freeze = policy
    model.apply_freeze()
    if cfg.freeze_decoder:
        model.decoder.requires_grad_(False)


def eval_command(cfg: FinetuneConfig, checkpoint: Path, encode: bool) -> list[str]:
    """The evaluation script run on the final checkpoint, with the task's validation files."""
    out = Path(cfg.out) / "eval.json"
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--limit", str(cfg.eval_limit)]
    common += ["--encode-input"] if encode else []
    if cfg.task in WORLD_TASKS:
        task = {"world-vqa": "vqa", "world-captions": "captions", "world-entail": "entail", "world-choice": "choice"}
        return ["eval/world.py", *common, "--world", cfg.world, "--split", cfg.val_split, "--tasks", task[cfg.task]]
    if cfg.task in ("vqav2", "okvqa"):
        return ["eval/vqa.py", *common, "--benchmark", cfg.task, "--questions", cfg.val_data, "--annotations",
                cfg.val_labels, "--images", cfg.images]  # fmt: skip
    if cfg.task == "coco":
        return ["eval/caption.py", *common, "--captions", cfg.val_data, "--images", cfg.images]
    if cfg.task in ("snli-ve", "nlvr2"):
        script = "eval/snli_ve.py" if cfg.task == "snli-ve" else "eval/nlvr2.py"
        return [script, *common, "--data", cfg.val_data, "--images", cfg.images]
    return ["eval/glue.py", *common, "--task", cfg.task, "--data", cfg.val_data]


def load_pretrained(cfg: TrainConfig, encode_flag: str, flag: str):
    """The process environment, the ``--init_from`` model (freeze policies applied) and tokenizer, its prompt
    encoder, and whether prompts go through the text encoder (``encode_flag``: auto / true / false)."""
    if not cfg.init_from:
        raise ValueError("this script starts from a pretrained checkpoint: give --init_from, e.g. runs/tiny/final")
    env = setup_env()
    torch.manual_seed(cfg.seed)
    model = MetaLM.from_pretrained(cfg.init_from)
    tokenizer = Tokenizer.load(cfg.init_from)
    configure_freeze(model, cfg)
    prompts = PromptEncoder(model, tokenizer)
    encode = {"auto": prompts.text is not None, "true": True, "false": False}[encode_flag]
    if encode and prompts.text is None:
        raise ValueError(f"{flag} true: this model has no text encoder that shares the decoder's tokenizer")
    return env, model, tokenizer, prompts, encode


def report_final(result, summary: dict, val_name: str) -> None:
    """Add the run's first and last training loss, last validation loss and final checkpoint to ``summary``, and
    print them."""
    summary.update(result.final_losses())
    print(f"\nfinal checkpoint: {result.final_dir}")
    print(f"training loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} over {result.step} steps; "
          f"{val_name} {summary['val_loss']:.3f}")  # fmt: skip


def run(cfg: FinetuneConfig) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env, model, tokenizer, prompts, encode = load_pretrained(cfg, cfg.encode_input, "--encode_input")
    train_examples = read_examples(cfg, "train")
    val_examples = read_examples(cfg, "val")
    max_len = model.config.decoder.max_seq_len
    batcher = ExampleBatcher(train_examples, prompts, tokenizer, cfg.batch_size, max_len, cfg.seed, encode,
                             env.rank, env.world_size)  # fmt: skip
    val_batcher = ExampleBatcher(val_examples, prompts, tokenizer, cfg.batch_size, max_len, cfg.seed + 1, encode)
    if env.main:
        trainable = model.num_params(trainable_only=True)
        log.info("%s: %d training and %d validation examples; %d of %d parameters trainable; encoder-read input: %s",
                 cfg.task, len(train_examples), len(val_examples), trainable, model.num_params(), encode)  # fmt: skip

    evaluate = validation_loss(val_batcher.batch, min(cfg.eval_batches, val_batcher.per_epoch), env.device)
    result = train(cfg, model, batcher, env, evaluate, save_extra=tokenizer.save)
    summary = {"task": cfg.task, "steps": result.step, "encode_input": encode, "stopped_by_signal":
               result.stopped_by_signal, "train_examples": len(train_examples)}  # fmt: skip
    if result.final_dir is not None and env.main:
        report_final(result, summary, "validation loss")
        if cfg.final_eval:
            cmd = [sys.executable, *eval_command(cfg, result.final_dir, encode)]
            cmd[1] = str(ROOT / cmd[1])
            print("evaluating:", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
            summary["eval"] = json.loads((Path(cfg.out) / "eval.json").read_text())
        write_summary(cfg.out, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, description=__doc__.split("\n\n")[0], cls=FinetuneConfig, defaults=FINETUNE_DEFAULTS)
    return run(cfg)


if __name__ == "__main__":
    main()
