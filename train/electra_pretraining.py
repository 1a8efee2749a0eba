"""ELECTRA pretraining of the native text encoder, with the replacement sampling of Hao et al., "Learning to Sample
Replacements for ELECTRA Pre-Training" (ACL Findings 2021): the job behind train/electra.py.

**ELECTRA** (Clark et al. 2020; the paper's Sec. 2). A share ``mask_prob`` of each text's real tokens is masked
(set M). A small generator G (a masked language model) predicts ``p_G(v | x_masked)`` at every t in M; a replacement
``x'_t`` is sampled there (no gradient flows through the sample) and every other token is kept. The discriminator D
(the encoder we want) reads the corrupted text and predicts, per position, whether it was replaced; its label is
``y_t = [x'_t != x_t]``, so a sample equal to the original counts as "original". The joint loss is

    L = L_MLM + lambda * L_RTD,   L_RTD = mean_t BCE(D_t(x'), y_t)   (lambda = 50 as in ELECTRA)

over the real tokens; after pretraining the generator is dropped and D's encoder is kept.

**Hardness-prediction sampling** (``--sampling hardness``, the paper's Sec. 3.1). Sampling from ``p_G`` spends most
replacements on tokens D already handles. The paper samples instead from ``q(v) ∝ p_G(v) * L_D(v)``, v's
discriminator loss, and reweights D's loss by the importance ratio so that its expectation is unchanged; the
proposal ∝ p * L is the one that minimises the estimator's variance (their variance argument). D's loss at t is not
known before D runs, so a hardness head on the generator predicts it. We predict it per position for the two cases
that decide D's label: ``h_t^orig`` (x'_t = x_t, the loss of saying "original") and ``h_t^repl`` (any other token,
the loss of saying "replaced"), both positive (softplus), trained by squared error on the observed, detached loss
of the case that was sampled. Then, at a masked position,

    q(v) = p_G(v) h(v) / Z,   h(v) = h^orig if v = x_t else h^repl,   Z = p_G(x_t) h^orig + (1 - p_G(x_t)) h^repl
    w(v) = p_G(v) / q(v) = Z / h(v),    E_{v~q}[w(v) L(v)] = sum_v p_G(v) L(v) = E_{v~p_G}[L(v)]

and D's loss at t is ``w(x'_t) * BCE_t``. The identity holds exactly for every loss L (tests enumerate a small
vocabulary through D to check it). Two choices are ours: the head predicts two numbers per position (not one per
vocabulary entry, which would need a V-wide regression target), and the weight is per position: it makes each masked
position's own expected loss that of plain sampling, while the loss terms at other positions (which see x'_t as
context) are not reweighted; weighting the whole sequence by the product of its weights would be exactly unbiased
for every term, at a variance that grows with the number of masked tokens. The head starts with
``h^orig = h^repl``, so sampling starts as plain ELECTRA's.

**Focal loss for the generator** (``--generator_loss focal``, the paper's Sec. 3.2). The generator grows confident,
so its samples are ever more often the original token and D sees few replacements. The focal loss (Lin et al.
2017) ``FL = -(1 - p_G(x_t))^gamma log p_G(x_t)`` down-weights positions the generator already gets right; gamma = 0
is cross-entropy.

The paper's code (github.com/YRdddream/electra-hp) is not among the stored sources we could read, so this follows the
paper's text; ELECTRA's own settings (15% masking, lambda = 50, a generator smaller than D) follow Clark et al. Our
discriminator is ``encoders.NativeTextEncoder`` (the kind the world's presets dock) with a small RTD head; the
generator is a narrower NativeTextEncoder with one extra id, its ``[MASK]``, and an output layer tied to its
embedding. The pretrained encoder is saved as a safetensors state dict that a model spec docks
(``kind: native_text, weights: FILE, freeze: all_but_last_2``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from data.prepare import prepare_tokenizer, prepare_world
from data.tasks.classification import read_glue
from data.tasks.world import read_world_choice, read_world_entail
from data.templates import CLASSIFICATION
from data.tokenizer import Tokenizer
from encoders import NativeTextEncoder
from metalm.io import atomic_write_text, read_jsonl, save_safetensors_atomic

log = logging.getLogger("metalm.electra")
SAMPLINGS = ("plain", "hardness")
GENERATOR_LOSSES = ("ce", "focal")
ENCODER_FILE = "encoder.safetensors"
MIN_HARDNESS = 1e-3  # floor of the predicted loss, so an importance weight Z / h stays finite


@dataclass
class ElectraConfig:
    """One ELECTRA pretraining run on the bundled world's text corpus, or on the plain text of ``text``."""

    world: str = "data/world"
    text: str = ""  # a plain-text file to pretrain on instead (``text_documents``), with a BPE trained on it
    out: str = "runs/electra"
    sampling: str = "plain"
    generator_loss: str = "ce"
    gamma: float = 1.0
    rtd_weight: float = 50.0
    mask_prob: float = 0.15
    steps: int = 200
    batch_size: int = 32
    seq_len: int = 64
    lr: float = 2e-3
    warmup_steps: int = 30
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 128
    gen_dim: int = 64
    gen_layers: int = 1
    vocab_size: int = 2048
    seed: int = 0

    def check(self) -> None:
        """Each field's allowed values; the message names the field."""
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling = {self.sampling!r}: expected one of {', '.join(SAMPLINGS)}")
        if self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss = {self.generator_loss!r}: expected one of {', '.join(GENERATOR_LOSSES)}")
        if self.gamma < 0:
            raise ValueError(f"gamma = {self.gamma}: expected >= 0")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob = {self.mask_prob}: expected in (0, 1)")
        if self.seq_len > self.max_len:
            raise ValueError(f"seq_len = {self.seq_len}: longer than max_len = {self.max_len}")
        for name in ("steps", "batch_size", "seq_len", "dim", "n_layers", "n_heads", "gen_dim", "gen_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: expected >= 1")


