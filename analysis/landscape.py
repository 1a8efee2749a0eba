"""Loss landscapes of finetuning: 1-D interpolation between two parameter sets, 2-D surfaces around a solution
along filter-normalised random directions, and the optimisation trajectory projected on its principal directions
(Hao et al., "Visualizing and Understanding the Effectiveness of BERT", EMNLP 2019, sections 3-5; the directions
and the trajectory plane of Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018).

Definitions, for parameters ``theta`` (one tensor per named parameter) and a fixed loss ``L``:

- **1-D interpolation** (Hao et al. section 4.1; Goodfellow et al. 2015): ``f(a) = L((1 - a) theta_0 + a theta_1)``,
  e.g. from the initialisation ``theta_0`` to the finetuned ``theta_1``; ``f(0)``, ``f(1)`` are the endpoints' losses.
- **2-D surface** (Hao et al. section 3; Li et al. section 4): ``f(a, b) = L(theta* + a d_1 + b d_2)`` around a
  solution ``theta*``, with Gaussian random directions made **filter-normalised**: for each parameter tensor of
  more than one dimension, each filter (slice along the first dimension: an output unit's row of a linear
  weight, a token's embedding row) is rescaled to the norm of the same filter of ``theta*``,
  ``d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta*_{i,j}||``; one-dimensional parameters (biases, norm scales) get a
  zero direction (Li et al.'s ``ignore biasbn``). ``f(0, 0) = L(theta*)``.
- **Trajectory** (Li et al. section 7): with snapshots ``theta_k`` saved during training and the final
  ``theta_n``, the principal directions of the differences ``theta_k - theta_n`` (PCA: centred, the top two right
  singular vectors, unit norm) span a plane through ``theta_n``; each snapshot is drawn at
  ``((theta_k - theta_n) . u_1, (theta_k - theta_n) . u_2)`` over the contour of ``L`` on that plane.
- **Pretrained vs from scratch** (Hao et al. sections 4-5): the same finetuning from the pretrained weights and
  from a random initialisation of the same shape, each drawn the three ways; the summary gives the loss barrier
  of the 1-D path (its maximum above the straight line between the endpoints), the distance travelled
  ``||theta_1 - theta_0|| / ||theta_0||``, the share of the trajectory's variance its plane explains, and the
  surface's flatness (mean rise of ``L`` over the grid points within radius ``r`` of the centre, half the grid's
  span).

Following Li et al.'s released code (tomgoldstein/loss-landscape, ``net_plotter.py`` for the filter
normalisation and its ``biasbn`` rule, ``projection.py`` for the PCA plane); our own code.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from analysis.dynamics import Finetuned, Schedule, Setup, accuracy, finetune, new_decoder, run_accuracy
from data.batch import Batch
from data.batching import ExampleBatcher
from data.prompts import PromptEncoder
from metalm import MetaLM

Params = dict[str, torch.Tensor]
LossFn = Callable[[MetaLM], float]


# --- parameter arithmetic -----------------------------------------------------------------------------------------


def params_of(model: MetaLM) -> Params:
    """A detached copy of ``model``'s trainable parameters by name (the space the landscape lives in)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def combine(base: Params, terms: Sequence[tuple[float, Params]]) -> Params:
    """``base + sum(c * d)`` over the ``(c, d)`` terms, parameter by parameter."""
    out = {n: t.clone() for n, t in base.items()}
    for c, d in terms:
        for n in out:
            out[n].add_(d[n], alpha=c)
    return out


def norm(params: Params) -> float:
    """The Euclidean norm of the parameters taken as one vector."""
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in params.values())))


@contextmanager
def loaded(model: MetaLM, params: Params):
    """``model`` with ``params`` in place of its own for the block; its own weights come back afterwards."""
    named = dict(model.named_parameters())
    missing = sorted(set(params) - set(named))
    if missing:
        raise KeyError(f"parameters {missing[:3]} are not the model's")
    saved = {n: named[n].detach().clone() for n in params}
    with torch.no_grad():
        for n, t in params.items():
            named[n].copy_(t)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                named[n].copy_(t)


def batch_loss(batches: Sequence[Batch]) -> LossFn:
    """The mean finetuning loss (answer tokens) of a model over fixed ``batches``, in eval mode, no gradients."""

    @torch.no_grad()
    def loss(model: MetaLM) -> float:
        model.eval()
        values = [model(b.input_ids, b.docks, attention_mask=b.attention_mask, labels=b.labels).loss for b in batches]
        return float(torch.stack(values).mean())

    return loss


