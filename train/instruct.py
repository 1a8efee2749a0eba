"""Instruction tuning on FLAN-style data, on the shared training loop, with task clusters held out for zero-shot.

    torchrun --standalone --nproc_per_node=1 train/instruct.py --init_from runs/tiny/final --out runs/instruct

Each example (instruction, optional input and image, output; see ``data.tasks.read_instructions``) is rendered by
one of several templates chosen at random (``data.templates.INSTRUCTION_TEMPLATES``) into a chat turn
``[image] User: ...\\nAssistant:`` followed by the output and ``</s>``; a closed-set task's options are
listed after the input, as FLAN lists them. The loss counts the output only. Short examples are packed into rows
of ``--seq_len`` tokens. The task clusters in ``--heldout_tasks`` are never trained on: at the end
``eval/instruct.py`` scores them (and the trained clusters) on the validation file for the starting checkpoint and
the tuned one, by exact match of the generated answer and, where the examples list options, by rank
classification, so the printed table shows zero-shot transfer to unseen instruction types.
With ``--encode_user`` (auto: when the model has a text encoder) the user's words go through the bidirectional
text encoder, as MetaLM reads an instruction; the answer is written causally.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from train/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from data.batch import Batch  # noqa: E402
from data.prompts import Encoded, EncodedSeg, ImageSeg, PromptEncoder, SpecialSeg  # noqa: E402
from data.tasks import InstructionExample, read_instructions  # noqa: E402
from data.templates import INSTRUCTION_TEMPLATES, instruction_prompt  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from metalm.loss import IGNORE_INDEX  # noqa: E402
from train.config import TrainConfig, _f, parse_config  # noqa: E402
from train.finetune import IndexedBatches, load_pretrained, report_final  # noqa: E402
from train.loop import train, validation_loss, write_summary  # noqa: E402

log = logging.getLogger("metalm.instruct")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class InstructConfig(TrainConfig):
    data: str = _f("", "instruction jsonl to train on (default: the world's instructions_train.jsonl)")
    val_data: str = _f("", "instruction jsonl to validate and evaluate on (default: the world's val file)")
    image_root: str = _f("", "folder image paths are relative to (default: each file's folder)")
    heldout_tasks: str = _f("yesno,count", "comma-separated task clusters never trained on (zero-shot tests)")
    pack: bool = _f(True, "pack several short examples into each row of seq_len tokens")
    encode_user: str = _f("auto", "read the user's words through the text encoder (auto: when the model has one)",
                          choices=("auto", "true", "false"))  # fmt: skip
    freeze_decoder: bool = _f(False, "train only encoders and connectors")
    encoder_freeze: dict = _f({}, "freeze policy per encoder, e.g. {text: none, vision: all}")
    eval_limit: int = _f(60, "examples per task cluster the final evaluation scores")
    final_eval: bool = _f(True, "score held-out and trained clusters before and after tuning (eval/instruct.py)")


INSTRUCT_DEFAULTS = dict(max_steps=900, lr=3e-4, warmup_steps=30, out="runs/instruct", eval_every=300,
                         ckpt_every=300, vision_warmup_steps=0)  # fmt: skip


class InstructBatcher(IndexedBatches):
    """Seeded batches of packed rows. Epoch ``e`` shuffles the examples, gives each a random template, and packs
    them greedily into rows of at most ``seq_len`` tokens; batch ``i`` is a pure function of ``i`` (exact resume),
    and ranks take disjoint rows of the same step."""

    def __init__(self, examples: list[InstructionExample], prompts: PromptEncoder, tokenizer: Tokenizer,
                 batch_size: int, seq_len: int, seed: int, encode_user: bool, pack: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        if not examples:
            raise ValueError("no instruction examples to train on")
        self.examples, self.prompts, self.tok = examples, prompts, tokenizer
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.encode_user, self.pack, self.rank, self.world_size = encode_user, pack, rank, world_size
        self._plans: dict[int, list[list[tuple[int, int]]]] = {}
        self._steps: dict[int, int] = {}  # steps per epoch, kept after the plan itself is dropped

    def render(self, ex: InstructionExample, template: int):
        answer = self.tok.encode(" " + ex.output.strip()) + [self.tok.eos_id]
        return instruction_prompt(ex, template, self.encode_user), answer

    def length(self, ex: InstructionExample, template: int) -> int:
        prompt, answer = self.render(ex, template)
        n = len(answer)
        for seg in prompt:
            if isinstance(seg, ImageSeg):
                n += self.prompts.image_tokens + 2
            elif isinstance(seg, SpecialSeg):
                n += 1
            else:
                n += len(self.tok.encode(seg.text if isinstance(seg, EncodedSeg) else seg))
        return n

    def plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Rows of (example index, template) for ``epoch``."""
        if epoch not in self._plans:
            rng = random.Random(f"metalm/instruct/{self.seed}/{epoch}")
            order = list(range(len(self.examples)))
            rng.shuffle(order)
            rows, row, used = [], [], 0
            for i in order:
                template = rng.randrange(len(INSTRUCTION_TEMPLATES))
                n = self.length(self.examples[i], template)
                if n > self.seq_len:
                    raise ValueError(f"instruction example {self.examples[i].id} is {n} tokens long; the rows are "
                                     f"{self.seq_len} (seq_len)")  # fmt: skip
                if row and (not self.pack or used + n > self.seq_len):
                    rows.append(row)
                    row, used = [], 0
                row.append((i, template))
                used += n
            rows.append(row)
            self._plans = {epoch: rows}  # keep one epoch's plan
            self._steps[epoch] = max(1, len(rows) // (self.batch_size * self.world_size))
        return self._plans[epoch]

    def rows_of(self, index: int) -> list[list[tuple[int, int]]]:
        epoch, k = 0, index
        while True:  # epochs can differ in row count, so walk them
            if epoch not in self._steps:
                self.plan(epoch)
            if k < self._steps[epoch]:
                start = (k * self.world_size + self.rank) * self.batch_size
                return self.plan(epoch)[start : start + self.batch_size]
            k -= self._steps[epoch]
            epoch += 1

    def batch(self, index: int) -> Batch:
        rows, label_spans = [], []
        for row in self.rows_of(index):
            ids, images, spans, answers = [], [], [], []
            for i, template in row:
                prompt, answer = self.render(self.examples[i], template)
                enc = self.prompts.encode(prompt)
                off = len(ids)
                images += [(off + s, px) for s, px in enc.images]
                spans += [(off + s, off + e) for s, e in enc.spans]
                ids += enc.ids
                answers.append((len(ids), len(ids) + len(answer)))
                ids += answer
            rows.append(Encoded(ids, images, spans))
            label_spans.append(answers)
        ids, mask, docks = self.prompts.collate(rows, self.seq_len if self.pack else None)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for r, answers in enumerate(label_spans):
            for s, e in answers:
                labels[r, s:e] = ids[r, s:e]
        return Batch(ids, labels, mask, docks)


def split_tasks(examples: list[InstructionExample], heldout: set[str]):
    return [e for e in examples if e.task not in heldout], [e for e in examples if e.task in heldout]


def evaluate_instructions(checkpoint: Path, cfg: InstructConfig, val: Path, out: Path, encode: bool) -> dict:
    """eval/instruct.py on ``checkpoint``, run as its own command; returns its results JSON."""
    cmd = [sys.executable, str(ROOT / "eval" / "instruct.py"), "--checkpoint", str(checkpoint), "--data", str(val),
           "--limit", str(cfg.eval_limit), "--out", str(out), "--encode-user", str(encode).lower()]  # fmt: skip
    if cfg.image_root:
        cmd += ["--image-root", cfg.image_root]
    print("evaluating:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run(cfg: InstructConfig) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    env, model, tokenizer, prompts, encode = load_pretrained(cfg, cfg.encode_user, "--encode_user")
    world = Path(cfg.world)
    train_file = Path(cfg.data) if cfg.data else world / "instructions_train.jsonl"
    val_file = Path(cfg.val_data) if cfg.val_data else world / "instructions_val.jsonl"
    if not cfg.data or not cfg.val_data:  # the world's files: make or update them
        from data.world import current_world

        current_world(world)
    root = cfg.image_root or None
    heldout = {t.strip() for t in cfg.heldout_tasks.split(",") if t.strip()}
    train_ex, _ = split_tasks(read_instructions(train_file, root).examples, heldout)
    val_seen, _ = split_tasks(read_instructions(val_file, root).examples, heldout)
    batcher = InstructBatcher(train_ex, prompts, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed, encode, cfg.pack,
                              env.rank, env.world_size)  # fmt: skip
    val_batcher = InstructBatcher(val_seen, prompts, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed + 1, encode,
                                  cfg.pack)  # fmt: skip
    if env.main:
        tasks = sorted({e.task for e in train_ex})
        log.info("%d training examples in clusters %s; held out: %s; packed rows: %s; encoder-read instructions: %s",
                 len(train_ex), tasks, sorted(heldout), cfg.pack, encode)  # fmt: skip

    evaluate = validation_loss(val_batcher.batch, cfg.eval_batches, env.device)
    result = train(cfg, model, batcher, env, evaluate, save_extra=tokenizer.save)
    summary: dict = {"steps": result.step, "heldout_tasks": sorted(heldout), "encode_user": encode,
                     "train_examples": len(train_ex), "stopped_by_signal": result.stopped_by_signal}  # fmt: skip
    if result.final_dir is not None and env.main:
        report_final(result, summary, "validation loss (trained clusters)")
        if cfg.final_eval:
            out = Path(cfg.out)
            before = evaluate_instructions(Path(cfg.init_from), cfg, val_file, out / "eval-before.json", encode)
            after = evaluate_instructions(result.final_dir, cfg, val_file, out / "eval-after.json", encode)
            b, a = before["results"][0], after["results"][0]
            table = {}
            print("per task cluster (validation), before -> after instruction tuning:")
            print(
                f"  {'cluster':21s} {'exact match':>14s} {'rank classification':>22s} {'chance':>7s} {'majority':>9s}"
            )
            for key in sorted(k for k in a if k.startswith("exact_match/")):
                task = key.split("/", 1)[1]
                row = table[task] = {"kind": "held out" if task in heldout else "trained",
                                     "before": b[key]["mean"], "after": a[key]["mean"]}  # fmt: skip
                line = f"  {task:10s} {'(' + row['kind'] + ')':10s} {row['before']:6.2f} -> {row['after']:4.2f}"
                if f"option_accuracy/{task}" in a:
                    row["option_chance"] = a[f"option_chance/{task}"]
                    row["option_majority"] = a[f"option_majority/{task}"]
                    row["option_before"] = b[f"option_accuracy/{task}"]["mean"]
                    row["option_after"] = a[f"option_accuracy/{task}"]["mean"]
                    line += (f" {row['option_before']:14.2f} -> {row['option_after']:.2f} {row['option_chance']:7.2f}"
                             f" {row['option_majority']:9.2f}")  # fmt: skip
                print(line)
            summary["clusters"] = table
        write_summary(cfg.out, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, description=__doc__.split("\n\n")[0], cls=InstructConfig, defaults=INSTRUCT_DEFAULTS)
    return run(cfg)


if __name__ == "__main__":
    main()