# --- the math: masking, sampling, weights, losses -------------------------------------------------------------


def mask_positions(attention: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli(``prob``) over the real tokens (``attention`` True), at least one per row that has any."""
    draw = torch.rand(attention.shape, generator=generator, device=attention.device) < prob
    masked = draw & attention
    empty = ~masked.any(1) & attention.any(1)
    if empty.any():  # a row that drew nothing masks its first real token
        first = attention.float().argmax(1)
        masked[empty, first[empty]] = True
    return masked


def replacement_distribution(
    gen_probs: torch.Tensor, originals: torch.Tensor, hardness: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The proposal ``q`` (N, V) and the importance weight ``w = p_G / q`` of every vocabulary entry (N, V), at N
    masked positions with generator probabilities ``gen_probs`` (N, V) and original ids ``originals`` (N,).

    ``hardness`` None: plain ELECTRA, ``q = p_G`` and ``w = 1``. ``hardness`` (N, 2) = (h^orig, h^repl) > 0:
    ``q(v) ∝ p_G(v) h(v)`` with ``h(v) = h^orig`` at the original id and ``h^repl`` elsewhere, ``w(v) = Z / h(v)``."""
    if hardness is None:
        return gen_probs, torch.ones_like(gen_probs)
    h = hardness[:, 1:2].expand_as(gen_probs).clone()
    h.scatter_(1, originals[:, None], hardness[:, 0:1])
    z = (gen_probs * h).sum(1, keepdim=True)
    return gen_probs * h / z, z / h


def sample_replacements(
    input_ids: torch.Tensor,
    masked: torch.Tensor,
    gen_logits: torch.Tensor,
    hardness: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupted ids (masked positions resampled, the rest kept), RTD labels (1 where the id changed) and per-position
    loss weights (the importance weight at masked positions, 1 elsewhere). ``gen_logits`` (n_masked, V) and
    ``hardness`` (n_masked, 2) are for the masked positions in row-major order; nothing here carries gradient."""
    with torch.no_grad():
        originals = input_ids[masked]
        q, w = replacement_distribution(gen_logits.float().softmax(-1), originals, hardness)
        sampled = torch.multinomial(q, 1, generator=generator).squeeze(1)
        corrupted = input_ids.clone()
        corrupted[masked] = sampled
        weights = torch.ones(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        weights[masked] = w.gather(1, sampled[:, None]).squeeze(1)
        labels = (corrupted != input_ids).float()
    return corrupted, labels, weights


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean of ``-(1 - p_t)^gamma log p_t`` over rows (Lin et al. 2017); ``gamma = 0`` is cross-entropy."""
    logp = logits.float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def rtd_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Replaced-token detection: the weighted binary cross-entropy averaged over the real tokens."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    return (bce * weights * real).sum() / real.sum().clamp(min=1)


# --- the models ---------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """A narrow masked LM over the vocabulary plus one ``[MASK]`` id (= vocab_size), with a hardness head."""

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, max_len: int):
        super().__init__()
        self.mask_id = vocab_size
        self.vocab_size = vocab_size
        self.encoder = NativeTextEncoder(vocab_size + 1, dim, n_layers, n_heads, max_len)
        self.hardness = nn.Linear(dim, 2)
        nn.init.zeros_(self.hardness.weight)
        nn.init.constant_(self.hardness.bias, math.log(math.e - 1))  # softplus(bias) = 1: h^orig = h^repl at start

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits over the real vocabulary (n_masked, V) and the predicted losses (n_masked, 2) at masked positions."""
        hidden = self.encoder({"input_ids": ids.masked_fill(masked, self.mask_id), "attention_mask": attention})
        h = hidden.hidden_states[masked]
        logits = h @ self.encoder.token_embedding.weight[: self.vocab_size].T
        return logits, F.softplus(self.hardness(h)) + MIN_HARDNESS


class Discriminator(nn.Module):
    """The text encoder being pretrained with a small replaced-token-detection head."""

    def __init__(self, encoder: NativeTextEncoder):
        super().__init__()
        self.encoder = encoder
        dim = encoder.output_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """One replaced-or-not logit per position (N, T)."""
        out = self.encoder({"input_ids": ids, "attention_mask": attention})
        return self.head(out.hidden_states).squeeze(-1)


def electra_step(
    gen: Generator,
    disc: Discriminator,
    ids: torch.Tensor,
    attention: torch.Tensor,
    cfg: ElectraConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint loss of one batch and its parts: generator (CE or focal), RTD (reweighted), hardness head."""
    masked = mask_positions(attention, cfg.mask_prob, generator)
    gen_logits, hardness = gen(ids, attention, masked)
    originals = ids[masked]
    mlm = focal_loss(gen_logits, originals, cfg.gamma if cfg.generator_loss == "focal" else 0.0)
    use_h = hardness.detach() if cfg.sampling == "hardness" else None
    corrupted, labels, weights = sample_replacements(ids, masked, gen_logits.detach(), use_h, generator)
    logits = disc(corrupted, attention)
    rtd = rtd_loss(logits, labels, weights, attention.float())
    loss = mlm + cfg.rtd_weight * rtd
    # the hardness head regresses D's observed (unweighted, detached) loss of the case that was sampled
    observed = F.binary_cross_entropy_with_logits(logits.detach()[masked], labels[masked], reduction="none")
    case = labels[masked].long()
    predicted = hardness.gather(1, case[:, None]).squeeze(1)
    hp = F.mse_loss(predicted, observed)
    if cfg.sampling == "hardness":
        loss = loss + hp
    with torch.no_grad():
        correct = ((logits > 0).float() == labels).float()
        parts = {
            "loss": float(loss),
            "mlm": float(mlm),
            "rtd": float(rtd),
            "hardness_mse": float(hp),
            "replaced_rate": float(labels[masked].mean()),
            "rtd_acc": float((correct * attention).sum() / attention.sum()),
            "weight_max": float(weights.max()),
        }
    return loss, parts


# --- data ---------------------------------------------------------------------------------------------------


def chunk_stream(docs: list[str], tokenizer: Tokenizer, seq_len: int, source: str) -> torch.Tensor:
    """``docs`` as one stream of ids (documents joined by ``</s>``) cut into rows of ``seq_len`` ids."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(docs):
        stream += ids + [tokenizer.eos_id]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"{source}: fewer than seq_len = {seq_len} tokens")
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def corpus_chunks(world: Path, split: str, tokenizer: Tokenizer, seq_len: int) -> torch.Tensor:
    """The world's ``split`` corpus as rows of ``seq_len`` ids (``chunk_stream``)."""
    path = world / "text" / f"corpus_{split}.jsonl"
    docs = [row["text"] for row in read_jsonl(path, "the world's text corpus")]
    return chunk_stream(docs, tokenizer, seq_len, str(path))


def text_documents(path: str | Path) -> list[str]:
    """A plain-text file's documents: its blank-line-separated paragraphs (lines joined by spaces), or, in a file
    without blank lines (one sentence a line, as the Penn Treebank), its lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file (ELECTRA's --text: plain UTF-8 text)")
    raw = path.read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in raw.split("\n\n")]
    docs = [d for d in paragraphs if d]
    if len(docs) < 20:  # no paragraph breaks to speak of: a document per line
        docs = [" ".join(line.split()) for line in raw.splitlines() if line.strip()]
    if len(docs) < 20:
        raise ValueError(f"{path}: {len(docs)} non-empty documents; ELECTRA needs at least 20 (5% are held out)")
    return docs


@functools.lru_cache(maxsize=4)
def text_tokenizer(path: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` trained on ``path``'s training documents (the same one every call)."""
    docs = text_documents(path)
    return Tokenizer.train(docs[: len(docs) - held_out_count(docs)], vocab_size)


def held_out_count(docs: list[str]) -> int:
    return max(1, len(docs) // 20)


def unigram_entropy(rows: torch.Tensor) -> float:
    """The entropy (nats) of the ids' frequencies in ``rows``: the loss of a generator that has learned which
    tokens are frequent and nothing of their context (the plateau a masked LM sits on before attention works)."""
    counts = torch.bincount(rows.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def corpus_tokenizer(cfg: ElectraConfig) -> Tokenizer:
    """The tokenizer a run's encoder reads: the world's, or with ``cfg.text`` a BPE trained on that file."""
    if cfg.text:
        return text_tokenizer(str(cfg.text), cfg.vocab_size)
    return prepare_tokenizer(prepare_world(cfg.world, 0), "", cfg.vocab_size)


def corpus(cfg: ElectraConfig) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """The tokenizer and the training / held-out rows: the world's corpus and tokenizer, or with ``cfg.text`` that
    file's documents (the last 5% held out) and a BPE trained on the rest."""
    tokenizer = corpus_tokenizer(cfg)
    if cfg.text:
        docs = text_documents(cfg.text)
        cut = len(docs) - held_out_count(docs)
        train = chunk_stream(docs[:cut], tokenizer, cfg.seq_len, cfg.text)
        return tokenizer, train, chunk_stream(docs[cut:], tokenizer, cfg.seq_len, f"{cfg.text} (held-out 5%)")
    world = prepare_world(cfg.world, 0)
    train = corpus_chunks(world, "train", tokenizer, cfg.seq_len)
    return tokenizer, train, corpus_chunks(world, "val", tokenizer, cfg.seq_len)


@torch.no_grad()
def detection_check(
    gen: Generator, disc: Discriminator, ids: torch.Tensor, cfg: ElectraConfig, seed: int = 1234
) -> dict[str, float]:
    """How the trained discriminator tells replaced tokens on held-out rows ``ids``, for two kinds of replacement
    at the same masked positions: the generator's samples (what it trained on) and uniformly random ids (tokens
    that rarely fit their context). ``recall``: share of the replaced positions it calls replaced; ``false_alarm``:
    share of the untouched positions it calls replaced. A discriminator near its base rate on the generator's
    samples but with a high recall on random ids has learned what fits a context, and meets replacements the
    context cannot rule out (a colour for a colour in a sentence of independent facts)."""
    rng = torch.Generator().manual_seed(seed)
    attention = torch.ones_like(ids, dtype=torch.bool)
    masked = mask_positions(attention, cfg.mask_prob, rng)
    gen_logits, _ = gen(ids, attention, masked)
    out = {}
    for kind in ("generator", "random"):
        if kind == "generator":
            corrupted, labels, _ = sample_replacements(ids, masked, gen_logits, None, rng)
        else:
            corrupted = ids.clone()
            corrupted[masked] = torch.randint(gen.vocab_size, (int(masked.sum()),), generator=rng)
            labels = (corrupted != ids).float()
        said = disc(corrupted, attention) > 0
        replaced, kept = labels.bool(), ~labels.bool()
        out[f"{kind}_recall"] = float(said[replaced].float().mean()) if replaced.any() else float("nan")
        out[f"{kind}_false_alarm"] = float(said[kept].float().mean())
        out[f"{kind}_replaced_share"] = float(labels[masked].mean())
    return out


def _lr_at(step: int, cfg_steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (cfg_steps - step) / max(1, cfg_steps - warmup))


def pretrain_electra(cfg: ElectraConfig) -> dict[str, Any]:
    """Train generator and discriminator jointly on the world's corpus; write the encoder (``encoder.safetensors``
    + ``encoder.json``), the per-step ``metrics.jsonl`` and ``summary.json`` into ``cfg.out``; return the summary."""
    cfg.check()
    start = time.perf_counter()
    tokenizer, data, held_out = corpus(cfg)
    torch.manual_seed(cfg.seed)
    rng = torch.Generator().manual_seed(cfg.seed)
    vocab = tokenizer.vocab_size
    encoder = NativeTextEncoder(vocab, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.max_len)
    disc = Discriminator(encoder)
    gen = Generator(vocab, cfg.gen_dim, cfg.gen_layers, max(1, cfg.gen_dim // 32), cfg.max_len)
    params = list(disc.parameters()) + list(gen.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, cfg.steps, cfg.warmup_steps))
    history = []
    for step in range(cfg.steps):
        rows = torch.randint(len(data), (cfg.batch_size,), generator=rng)
        ids = data[rows]
        loss, parts = electra_step(gen, disc, ids, torch.ones_like(ids, dtype=torch.bool), cfg, rng)
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(f"ELECTRA loss is {parts['loss']} at step {step} ({parts})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, **parts})
    gen.eval(), disc.eval()
    detection = detection_check(gen, disc, held_out[:256], cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(encoder.state_dict(), out / ENCODER_FILE)
    meta = {"kind": "native_text", "args": encoder.config, "text": cfg.text}
    atomic_write_text(out / "encoder.json", json.dumps(meta, indent=1))
    if cfg.text:  # the encoder reads this tokenizer's ids, not the world's
        tokenizer.save(out / "tokenizer")
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    tail = history[-max(1, len(history) // 10) :]
    summary = {
        "config": asdict(cfg),
        "encoder": str(out / ENCODER_FILE),
        "encoder_args": encoder.config,
        "first": history[0],
        "last_tenth": {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if k != "step"},
        "held_out_detection": detection,
        "unigram_entropy": unigram_entropy(data),
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


# --- downstream finetuning on the world's text tasks ------------------------------------------------------------


@dataclass
class FinetuneSettings:
    """Finetuning of a pretrained (or random) encoder on one world task, mean-pooled into a linear head."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    n_train: int = 2000
    n_eval: int = 300
    seed: int = 0
    task_train: str = ""  # a GLUE task's (e.g. sst2) training tsv, for a task that is not the world's
    task_val: str = ""  # and its held-out tsv


def _pair_ids(tokenizer: Tokenizer, first: str, second: str, max_len: int) -> list[int]:
    ids = tokenizer.encode(first) + [tokenizer.par_id] + tokenizer.encode(second)
    return ids[:max_len]


def world_task(world: Path, task: str, split: str, tokenizer: Tokenizer, max_len: int, limit: int) -> list[tuple]:
    """``(list of candidate id lists, label)`` per example: ``entail`` has one candidate (premise </p> hypothesis)
    and labels 0/1; ``choice`` has one candidate per option (question </p> option) and the right option's index."""
    if task == "entail":
        data = read_world_entail(world, split)
        rows = [([_pair_ids(tokenizer, e.texts["premise"], e.texts["hypothesis"], max_len)], e.label) for e in data]
        rows = [(c, int(label == "entailment")) for c, label in rows]
    elif task == "choice":
        data = read_world_choice(world, split)
        rows = [([_pair_ids(tokenizer, ctx, cont.strip(), max_len) for ctx, cont in e.options], e.label) for e in data]
    else:
        raise ValueError(f"task = {task!r}: expected entail or choice")
    return rows[:limit]


def file_task(task: str, path: str, tokenizer: Tokenizer, max_len: int, limit: int) -> list[tuple]:
    """A GLUE classification task's tsv (``data.tasks.read_glue``) as ``([ids], label index)`` rows: the text
    fields joined by ``</p>``, the label's index among the task's labels (``data.templates``)."""
    if not path:
        raise ValueError(f"task {task}: give its tsv files (--task_train and --task_val)")
    template = CLASSIFICATION[task]
    rows = []
    for ex in read_glue(path, task).examples[: limit or None]:
        ids: list[int] = []
        for text in ex.texts.values():
            ids += ([tokenizer.par_id] if ids else []) + tokenizer.encode(text)
        rows.append(([ids[:max_len]], template.index(ex.label, f"{path}: example {ex.id}")))
    return rows


def task_rows(world: Path | None, task: str, split: str, tokenizer: Tokenizer, max_len: int, ft) -> list[tuple]:
    """A downstream task's rows: the world's ``entail`` / ``choice``, or a GLUE task read from ``ft``'s files."""
    limit = ft.n_train if split == "train" else ft.n_eval
    if task in TASKS:
        if world is None:
            raise ValueError(f"task {task} is the world's; this run has no world")
        return world_task(world, task, split, tokenizer, max_len, limit)
    return file_task(task, ft.task_train if split == "train" else ft.task_val, tokenizer, max_len, limit)


def n_outputs(task: str) -> int:
    """Logits per example (``choice``: one score per candidate)."""
    if task == "choice":
        return 1
    return 2 if task == "entail" else len(CLASSIFICATION[task].verbalizers)


class TaskModel(nn.Module):
    """Encoder, mean pool over real tokens, then 2 logits (entail) or 1 score per candidate (choice)."""

    def __init__(self, encoder: NativeTextEncoder, n_out: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, n_out)

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        out = self.encoder({"input_ids": ids, "attention_mask": attention})
        mask = out.mask.float()[..., None]
        pooled = (out.hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


def _task_logits(model: TaskModel, batch: list[tuple], pad: int, task: str) -> torch.Tensor:
    seqs = [c for cands, _ in batch for c in cands]
    lengths = [len(s) for s in seqs]
    ids = torch.full((len(seqs), max(lengths)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    attention = torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]
    out = model(ids, attention)
    return out.view(len(batch), -1) if task == "choice" else out


def finetune_encoder(
    encoder_state: dict[str, torch.Tensor] | None,
    encoder_args: dict[str, Any],
    world: Path | None,
    tokenizer: Tokenizer,
    task: str,
    settings: FinetuneSettings,
) -> dict[str, float]:
    """Finetune a NativeTextEncoder (``encoder_state`` loaded, or random when None) on a task's training rows
    (``task_rows``); accuracy on its held-out rows."""
    torch.manual_seed(settings.seed)
    encoder = NativeTextEncoder(**encoder_args)
    if encoder_state is not None:
        encoder.load_state_dict(encoder_state)
    max_len = encoder_args["max_len"]
    train = task_rows(world, task, "train", tokenizer, max_len, settings)
    val = task_rows(world, task, "val", tokenizer, max_len, settings)
    model = TaskModel(encoder, n_outputs(task))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, settings.steps, settings.steps // 10))
    rng = random.Random(settings.seed)
    pad = tokenizer.pad_id
    for _ in range(settings.steps):
        batch = rng.sample(train, settings.batch_size)
        labels = torch.tensor([y for _, y in batch])
        loss = F.cross_entropy(_task_logits(model, batch, pad, task), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val), 64):
            batch = val[i : i + 64]
            pred = _task_logits(model, batch, pad, task).argmax(-1)
            correct += int((pred == torch.tensor([y for _, y in batch])).sum())
    return {"accuracy": correct / len(val), "final_train_loss": float(loss.detach()), "n_val": len(val)}


# --- the comparison -----------------------------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "electra": {"sampling": "plain", "generator_loss": "ce"},
    "hardness": {"sampling": "hardness", "generator_loss": "ce"},
    "focal": {"sampling": "plain", "generator_loss": "focal"},
}
TASKS = ("entail", "choice")


@dataclass
class CompareSettings:
    """Which variants and seeds the comparison runs; ``scratch`` finetunes a random encoder as the floor."""

    variants: list[str] = field(default_factory=lambda: [*VARIANTS, "scratch"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def _one_run(base: ElectraConfig, finetune: FinetuneSettings, variant: str, seed: int, tasks: list[str], out: Path):
    """One (variant, seed) of the comparison: ELECTRA pretraining (none for ``scratch``), then each task."""
    world = prepare_world(base.world, 0) if any(t in TASKS for t in tasks) else None
    cfg = ElectraConfig(**{**asdict(base), **VARIANTS.get(variant, {}), "seed": seed})
    tokenizer = corpus_tokenizer(cfg)  # pretraining builds its rows itself; the tasks need only this
    cfg.out = str(out / "runs" / f"{variant}-seed{seed}")
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    args: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "max_len": cfg.max_len,
    }
    state = None
    if variant != "scratch":
        summary = pretrain_electra(cfg)
        row["pretrain"] = {"seconds": summary["seconds"], **summary["last_tenth"]}
        row["held_out_detection"] = summary["held_out_detection"]
        state = load_file(summary["encoder"])
        args = dict(summary["encoder_args"])
    for task in tasks:
        t0 = time.perf_counter()
        ft = FinetuneSettings(**{**asdict(finetune), "seed": seed})
        row[task] = {**finetune_encoder(state, args, world, tokenizer, task, ft), "seconds": 0.0}
        row[task]["seconds"] = time.perf_counter() - t0
    return row


def compare(
    base: ElectraConfig, finetune: FinetuneSettings, settings: CompareSettings, out: Path, jobs: int = 1
) -> dict:
    """Pretrain each variant for each seed, finetune its encoder on each task, and collect accuracies (runs under
    ``out/runs``, ``jobs`` processes at a time): ``{"runs": [...], "table": {variant: {task: (mean, std)}}}``."""
    for variant in settings.variants:
        if variant not in VARIANTS and variant != "scratch":
            raise ValueError(f"variant {variant!r}: expected one of {', '.join([*VARIANTS, 'scratch'])}")
    if not base.text:  # the world's tokenizer is cached on disk: made once here, before any worker needs it
        corpus_tokenizer(base)
    todo = [(base, finetune, v, seed, settings.tasks, out) for v in settings.variants for seed in settings.seeds]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            runs = list(pool.map(_one_run, *zip(*todo, strict=True)))
    else:
        runs = [_one_run(*job) for job in todo]
    table = {
        v: {t: mean_std([r[t]["accuracy"] for r in runs if r["variant"] == v]) for t in settings.tasks}
        for v in settings.variants
    }
    return {"runs": runs, "table": table}


# --- the paper's recipe: the ELECTRA encoder docked into MetaLM pretraining ----------------------------------


def docked_text_encoder(encoder_file: str | Path, encoder_args: dict[str, Any], freeze: str) -> dict[str, Any]:
    """The model-spec entry of a native text encoder with its ELECTRA weights (``weights: FILE``) and ``freeze``."""
    args = {k: encoder_args[k] for k in ("dim", "n_layers", "n_heads", "max_len")}
    return {
        "kind": "native_text",
        "tokenizer": "decoder",
        "weights": str(encoder_file),
        "args": args,
        "freeze": freeze,
        "connector": {"kind": "linear"},
    }


def dock_comparison(
    encoder_file: str | Path,
    encoder_args: dict[str, Any],
    world: str,
    steps: int,
    seeds: list[int],
    out: Path,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Language MetaLM pretraining (the ``tiny`` decoder, no vision encoder, text documents only) with the text
    encoder from scratch (today's preset: random, all trained) vs ELECTRA-pretrained and docked through the spec
    with all but its last two layers frozen (the paper's recipe); validation loss per arm and seed."""
    from metalm import MetaLM
    from train.pretraining import PretrainConfig, pretrain  # the MetaLM job; heavy, only for this comparison

    scratch = {k: encoder_args[k] for k in ("dim", "n_layers", "n_heads", "max_len")}
    arms = {
        "from_scratch": {"kind": "native_text", "tokenizer": "decoder", "args": scratch, "freeze": "none"},
        "electra_docked": docked_text_encoder(encoder_file, encoder_args, "all_but_last_2"),
    }
    runs = []
    for arm, text in arms.items():
        for seed in seeds:
            cfg = PretrainConfig(
                preset="tiny",
                model={"encoders": {"vision": None, "text": {**text, "connector": {"kind": "linear"}}}},
                world=world,
                text_weight=1.0,
                batch_size=batch_size,
                seq_len=encoder_args["max_len"],
                vision_warmup_steps=0,
                max_steps=steps,
                warmup_steps=min(50, steps // 5),
                eval_every=0,
                ckpt_every=steps,
                seed=seed,
                out=str(out / "runs" / f"metalm-{arm}-seed{seed}"),
            )
            t0 = time.perf_counter()
            summary = pretrain(cfg)
            model = MetaLM.from_pretrained(Path(cfg.out) / "final")
            model.apply_freeze()
            trainable = sum(p.numel() for p in model.encoders["text"].parameters() if p.requires_grad)
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "first_loss": summary["first_loss"],
                    "last_loss": summary["last_loss"],
                    "val_loss": summary["val_loss"],
                    "unigram_loss": summary["unigram_loss"],
                    "trainable_encoder_params": trainable,
                    "seconds": time.perf_counter() - t0,
                }
            )
    table = {arm: mean_std([r["val_loss"] for r in runs if r["arm"] == arm]) for arm in arms}
    return {"runs": runs, "val_loss": table, "steps": steps, "batch_size": batch_size, "text_encoders": arms}


# --- the report ---------------------------------------------------------------------------------------------


def task_label(task: str) -> str:
    return f"world-{task}" if task in TASKS else task


def _table_markdown(result: dict[str, Any]) -> str:
    comp = result["comparison"]
    tasks = list(next(iter(comp["table"].values())))
    seeds = sorted({r["seed"] for r in comp["runs"]})
    text = result["pretrain_config"].get("text")
    lines = [
        f"Downstream accuracy (held-out, mean ± std over seeds {seeds}) of the text encoder after ELECTRA "
        f"pretraining on {text or 'the world corpus'}, finetuned per task:",
        "",
        "| pretraining | "
        + " | ".join(f"{task_label(t)} acc" for t in tasks)
        + " | replaced share | RTD acc | RTD base rate | held-out recall: generator / random | pretrain s |",
        "|---|" + "---|" * (len(tasks) + 5),
    ]
    for variant, row in comp["table"].items():
        runs = [r for r in comp["runs"] if r["variant"] == variant and "pretrain" in r]
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in row.values()]
        if runs:
            replaced = mean_std([r["pretrain"]["replaced_rate"] for r in runs])[0]
            acc = mean_std([r["pretrain"]["rtd_acc"] for r in runs])[0]
            base = 1 - result["pretrain_config"]["mask_prob"] * replaced
            secs = mean_std([r["pretrain"]["seconds"] for r in runs])[0]
            checked = [r["held_out_detection"] for r in runs if "held_out_detection" in r]
            recall = (
                " / ".join(f"{mean_std([c[f'{k}_recall'] for c in checked])[0]:.3f}" for k in ("generator", "random"))
                if checked
                else "-"
            )
            extra = [f"{replaced:.3f}", f"{acc:.3f}", f"{base:.3f}", recall, f"{secs:.0f}"]
        else:
            extra = ["-"] * 5
        lines.append(f"| {variant} | " + " | ".join(cells + extra) + " |")
    lines += [
        "",
        "replaced share: share of masked positions whose sample differs from the original (last tenth of training); "
        "RTD acc: the discriminator's accuracy over all tokens then; RTD base rate: the accuracy of always answering "
        "'original' (1 - mask_prob x replaced share); held-out recall: the share of replaced tokens the final "
        "discriminator calls replaced on held-out rows, for the generator's samples and for uniformly random ids "
        "(``detection_check``). scratch: a random encoder finetuned the same way.",
    ]
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], runs_dir: Path, out: Path) -> None:
    from metalm.io import pyplot

    plt = pyplot()

    comp = result["comparison"]
    variants = list(comp["table"])
    tasks = list(comp["table"][variants[0]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        means = [comp["table"][v][task][0] for v in variants]
        stds = [comp["table"][v][task][1] for v in variants]
        xs = [j + i * width for j in range(len(variants))]
        axes[0].bar(xs, means, width, yerr=stds, capsize=3, label=task_label(task))
    axes[0].set_xticks([j + width * (len(tasks) - 1) / 2 for j in range(len(variants))], variants)
    axes[0].set_ylabel("val accuracy")
    axes[0].set_title("finetuned encoder (mean ± std over seeds)")
    axes[0].legend()
    for variant in variants:
        files = sorted(runs_dir.glob(f"runs/{variant}-seed*/metrics.jsonl"))
        if not files:
            continue
        curves = [[json.loads(line)["rtd_acc"] for line in f.read_text().splitlines()] for f in files]
        n = min(len(c) for c in curves)
        mean = [sum(c[k] for c in curves) / len(curves) for k in range(n)]
        k = max(1, n // 30)
        smooth = [sum(mean[j : j + k]) / len(mean[j : j + k]) for j in range(0, n, k)]
        axes[1].plot(range(0, n, k), smooth, label=variant)
    axes[1].set_xlabel("pretraining step")
    axes[1].set_ylabel("RTD accuracy (all tokens)")
    axes[1].set_title("discriminator during ELECTRA pretraining")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "electra.png", dpi=120)
    plt.close(fig)


def run_comparison(
    base: ElectraConfig,
    variants: list[str],
    seeds: list[int],
    finetune_steps: int,
    runs_dir: Path,
    out: Path,
    jobs: int = 1,
    tasks: list[str] | None = None,
    finetune: FinetuneSettings | None = None,
) -> dict[str, Any]:
    """The comparison (``compare``, each run's files under ``runs_dir``) on ``tasks`` (the world's by default);
    writes ``electra.json``, ``electra.md`` and ``electra.png`` into ``out``."""
    start = time.perf_counter()
    finetune = replace(finetune or FinetuneSettings(), steps=finetune_steps)
    settings = CompareSettings(variants, seeds, list(tasks or TASKS))
    result: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "pretrain_config": asdict(base),
        "finetune": asdict(finetune),
        "comparison": compare(base, finetune, settings, runs_dir, jobs),
    }
    result["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "electra.json", json.dumps(result, indent=1))
    atomic_write_text(out / "electra.md", _table_markdown(result))
    _plot(result, runs_dir, out)
    print(_table_markdown(result))
    return result


def _dock_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Language MetaLM (the tiny decoder, no vision encoder, text documents only, seq_len {result['seq_len']}) "
        f"after {result['steps']} pretraining steps of {result['batch_size']} rows; validation loss in nats/token "
        f"(mean ± std over seeds "
        f"{result['seeds']}; unigram baseline {result['runs'][0]['unigram_loss']:.3f}). ELECTRA encoder: "
        f"{result['encoder']}.",
        "",
        "| text encoder | freeze | trainable encoder params | val loss | train loss (last) | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for arm, (m, s) in result["val_loss"].items():
        runs = [r for r in result["runs"] if r["arm"] == arm]
        last = mean_std([r["last_loss"] for r in runs])[0]
        secs = mean_std([r["seconds"] for r in runs])[0]
        enc = result["text_encoders"][arm]
        lines.append(
            f"| {arm} | {enc['freeze']} | {runs[0]['trainable_encoder_params']} | {m:.3f} ± {s:.3f} | {last:.3f} "
            f"| {secs:.0f} |"
        )
    return "\n".join(lines) + "\n"


def run_dock_comparison(
    encoder_file: Path, world: str, steps: int, seeds: list[int], runs_dir: Path, out: Path, batch_size: int = 8
) -> dict[str, Any]:
    """``dock_comparison`` for the encoder saved at ``encoder_file`` (its ``encoder.json`` beside it); writes
    ``metalm.json`` and ``metalm.md`` into ``out``."""
    meta = encoder_file.parent / "encoder.json"
    if not encoder_file.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{encoder_file}: expected an ELECTRA run's encoder.safetensors with encoder.json")
    meta = json.loads(meta.read_text())
    if meta.get("text"):
        raise ValueError(
            f"{encoder_file}: pretrained on {meta['text']} with its own tokenizer; docking into the world's MetaLM "
            "needs an encoder that reads the world tokenizer's ids (pretrained without --text)"
        )
    args = meta["args"]
    result = {
        "encoder": str(encoder_file),
        "seq_len": args["max_len"],
        "seeds": seeds,
        **dock_comparison(encoder_file, args, world, steps, seeds, runs_dir, batch_size),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metalm.json", json.dumps(result, indent=1))
    atomic_write_text(out / "metalm.md", _dock_markdown(result))
    print(_dock_markdown(result))
    return result