# --- directions ---------------------------------------------------------------------------------------------------


def random_direction(params: Params, seed: int) -> Params:
    """A Gaussian direction shaped like ``params`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=g, dtype=t.dtype) for n, t in params.items()}


def filter_normalize(direction: Params, params: Params, eps: float = 1e-10) -> Params:
    """Li et al.'s filter normalisation of ``direction`` against ``params``: each filter (slice along the first
    dimension) of a multi-dimensional tensor gets the norm of the same filter of ``params``; one-dimensional
    tensors get zero (biases and norm scales are left where they are)."""
    out = {}
    for n, d in direction.items():
        w = params[n]
        if d.shape != w.shape:
            raise ValueError(f"filter_normalize: {n} is {tuple(d.shape)} in the direction, {tuple(w.shape)} in params")
        if d.dim() <= 1:
            out[n] = torch.zeros_like(d)
            continue
        dn = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1))
        wn = w.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1))
        out[n] = d * wn / (dn + eps)
    return out


def filter_normalized_direction(params: Params, seed: int) -> Params:
    """A random direction, filter-normalised against ``params`` (the 2-D surface's axes)."""
    return filter_normalize(random_direction(params, seed), params)


# --- the three views ----------------------------------------------------------------------------------------------


def interpolate(model: MetaLM, start: Params, end: Params, alphas: Sequence[float], loss: LossFn) -> list[float]:
    """``L((1 - a) start + a end)`` for each ``a`` of ``alphas`` (0: ``start``, 1: ``end``)."""
    out = []
    for a in alphas:
        with loaded(model, combine(start, [(-a, start), (a, end)])):
            out.append(loss(model))
    return out


def surface(
    model: MetaLM, center: Params, d1: Params, d2: Params, xs: Sequence[float], ys: Sequence[float], loss: LossFn
) -> np.ndarray:
    """``L(center + x d1 + y d2)`` on the grid, shape ``(len(ys), len(xs))`` (rows: y), as contour plots read it."""
    grid = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            with loaded(model, combine(center, [(x, d1), (y, d2)])):
                grid[i, j] = loss(model)
    return grid


def trajectory_plane(snapshots: Sequence[Params]) -> tuple[Params, Params, np.ndarray, list[float]]:
    """The top two principal directions (unit norm) of ``snapshot - final`` over the snapshots before the last,
    each snapshot's coordinates ``(K, 2)`` on them (the last is the origin), and their explained-variance ratios.

    The PCA runs on the ``(K-1) x (K-1)`` Gram matrix of the differences, built one parameter tensor at a time,
    so a 135M-parameter model's trajectory never needs its snapshots flattened side by side: with ``D`` the
    differences, ``P`` the centring matrix and ``P D D^T P = V diag(s^2) V^T``, the directions are
    ``u_i = D^T P v_i / s_i`` (the right singular vectors of ``P D``) and the coordinates ``D u_i``."""
    if len(snapshots) < 3:
        raise ValueError(f"trajectory_plane: {len(snapshots)} snapshots; the PCA plane needs at least 3")
    final = snapshots[-1]
    n = len(snapshots) - 1

    def diffs(name: str) -> torch.Tensor:
        last = final[name].double().flatten()
        return torch.stack([s[name].double().flatten() - last for s in snapshots[:-1]])

    gram = torch.zeros(n, n, dtype=torch.float64)
    for name in final:
        d = diffs(name)
        gram += d @ d.T
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    values, vectors = torch.linalg.eigh(centre @ gram @ centre)  # ascending
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    ratios = (values / values.sum())[:2].tolist()
    weights = centre @ vectors[:, :2] / values[:2].sqrt().clamp(min=1e-30)  # (n, 2): u_i = D^T weights[:, i]
    directions: tuple[Params, Params] = ({}, {})
    for name, t in final.items():
        d = diffs(name)
        for i in range(2):
            directions[i][name] = (weights[:, i] @ d).view_as(t).to(t.dtype)
    coords = torch.cat([gram @ weights, torch.zeros(1, 2, dtype=torch.float64)]).numpy()
    return directions[0], directions[1], coords, ratios


def flatness(grid: np.ndarray, xs: Sequence[float], ys: Sequence[float], radius: float) -> float:
    """Mean rise of the surface over its centre value within ``radius`` of the centre (smaller: flatter)."""
    xx, yy = np.meshgrid(np.asarray(xs), np.asarray(ys))
    centre = grid[np.argmin(np.abs(np.asarray(ys))), np.argmin(np.abs(np.asarray(xs)))]
    inside = xx**2 + yy**2 <= radius**2
    return float((grid[inside] - centre).mean())


def barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """The largest rise of the 1-D path over the straight line between its values at 0 and 1, for ``a`` in
    [0, 1] (0 for a path that never climbs above it)."""
    a, f = np.asarray(alphas), np.asarray(losses)
    f0, f1 = f[np.argmin(np.abs(a))], f[np.argmin(np.abs(a - 1))]
    inside = (a >= 0) & (a <= 1)
    return float(max(0.0, (f[inside] - ((1 - a[inside]) * f0 + a[inside] * f1)).max()))


# --- the experiment: pretrained vs from-scratch finetuning --------------------------------------------------------


def views(
    model: MetaLM,
    snapshots: Sequence[Params],
    train_loss: LossFn,
    val_loss: LossFn,
    alphas: Sequence[float],
    xs: Sequence[float],
    grid: int,
) -> dict:
    """The three views of one finetuning, ``snapshots`` running from its initialisation to its final weights:
    the 1-D path init -> final (training and held-out loss), the 2-D surface around the final weights on two
    filter-normalised directions (grid ``xs`` on both axes), and the trajectory on its PCA plane over the
    training loss's contour (``grid`` points a side), with the summary numbers of the module docstring."""
    alphas, xs = list(alphas), list(xs)
    init, final = snapshots[0], snapshots[-1]
    path_train = interpolate(model, init, final, alphas, train_loss)
    path_val = interpolate(model, init, final, alphas, val_loss)
    d1, d2 = filter_normalized_direction(final, 1), filter_normalized_direction(final, 2)
    around = surface(model, final, d1, d2, xs, xs, train_loss)
    u1, u2, coords, ratios = trajectory_plane(snapshots)
    reach = float(np.abs(coords).max()) * 1.2
    txs = np.round(np.linspace(-reach, reach, grid), 5).tolist()
    plane = surface(model, final, u1, u2, txs, txs, train_loss)
    radius = max(abs(x) for x in xs) / 2
    return {
        "train_loss_init": path_train[alphas.index(0.0)],
        "train_loss_final": path_train[alphas.index(1.0)],
        "val_loss_final": path_val[alphas.index(1.0)],
        "path_train": path_train,
        "path_val": path_val,
        "barrier": barrier(alphas, path_train),
        "relative_distance": norm(combine(final, [(-1.0, init)])) / norm(init),
        "flatness": flatness(around, xs, xs, radius),
        "flatness_radius": radius,
        "surface": around.tolist(),
        "trajectory": {"coords": coords.tolist(), "explained": ratios, "grid": txs},
        "trajectory_surface": plane.tolist(),
    }


def axes(n_alphas: int, span: float, grid: int) -> tuple[list[float], list[float]]:
    """The 1-D path's points (``n_alphas`` from -0.5 to 1.5, 0 and 1 among them) and the 2-D grid's."""
    alphas = np.round(np.linspace(-0.5, 1.5, n_alphas), 3).tolist()
    if 0.0 not in alphas or 1.0 not in alphas:
        raise ValueError(f"{n_alphas} points from -0.5 to 1.5 miss 0 or 1; give 4k + 1 of them (e.g. 9, 21)")
    return alphas, np.round(np.linspace(-span, span, grid), 4).tolist()


def _report(name: str, r: dict) -> None:
    print(
        f"{name}: accuracy {r['accuracy']}, train loss {r['train_loss_init']:.3f} -> {r['train_loss_final']:.3f}, "
        f"flatness {r['flatness']:.3f} ({r['seconds']} s)"
    )


def landscape_experiment(
    setup: Setup,
    pretrained: MetaLM,
    seed: int = 0,
    schedule: Schedule | None = None,
    grid: int = 13,
    span: float = 1.0,
    n_loss: int = 64,
    n_alphas: int = 21,
) -> dict:
    """Finetune the pretrained model and a random one of the same shape with the same data, seed and schedule;
    for each, the three ``views``."""
    train_loss = batch_loss([setup.batch(setup.train[i : i + 32], pretrained) for i in range(0, n_loss, 32)])
    val_loss = batch_loss([setup.batch(setup.val[i : i + 32], pretrained) for i in range(0, n_loss, 32)])
    eval_batch = setup.batch(setup.val, pretrained)
    alphas, xs = axes(n_alphas, span, grid)
    sch = schedule or Schedule()
    out: dict = {"task": "world-entail", "alphas": alphas, "grid": xs, "steps": sch.steps, "lr": sch.lr}
    out |= {"seed": seed, "inits": {}}
    starts = {"pretrained": copy.deepcopy(pretrained), "scratch": new_decoder(setup, seed=1000 + seed)}
    for name, model in starts.items():
        start = time.time()
        run: Finetuned = finetune(model, setup, seed, sch)
        r = views(model, run.snapshots, train_loss, val_loss, alphas, xs, grid)
        r["trajectory"]["steps"] = run.steps
        r |= {"accuracy": accuracy(model, eval_batch, setup.label_ids), "losses": run.losses}
        r["seconds"] = round(time.time() - start, 1)
        out["inits"][name] = r
        _report(name, r)
    return out


# --- checkpoints a finetuning job already wrote (train/finetune.py) -----------------------------------------------


def run_config(run: str | Path):
    """The ``FinetuneConfig`` a ``train/finetune.py`` run saved (``run/config.json``), read by the config loader's
    rules (an unknown field or a value of the wrong type is an error naming the file)."""
    from train.config import load_config_source
    from train.finetuning import FinetuneConfig

    return FinetuneConfig(**load_config_source(str(Path(run) / "config.json"), FinetuneConfig))


def read_run(run: str | Path) -> tuple:
    """A finished ``train/finetune.py`` run: its config (``run_config``), and the steps and weight files of its
    trajectory, its ``checkpoints/step_*`` written before the final step (``--ckpt_every``; ``--keep_last`` must
    keep them all), then ``final``."""
    from train.loop import checkpoint_step, step_dirs

    run = Path(run)
    summary = run / "summary.json"
    needed = (run / "final" / "model.safetensors", summary, run / "config.json")
    if not all(f.is_file() for f in needed):
        raise FileNotFoundError(
            f"{run}: expected a finished train/finetune.py run (final/model.safetensors, summary.json, config.json)"
        )
    last = int(json.loads(summary.read_text())["steps"])
    cfg = run_config(run)
    here = replace(cfg, out=str(run))  # the run's directory, wherever it has moved since
    saved = [d for d in reversed(step_dirs(here)) if checkpoint_step(d) < last and (d / "model.safetensors").is_file()]
    steps = [*(checkpoint_step(d) for d in saved), last]
    return cfg, steps, [*(d / "model.safetensors" for d in saved), run / "final" / "model.safetensors"]


def read_params(weights: str | Path, like: Params) -> Params:
    """The parameters named in ``like`` from a safetensors file, shapes checked."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    missing = sorted(set(like) - set(state))
    if missing:
        raise KeyError(f"{weights}: lacks parameters {missing[:3]} of the model the run started from")
    for n, t in like.items():
        if state[n].shape != t.shape:
            raise ValueError(f"{weights}: {n} is {tuple(state[n].shape)}; the model's is {tuple(t.shape)}")
    return {n: state[n].to(t.dtype) for n, t in like.items()}


def run_losses(cfg, model: MetaLM, tokenizer, encode: bool, n_loss: int, batch_size: int = 16) -> tuple:
    """The run's finetuning loss (answer tokens, as it trained) on the first ``n_loss`` training and held-out
    examples of its own data, as two ``LossFn``s."""
    from train.finetuning import read_examples

    prompts = PromptEncoder(model, tokenizer)
    max_len = model.config.decoder.max_seq_len
    losses = []
    for split in ("train", "val"):
        examples = read_examples(cfg, split)[:n_loss]
        batcher = ExampleBatcher(
            examples, prompts, tokenizer, batch_size, max_len, 0, encode, answer_eos=cfg.answer_eos
        )
        chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        losses.append(batch_loss([batcher.build(chunk) for chunk in chunks]))
    return tuple(losses)


def checkpoint_landscape(
    runs: Sequence[str | Path], grid: int = 7, span: float = 0.2, n_loss: int = 32, n_alphas: int = 9
) -> dict:
    """The three ``views`` of finetuning runs ``train/finetune.py`` already wrote (e.g. one from the pretrained
    weights and one with ``--init_weights random``, same data and schedule), each named by its directory: the
    start rebuilt from the run's own config (``train.tuning.initial_model``), its checkpoints as the trajectory,
    the losses on its own training and held-out data; accuracy from the run's ``eval.json``."""
    from train.tuning import initial_model

    alphas, xs = axes(n_alphas, span, grid)
    out: dict = {"alphas": alphas, "grid": xs, "n_loss": n_loss, "inits": {}}
    listed = {Path(run): read_run(run) for run in runs}  # every run checked before any work
    for run, (cfg, steps, files) in listed.items():
        start = time.time()
        summary = json.loads((run / "summary.json").read_text())
        model, tokenizer = initial_model(cfg)
        model.eval()
        init = params_of(model)
        snapshots = [init, *(read_params(f, init) for f in files)]
        train_loss, val_loss = run_losses(cfg, model, tokenizer, bool(summary.get("encode_input")), n_loss)
        r = views(model, snapshots, train_loss, val_loss, alphas, xs, grid)
        r["trajectory"]["steps"] = [0, *steps]
        r |= {"accuracy": run_accuracy(run), "run": str(run), "init_from": cfg.init_from}
        r["init_weights"] = cfg.init_weights
        r["seconds"] = round(time.time() - start, 1)
        out |= {"task": cfg.task, "steps": cfg.max_steps, "lr": cfg.lr, "seed": cfg.seed}
        out["inits"][run.name] = r
        _report(run.name, r)
        del snapshots, model
    return out


# --- reports ------------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    """One row per initialisation: accuracy, losses, barrier, distance travelled, flatness, PCA share."""
    inits = result["inits"]
    radius = next(iter(inits.values()))["flatness_radius"]
    lines = [
        f"Finetuning {result['task']} for {result['steps']} steps (lr {result['lr']}, seed {result['seed']}) from "
        f"{' vs '.join(inits)}; losses on {result.get('n_loss', 64)} fixed training examples (held-out for the "
        "final), accuracy on the held-out set.",
        "",
        "| init | accuracy | train loss at init | train loss finetuned | held-out loss finetuned | 1-D barrier "
        f"| ‖Δθ‖/‖θ₀‖ | flatness (r={radius:g}) | PCA variance (2 dirs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in inits.items():
        ex = r["trajectory"]["explained"]
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(
            f"| {name} | {acc} | {r['train_loss_init']:.3f} | {r['train_loss_final']:.3f} "
            f"| {r['val_loss_final']:.3f} | {r['barrier']:.3f} | {r['relative_distance']:.3f} "
            f"| {r['flatness']:.3f} | {ex[0]:.2f} + {ex[1]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, out_dir: str | Path) -> list[Path]:
    """``interpolation.png`` (1-D paths), ``surface.png`` (2-D contours around each solution) and
    ``trajectory.png`` (each trajectory over its PCA-plane contour), one panel per initialisation."""
    from metalm.io import pyplot

    plt = pyplot()

    out_dir = Path(out_dir)
    inits = result["inits"]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, r in inits.items():
        ax.plot(result["alphas"], r["path_train"], marker="o", ms=3, label=f"{name}, train")
        ax.plot(result["alphas"], r["path_val"], ls="--", label=f"{name}, held-out")
    ax.axvline(0, color="grey", lw=0.5)
    ax.axvline(1, color="grey", lw=0.5)
    ax.set(xlabel="α: (1-α) θ_init + α θ_finetuned", ylabel="loss", title="1-D interpolation", yscale="log")
    ax.legend(fontsize=7)
    paths.append(out_dir / "interpolation.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    for key, fname, title in (
        ("surface", "surface.png", "around the finetuned weights (filter-normalised)"),
        ("trajectory_surface", "trajectory.png", "trajectory on its PCA plane"),
    ):
        fig, axes = plt.subplots(1, len(inits), figsize=(4.6 * len(inits), 4))
        for ax, (name, r) in zip(np.atleast_1d(axes), inits.items(), strict=True):
            grid = np.array(r[key])
            g = result["grid"] if key == "surface" else r["trajectory"]["grid"]
            levels = np.linspace(
                grid.min(), min(grid.max(), grid.min() + 4 * (np.median(grid) - grid.min()) + 1e-6), 25
            )
            cs = ax.contour(g, g, grid, levels=levels, cmap="viridis")
            ax.clabel(cs, cs.levels[::4], fontsize=6)
            if key == "trajectory_surface":
                c = np.array(r["trajectory"]["coords"])
                ax.plot(c[:, 0], c[:, 1], "r.-", ms=4)
                ax.plot(c[0, 0], c[0, 1], "ks", ms=5, label="init")
                ax.plot(0, 0, "r*", ms=9, label="finetuned")
                ex = r["trajectory"]["explained"]
                ax.set(xlabel=f"PC1 ({ex[0]:.0%})", ylabel=f"PC2 ({ex[1]:.0%})")
                ax.legend(fontsize=7)
            else:
                ax.plot(0, 0, "r*", ms=9)
                ax.set(xlabel="δ", ylabel="η")
            ax.set_title(f"{name}: {title}", fontsize=8)
        paths.append(out_dir / fname)
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths
