"""Finetuning dynamics: how much each attention head and each layer's representation moves when a pretrained
decoder is finetuned, and whether different seeds agree (Hao et al., "Investigating Learning Dynamics of BERT
Fine-Tuning", AACL 2020).

Definitions (natural logarithms throughout):

- **Attention change** (their section 3.2): for layer l, head h and query position i the head's attention row
  ``p = A_{l,h}[i, :]`` before finetuning and ``q`` after are distributions over the keys; their Jensen-Shannon
  divergence ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` lies in ``[0, ln 2]``, is
  symmetric and zero iff ``p = q``. ``attention_js`` averages it over the real (non-padding) query positions of
  all probe examples, one number per (layer, head).
- **Representation change** (their section 3.1, SVCCA of Raghu et al. 2017): the hidden states of layer l over
  all real token positions of the probe examples form ``X`` (N x d) before and ``Y`` after. Each is centred and
  reduced by SVD to the top singular directions that keep ``keep`` (99%) of its variance, ``X' = U_k S_k``; the
  canonical correlations ``rho_1 >= ... >= rho_m`` (``m = min(k_x, k_y)``) of ``X'`` and ``Y'`` are the singular
  values of ``U_kx^T U_ky``. ``svcca_distance = 1 - mean(rho)``: 0 when ``Y = X R`` for a rotation ``R`` (and for
  any invertible linear map when the reduction keeps the whole span, e.g. ``keep=1``), near 1 for independent
  representations (N >> d).
- **Consistency across seeds** (their section 4: the trends hold for every seed): the Pearson correlation between
  two seeds' per-layer SVCCA curves and between their (layer x head) JS maps, averaged over seed pairs.

The experiment: a small decoder pretrained as a causal language model on the bundled world's corpus (or any
MetaLM checkpoint, ``init_from``) is finetuned on ``world-entail`` (the RTE-style text classification of the
world, its prompts and label words from ``train.finetuning.read_examples``) once per seed (the seed sets the data
order), and compared before / after on held-out probe examples read through ``metalm.probes``. The same
finetuning (``finetune``, which keeps parameter snapshots) feeds ``analysis.landscape``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from data.batch import Batch
from data.batching import Example, ExampleBatcher
from data.prepare import prepare_tokenizer, prepare_world
from data.prompts import PromptEncoder
from data.tokenizer import Tokenizer
from metalm import DecoderConfig, MetaLM, MetaLMConfig
from metalm.io import read_jsonl
from metalm.loss import IGNORE_INDEX
from metalm.probes import probe

TASK = "world-entail"
LABEL_WORDS = (" True", " False")  # the rte template's verbalizers (data.templates.CLASSIFICATION)


# --- the measures ---------------------------------------------------------------------------------------------


def js_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions ``p`` and ``q`` along ``dim``; zero entries are
    handled as ``0 log 0 = 0``, so causal and padded attention rows compare as they are."""
    if p.shape != q.shape:
        raise ValueError(f"js_divergence: shapes differ, {tuple(p.shape)} vs {tuple(q.shape)}")
    p, q = p.double(), q.double()
    m = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim)
    return ((kl_pm + kl_qm) / 2).clamp(0.0, math.log(2))


