"""Batch builders for finetuning and instruction tuning: each batch is a pure function of its index.

That makes resume exact (batch ``i`` is the same whether or not earlier ones were skipped) and lets ranks take
disjoint slices of one seeded order. Pretraining streams shards instead (``data.pipeline``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from data.batch import Batch
from data.prompts import Encoded, Prompt, PromptEncoder, concat, through_encoder
from data.tasks import InstructionExample
from data.templates import INSTRUCTION_TEMPLATES, instruction_prompt
from data.tokenizer import Tokenizer
from metalm.loss import IGNORE_INDEX


@dataclass
class Example:
    """One finetuning example: a prompt and the plain text after it that the model learns to write."""

    prompt: Prompt
    answer: str


class IndexedBatches:
    """Batches that are a pure function of their index; ``self(skip)`` is the endless stream the training loop
    takes, starting after the ``skip`` batches a resumed run has already consumed."""

    def batch(self, index: int) -> Batch:
        raise NotImplementedError

    def __call__(self, skip: int) -> Iterator[Batch]:
        index = skip
        while True:
            yield self.batch(index)
            index += 1


class ExampleBatcher(IndexedBatches):
    """Seeded, epoch-wise shuffled batches of examples, each ``prompt + answer + </s>`` (without ``</s>`` when
    ``answer_eos`` is False) with labels on the answer and ``</s>`` only. Batch ``i`` is the same whether or not
    earlier ones were skipped (exact resume)."""

    def __init__(
        self,
        examples: list[Example],
        prompts: PromptEncoder,
        tokenizer: Tokenizer,
        batch_size: int,
        max_len: int,
        seed: int,
        encode_input: bool,
        rank: int = 0,
        world_size: int = 1,
        answer_eos: bool = True,
    ) -> None:
        self.examples, self.prompts, self.tok, self.answer_eos = examples, prompts, tokenizer, answer_eos
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
            answer = self.tok.encode(ex.answer) + [self.tok.eos_id] * self.answer_eos
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


class InstructBatcher(IndexedBatches):
    """Seeded batches of packed rows. Epoch ``e`` shuffles the examples, gives each a random template, and packs
    them greedily into rows of at most ``seq_len`` tokens; batch ``i`` is a pure function of ``i`` (exact resume),
    and ranks take disjoint rows of the same step."""

    def __init__(
        self,
        examples: list[InstructionExample],
        prompts: PromptEncoder,
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        seed: int,
        encode_user: bool,
        pack: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
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
        return self.prompts.length(prompt) + len(answer)

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
                    raise ValueError(
                        f"instruction example {self.examples[i].id} is {n} tokens long; the rows are "
                        f"{self.seq_len} (seq_len)"
                    )
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
            parts, answers, n = [], [], 0
            for i, template in row:
                prompt, answer = self.render(self.examples[i], template)
                enc = self.prompts.encode(prompt)
                parts += [enc, Encoded(answer)]
                answers.append((n + len(enc.ids), n + len(enc.ids) + len(answer)))
                n += len(enc.ids) + len(answer)
            rows.append(concat(parts))
            label_spans.append(answers)
        ids, mask, docks = self.prompts.collate(rows, self.seq_len if self.pack else None)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for r, answers in enumerate(label_spans):
            for s, e in answers:
                labels[r, s:e] = ids[r, s:e]
        return Batch(ids, labels, mask, docks)