def attention_js(before: list[torch.Tensor], after: list[torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    """(layers, heads) mean JS divergence between the attention rows ``before[l]`` and ``after[l]``
    (each ``(B, heads, T, T)``) over the real query positions ``mask`` (``(B, T)``, 1 = real token)."""
    rows = mask.bool()
    out = []
    for a, b in zip(before, after, strict=True):
        js = js_divergence(a, b)  # (B, H, T)
        out.append((js * rows[:, None, :]).sum((0, 2)) / rows.sum())
    return torch.stack(out).numpy()


def _reduce(x: np.ndarray, keep: float) -> np.ndarray:
    """Orthonormal basis (N x k) of the top singular directions of centred ``x`` that keep ``keep`` of its
    variance (directions with no variance never count)."""
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    s = s[s > s[0] * 1e-10] if s.size and s[0] > 0 else s[:0]
    if s.size == 0:
        raise ValueError("svcca: a representation has no variance (all rows equal)")
    share = np.cumsum(s**2) / np.sum(s**2)
    k = min(int(np.searchsorted(share, keep - 1e-12)) + 1, s.size)
    return u[:, :k]


def svcca_correlations(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, keep: float = 0.99) -> np.ndarray:
    """Canonical correlations, largest first, between the SVD-reduced ``x`` and ``y`` (both N x d, rows are the
    same N inputs)."""
    x, y = (np.asarray(t.double() if isinstance(t, torch.Tensor) else t, dtype=np.float64) for t in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"svcca: expected two (N, d) arrays over the same N inputs, got {x.shape} and {y.shape}")
    if not 0 < keep <= 1:
        raise ValueError(f"svcca: keep = {keep}: expected a share of variance in (0, 1]")
    qx, qy = _reduce(x, keep), _reduce(y, keep)
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def svcca_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, keep: float = 0.99) -> float:
    """``1 - mean canonical correlation`` of SVCCA (Raghu et al. 2017) between ``x`` and ``y`` (N x d each)."""
    return float(1.0 - svcca_correlations(x, y, keep).mean())


def seed_consistency(curves: np.ndarray) -> float:
    """Mean Pearson correlation over seed pairs of ``curves`` (seeds x values: per-layer curves or flattened
    maps); NaN with fewer than two seeds or a constant curve."""
    curves = np.asarray(curves, dtype=np.float64).reshape(len(curves), -1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant curve: NaN, as documented
        rs = [np.corrcoef(a, b)[0, 1] for a, b in combinations(curves, 2)]
    return float(np.mean(rs)) if rs else float("nan")


# --- probing a decoder -------------------------------------------------------------------------------------------


@dataclass
class Probed:
    """What one model computes on the probe examples: per-layer attention ``(B, H, T, T)`` and hidden states
    ``(B, T, d)``."""

    attention: list[torch.Tensor]
    hidden: list[torch.Tensor]


@torch.no_grad()
def read_layers(model: MetaLM, batch: Batch) -> Probed:
    """Attention weights and hidden states of every layer of ``model``'s decoder on ``batch`` (eval mode)."""
    was = model.training
    model.eval()
    with probe(model.decoder, record=("attn_weights", "hidden")) as seen:
        model(batch.input_ids, batch.docks, attention_mask=batch.attention_mask)
    model.train(was)
    return Probed([w.cpu() for w in seen.attn_weights], [h.float().cpu() for h in seen.hidden])


def compare(
    before: Probed, after: Probed, mask: torch.Tensor, keep: float = 0.99, skip_first: bool = False
) -> dict[str, np.ndarray]:
    """``js`` (layers x heads) and ``svcca`` (layers) between two reads of the same probe batch. ``skip_first``
    leaves each row's first real position out of SVCCA: a pretrained LLM puts massive activations there (Sun et
    al. 2024; SmolLM2's first position has norm 23,000 at layer 15 against 170 elsewhere), so its few dimensions
    hold all the variance SVCCA keeps and the distance reads 0 whatever the other positions do."""
    rows = mask.bool()
    if skip_first:
        rows = rows.clone()
        rows[torch.arange(len(rows)), rows.float().argmax(1)] = False
    svcca = [svcca_distance(a[rows], b[rows], keep) for a, b in zip(before.hidden, after.hidden, strict=True)]
    return {"js": attention_js(before.attention, after.attention, mask), "svcca": np.array(svcca)}


# --- the world experiment: a quickly pretrained decoder, finetuned on world-entail ------------------------------


@dataclass
class Setup:
    """The finetuning task of the experiments: tokenizer, prompt encoder, train / held-out examples, the two
    label words' first ids, and how the models are shaped."""

    tokenizer: Tokenizer
    train: list[Example]
    val: list[Example]
    label_ids: tuple[int, int]
    max_len: int = 96
    decoder: dict = field(default_factory=dict)

    def batch(self, examples: list[Example], model: MetaLM) -> Batch:
        """``examples`` as one padded batch, labels on the answer only (the finetuning batcher's build)."""
        return self.batcher(examples, model, 1, 0).build(examples)

    def batcher(self, examples: list[Example], model: MetaLM, batch_size: int, seed: int) -> ExampleBatcher:
        return ExampleBatcher(
            examples, PromptEncoder(model, self.tokenizer), self.tokenizer, batch_size, self.max_len, seed, False
        )


def world_setup(world: str | Path, n_train: int = 8000, n_val: int = 256, vocab_size: int = 2048) -> Setup:
    """world-entail's examples from the bundled world at ``world`` (generated when missing) with its tokenizer
    (trained once on the world's corpus); the first ``n_train`` training and ``n_val`` validation examples."""
    from train.finetuning import FinetuneConfig, read_examples

    world = prepare_world(world, seed=0)
    tok = prepare_tokenizer(world, "", vocab_size)
    cfg = FinetuneConfig(task=TASK, world=str(world))
    train_ex, val_ex = read_examples(cfg, "train")[:n_train], read_examples(cfg, "val")[:n_val]
    label_ids = tuple(tok.encode(w)[0] for w in LABEL_WORDS)
    if label_ids[0] == label_ids[1]:
        raise ValueError(f"the label words {LABEL_WORDS} start with the same token; accuracy needs them to differ")
    return Setup(tok, train_ex, val_ex, label_ids)


def new_decoder(setup: Setup, seed: int, dim: int = 64, n_layers: int = 4, n_heads: int = 4) -> MetaLM:
    """A randomly initialised decoder-only MetaLM (learned positions, GPT-2 style) sized for CPU minutes."""
    torch.manual_seed(seed)
    cfg = DecoderConfig(
        vocab_size=setup.tokenizer.vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        max_seq_len=128,
        positions="learned",
        attention="sdpa",
    )
    model = MetaLM(MetaLMConfig(cfg, {}))
    model.decoder_tokenizer = setup.tokenizer.backend
    return model


def corpus_ids(world: str | Path, tokenizer: Tokenizer) -> torch.Tensor:
    """The world's training corpus as one stream of ids, documents separated by ``</s>``."""
    rows = read_jsonl(Path(world) / "text" / "corpus_train.jsonl", "the world's text corpus")
    ids: list[int] = []
    for row in rows:
        ids += tokenizer.encode(row["text"]) + [tokenizer.eos_id]
    return torch.tensor(ids)


def pretrain_lm(
    model: MetaLM, stream: torch.Tensor, steps: int, batch_size: int = 16, seq_len: int = 64, lr: float = 2e-3
) -> list[float]:
    """Causal language modelling on random windows of ``stream`` (a world-pretrained decoder in CPU minutes);
    returns the losses."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=g)
        ids = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / steps))
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def pretrained_decoder(setup: Setup, world: str | Path, out: str | Path, steps: int = 400) -> MetaLM:
    """The decoder pretrained on the world corpus, saved at ``out`` and reused from there when present (the two
    analysis commands share it)."""
    out = Path(out)
    if (out / "model.safetensors").is_file():
        return MetaLM.from_pretrained(out).eval()
    start = time.time()
    model = new_decoder(setup, seed=0)
    losses = pretrain_lm(model, corpus_ids(world, setup.tokenizer), steps)
    model.save_pretrained(out)
    print(
        f"pretrained {out} on the world corpus: {steps} steps, loss {losses[0]:.2f} -> "
        f"{np.mean(losses[-20:]):.2f} ({time.time() - start:.0f} s)"
    )
    return model.eval()


def snapshot(model: MetaLM) -> dict[str, torch.Tensor]:
    """A detached copy of the model's trainable parameters by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class Finetuned:
    """One finetuning run: its losses, and parameter snapshots every ``every`` steps (the first is the
    initialisation, the last the final weights)."""

    losses: list[float]
    snapshots: list[dict[str, torch.Tensor]]
    steps: list[int]


@dataclass
class Schedule:
    """How ``finetune`` trains: steps, peak learning rate, batch size, and steps between snapshots."""

    steps: int = 600
    lr: float = 1e-3
    batch_size: int = 16
    every: int = 20


def finetune(model: MetaLM, setup: Setup, seed: int, schedule: Schedule | None = None) -> Finetuned:
    """Finetune ``model`` in place on the setup's training examples (data order and dropout from ``seed``; AdamW,
    linear warm-up over 10% then linear decay, as the finetuning job schedules), keeping snapshots."""
    sch = schedule or Schedule()
    steps, lr, every = sch.steps, sch.lr, sch.every
    torch.manual_seed(seed)
    batcher = setup.batcher(setup.train, model, sch.batch_size, seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    run = Finetuned([], [snapshot(model)], [0])
    model.train()
    for step in range(steps):
        b = batcher.batch(step)
        for group in opt.param_groups:
            group["lr"] = lr * min((step + 1) / warm, (steps - step) / (steps - warm + 1))
        loss = model(b.input_ids, b.docks, attention_mask=b.attention_mask, labels=b.labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run.losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            run.snapshots.append(snapshot(model))
            run.steps.append(step + 1)
    model.eval()
    return run


@torch.no_grad()
def accuracy(model: MetaLM, batch: Batch, label_ids: tuple[int, int]) -> float:
    """Share of ``batch``'s examples whose gold label word's first id scores above the other one's at the
    position that predicts the answer (rank classification over the two label words)."""
    model.eval()
    logits = model(batch.input_ids, batch.docks, attention_mask=batch.attention_mask, return_logits=True).logits
    first = (batch.labels != IGNORE_INDEX).float().argmax(1)  # the first answer position of each row
    rows = torch.arange(len(first))
    scores = logits[rows, first - 1][:, list(label_ids)]
    gold = batch.input_ids[rows, first]
    pred = torch.tensor(label_ids)[scores.argmax(1)]
    return float((pred == gold).float().mean())


def dynamics_experiment(
    setup: Setup, pretrained: MetaLM, seeds: list[int], schedule: Schedule, n_probe: int = 64, keep: float = 0.99
) -> dict:
    """Finetune a copy of ``pretrained`` once per seed and compare each with the pretrained model on ``n_probe``
    held-out examples: per-seed JS maps and SVCCA curves, their mean and std, and the seeds' consistency."""
    import copy

    probe_batch = setup.batch(setup.val[:n_probe], pretrained)
    eval_batch = setup.batch(setup.val, pretrained)
    before = read_layers(pretrained, probe_batch)
    runs = []
    for seed in seeds:
        start = time.time()
        model = copy.deepcopy(pretrained)
        run = finetune(model, setup, seed, replace(schedule, every=schedule.steps))
        cmp = compare(before, read_layers(model, probe_batch), probe_batch.attention_mask, keep)
        runs.append(
            {
                "seed": seed,
                "js": cmp["js"].tolist(),
                "svcca": cmp["svcca"].tolist(),
                "final_loss": float(np.mean(run.losses[-10:])),
                "accuracy": accuracy(model, eval_batch, setup.label_ids),
                "seconds": round(time.time() - start, 1),
            }
        )
        print(
            f"seed {seed}: accuracy {runs[-1]['accuracy']:.3f}, SVCCA distance per layer "
            f"{np.round(cmp['svcca'], 3).tolist()} ({runs[-1]['seconds']} s)"
        )
    js = np.array([r["js"] for r in runs])
    svcca = np.array([r["svcca"] for r in runs])
    return {
        "pretrained_accuracy": accuracy(pretrained, eval_batch, setup.label_ids),
        "runs": runs,
        "js_mean": js.mean(0).tolist(),
        "js_std": js.std(0).tolist(),
        "svcca_mean": svcca.mean(0).tolist(),
        "svcca_std": svcca.std(0).tolist(),
        "consistency": {"svcca_per_layer_r": seed_consistency(svcca), "js_map_r": seed_consistency(js)},
    }


def run_accuracy(run: str | Path) -> float | None:
    """The accuracy a ``train/finetune.py`` run's final evaluation wrote (``run/eval.json``), None without one."""
    scored = Path(run) / "eval.json"
    return json.loads(scored.read_text())["results"][0]["none"]["mean"] if scored.is_file() else None


@torch.no_grad()
def checkpoint_dynamics(
    before: str | Path,
    after: list[str | Path],
    prompts: list,
    n_probe: int = 64,
    keep: float = 0.99,
    skip_first: bool = True,
) -> dict:
    """The same measures between checkpoints a finetuning job already wrote: ``before`` (the model it started from)
    and each of ``after`` (one finetuning run per seed, e.g. ``train/finetune.py``'s ``RUN/final``), read on the
    first ``n_probe`` of ``prompts`` (the task's held-out inputs, answers left out). Accuracy is taken from each
    run's ``eval.json`` (the finetuning job's own evaluation, beside ``final``) where there is one. SVCCA leaves
    out each probe's first position (``compare``'s ``skip_first``), as pretrained decoders need."""
    model = MetaLM.from_pretrained(before).eval()
    tokenizer = Tokenizer.load(before)
    encoder = PromptEncoder(model, tokenizer)
    rows = [encoder.encode(p) for p in prompts[:n_probe]]
    ids, mask, docks = encoder.collate(rows)
    batch = Batch(ids, torch.full_like(ids, IGNORE_INDEX), mask, docks)
    first = read_layers(model, batch)
    runs = []
    for seed, path in enumerate(after):
        start = time.time()
        tuned = MetaLM.from_pretrained(path).eval()
        cmp = compare(first, read_layers(tuned, batch), mask, keep, skip_first)
        acc = run_accuracy(Path(path).parent)
        runs.append(
            {
                "seed": seed,
                "checkpoint": str(path),
                "js": cmp["js"].tolist(),
                "svcca": cmp["svcca"].tolist(),
                "accuracy": acc,
                "seconds": round(time.time() - start, 1),
            }
        )
        print(f"{path}: SVCCA distance per layer {np.round(cmp['svcca'], 3).tolist()} ({runs[-1]['seconds']} s)")
        del tuned
    js = np.array([r["js"] for r in runs])
    svcca = np.array([r["svcca"] for r in runs])
    consistency = {"svcca_per_layer_r": seed_consistency(svcca), "js_map_r": seed_consistency(js)}
    return {
        "before": str(before),
        "n_probe": len(rows),
        "svcca_skips_first_position": skip_first,
        "pretrained_accuracy": None,
        "runs": runs,
        "js_mean": js.mean(0).tolist(),
        "js_std": js.std(0).tolist(),
        "svcca_mean": svcca.mean(0).tolist(),
        "svcca_std": svcca.std(0).tolist(),
        "consistency": consistency,
    }


def seeded(seed: int) -> None:
    """Seed Python, NumPy and torch (the experiment's reproducibility)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- the commands' shared flags and outputs ---------------------------------------------------------------------


def add_setup_flags(p: argparse.ArgumentParser) -> None:
    """The flags both analysis commands read: the world, the model to finetune, and the finetuning schedule."""
    p.add_argument("--world", default="data/world", help="the bundled world (generated there when missing)")
    p.add_argument(
        "--init_from", default="", help="a MetaLM checkpoint to finetune (default: the world-pretrained one)"
    )
    p.add_argument("--pretrained_dir", default="runs/world-lm-tiny", help="where the world-pretrained decoder is kept")
    p.add_argument("--pretrain_steps", type=int, default=400, help="language-modelling steps when it is made")
    p.add_argument("--steps", type=int, default=Schedule.steps, help="finetuning steps")
    p.add_argument("--lr", type=float, default=Schedule.lr, help="finetuning peak learning rate")
    p.add_argument("--n_train", type=int, default=8000, help="world-entail training examples used")


def from_flags(args: argparse.Namespace, every: int | None = None) -> tuple[Setup, MetaLM, Schedule]:
    """The setup, the model to finetune (``--init_from``, or the world-pretrained decoder, made once) and the
    schedule the flags of ``add_setup_flags`` name."""
    seeded(0)
    setup = world_setup(args.world, n_train=args.n_train)
    if args.init_from:
        model = MetaLM.from_pretrained(args.init_from).eval()
    else:
        model = pretrained_decoder(setup, args.world, args.pretrained_dir, args.pretrain_steps)
    return setup, model, Schedule(args.steps, args.lr, every=every or args.steps)


def write_report(out: str | Path, stem: str, result: dict, table: str) -> Path:
    """``out/{stem}.json`` and ``out/{stem}.md`` (the table, also printed); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
    print(table)
    return out


# --- reports ----------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    """The per-layer table (SVCCA distance and mean JS over heads, mean ± std over seeds) and the consistency."""
    js_mean, js_std = np.array(result["js_mean"]), np.array(result["js_std"])
    start = result["pretrained_accuracy"]
    tuned = [f"seed {r['seed']} {r['accuracy']:.3f}" for r in result["runs"] if r["accuracy"] is not None]
    lines = [
        f"Finetuning dynamics on {result.get('task', TASK)}: "
        + (f"pretrained accuracy {start:.3f}; " if start is not None else "")
        + (f"finetuned {', '.join(tuned)}" if tuned else f"{len(result['runs'])} finetuning runs"),
        "",
        "| layer | SVCCA distance | JS divergence (mean over heads) | most-changed head (JS) |",
        "|---|---|---|---|",
    ]
    for layer, (s, sd) in enumerate(zip(result["svcca_mean"], result["svcca_std"], strict=True)):
        h = int(js_mean[layer].argmax())
        lines.append(
            f"| {layer} | {s:.3f} ± {sd:.3f} | {js_mean[layer].mean():.4f} ± {js_std[layer].mean():.4f} "
            f"| {h} ({js_mean[layer, h]:.4f}) |"
        )
    c = result["consistency"]
    lines += [
        "",
        "Consistency across seeds (mean Pearson r over seed pairs): per-layer SVCCA curves "
        f"{c['svcca_per_layer_r']:.3f},"
        f" (layer x head) JS maps {c['js_map_r']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, out_png: str | Path) -> None:
    """JS heatmaps (layers x heads), one per seed and their mean, beside the per-layer SVCCA curves."""
    from metalm.io import pyplot

    plt = pyplot()

    runs = result["runs"]
    maps = [np.array(r["js"]) for r in runs] + [np.array(result["js_mean"])]
    titles = [f"JS, seed {r['seed']}" for r in runs] + ["JS, mean"]
    vmax = max(float(m.max()) for m in maps)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 3.4))
    for ax, m, title in zip(axes, maps, titles, strict=False):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, origin="lower", aspect="auto")
        step = max(1, m.shape[0] // 8)
        ax.set(title=title, xlabel="head", ylabel="layer", xticks=range(m.shape[1]), yticks=range(0, m.shape[0], step))
    fig.colorbar(im, ax=axes[: len(maps)], shrink=0.8, label="JS divergence (nats)")
    ax = axes[-1]
    for r in runs:
        ax.plot(r["svcca"], marker="o", label=f"seed {r['seed']}")
    layers = len(runs[0]["svcca"])
    ax.set(title="SVCCA distance", xlabel="layer", ylabel="1 - mean CCA", xticks=range(0, layers, max(1, layers // 8)))
    ax.legend(fontsize=7)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
