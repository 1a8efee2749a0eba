"""In-context learning as implicit finetuning, measured layer by layer (Dai et al., "Why Can GPT Learn In-Context?
Language Models Implicitly Perform Gradient Descent as Meta-Optimizers", ACL Findings 2023, section 5).

Followed: the authors' scripts, microsoft/LMOps ``understand_icl/`` (``run.sh``, ``scripts/ana_train.sh``,
``struprompting/tasks/fewshot_task.py``, ``struprompting/criterions/fs_eval.py`` and ``fs_ft.py``,
``fairseq/fairseq/trainer.py`` ``optim_group == "attn_kv"``, ``fairseq/.../transformer_layer.py``,
``icl_ft/compute_sim.py``, ``icl_ft/compute_training_example_attn.py``).

**Three settings on the same test inputs** (paper 5.1), for a classification task rendered by its template in
``data.templates.CLASSIFICATION`` (the one our classification evaluator scores with):

- ZSL: the test input ``x`` alone;
- ICL: ``d_1 sep d_2 sep ... d_k sep x``, each demonstration ``d_i`` the template's input followed by its label
  word, ``sep = "\\n\\n"`` (as ``eval.icl.few_shot_prompt`` joins them); each piece is tokenized on its own, so the
  demonstration and test tokens are the same ids in every setting;
- FT: a copy of the model trained on exactly those k demonstrations, in the same order, one epoch with batch size
  1 (one step per demonstration), loss the mean next-token negative log-likelihood over every token of the
  demonstration (``fewshot_task.get_data_for_ft``: loss mask all true; fairseq divides the summed loss's gradient
  by the token count), plain SGD at ``lr``, updating only the attention key and value projections (our ``qkv`` is
  one fused Linear: only its key and value rows, weight and bias, change; the query rows stay bit-identical). Then
  the test inputs are read zero-shot. Dropout is off (the released code trains in fairseq's train mode).

A prediction is the label word with the highest summed log-probability after the prompt (as
``eval.runners.classify`` ranks without calibration).

**Metrics** (paper 5.2; ``compute_sim.py``, ``compute_training_example_attn.py``). ``t`` is the last token of the
test input (the one that predicts the label), ``l`` a layer, ``n`` a test example; means run over the N test
examples (and heads where said):

- Rec2FTP = #{ZSL wrong, FT right, ICL right} / #{ZSL wrong, FT right}.
- SimAOU(l) = mean_n cos(h_ICL - h_ZSL, h_FT - h_ZSL), where h is the attention sublayer's output at t (after the
  output projection, before the residual: ``self_attn_out_hidden`` in their ``transformer_layer.py``), scaled to
  unit length first (``norm_hidden``). Random baseline: cos(h_ICL - h_ZSL, r) with r drawn from a standard normal
  per example and layer; the released code draws r uniform in [0, 1), whose cosine measures the update's alignment
  with the all-ones direction rather than chance; it is reported too (``simaou_random_uniform``).
- SimAM(l) = mean_n mean_heads cos(s_ICL, s_FT), s the attention scores q.k / sqrt(d) of t over the test input's
  own tokens, before the softmax (their ``record_attn_map`` with ``softmax=False``; the ICL scores to the
  demonstrations are left out, so the three settings compare over the same keys). Baseline:
  mean_n mean_heads cos(s_ICL, s_ZSL) (``ZSL SimAM``).
- Kendall(l) = mean_n tau(a_ICL, a_FT) (Kendall's tau-b). a_ICL(j): the ICL scores of t to demonstration token j,
  summed over heads (the separators left out); a_FT(j) = q_FT . q_j, where q_FT is the query projection of t in
  the finetuned model and q_j that of training token j in the FT forward of its step (their ``attn_q``); the
  softmax both sides take in the code does not change ranks. For rotary decoders q is taken before the rotation
  (fairseq's q carries no rotation). Random baseline: tau(a_ICL, u), u uniform in [0, 1). A tau that is undefined
  (a constant vector) is left out of the mean.

Where we differ from the released code, on purpose: it reads the hidden states and attention maps at the last
position of the test input followed by the first option's label token; we read the last token of the test input,
the position whose output ranks the labels (the paper's "last token"). It keeps a beginning-of-sequence token;
we add none (our classification evaluator adds none either).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metalm.decoder import Decoder
from metalm.probes import probe

SEP = "\n\n"
METRICS = ("simaou", "simaou_random", "simaou_random_uniform", "simam", "simam_zsl", "kendall", "kendall_random")


@dataclass(frozen=True)
class Example:
    """One classification example rendered as text: the template's input and the index of its label word."""

    text: str
    label: int


@dataclass
class Reading:
    """What one setting's forward shows at the test input's last token, per layer."""

    logprobs: np.ndarray  # (labels,): summed log-probability of each label word
    attn_output: np.ndarray  # (L, dim)
    query_scores: list[np.ndarray]  # per layer (heads, query tokens): pre-softmax scores over the test input
    demo_scores: np.ndarray | None = None  # ICL: (L, demonstration tokens), summed over heads
    query_vector: np.ndarray | None = None  # FT: (L, heads * head_dim), the query projection before rotation


@dataclass
class Study:
    """The three settings' readings of every test example, and the FT pass's training-token queries."""

    zsl: list[Reading] = field(default_factory=list)
    icl: list[Reading] = field(default_factory=list)
    ft: list[Reading] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    train_queries: np.ndarray | None = None  # (L, training tokens, heads * head_dim)


# ---- the metrics ----


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (0 where a vector is zero), as ``cal_cos_sim`` computes it."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-20)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-20)


def rec2ftp(zsl_right: Sequence[bool], icl_right: Sequence[bool], ft_right: Sequence[bool]) -> float | None:
    """Of the examples ZSL gets wrong and FT right, the share ICL gets right; None when there are none."""
    fixed = [not z and f for z, f in zip(zsl_right, ft_right, strict=True)]
    if not any(fixed):
        return None
    return sum(i for i, f in zip(icl_right, fixed, strict=True) if f) / sum(fixed)


def simaou(zsl: np.ndarray, icl: np.ndarray, ft: np.ndarray) -> np.ndarray:
    """Per layer: mean over examples of cos(ICL update, FT update) of the unit-scaled attention outputs
    ``(N, L, dim)`` -> ``(L,)``."""
    base = unit(zsl)
    return cosine(unit(icl) - base, unit(ft) - base).mean(0)


def simaou_random(zsl: np.ndarray, icl: np.ndarray, rng: np.random.Generator, uniform: bool = False) -> np.ndarray:
    """The random-update baseline of ``simaou``: the ICL update against a random one (standard normal; ``uniform``:
    in [0, 1) as the released code draws it)."""
    update = unit(icl) - unit(zsl)
    r = rng.random(update.shape) if uniform else rng.standard_normal(update.shape)
    return cosine(update, r).mean(0)


def simam(a: Sequence[Sequence[np.ndarray]], b: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Per layer: mean over examples and heads of the cosine of two settings' attention scores over the same keys;
    ``a[n][l]`` is ``(heads, keys_n)`` (keys may differ in number between examples) -> ``(L,)``."""
    sims = [[cosine(x, y).mean() for x, y in zip(xa, xb, strict=True)] for xa, xb in zip(a, b, strict=True)]
    return np.array(sims).mean(0)


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (NaN when one is constant)."""
    from scipy.stats import kendalltau

    return float(kendalltau(x, y)[0])


def kendall_per_layer(icl: Sequence[np.ndarray], ft: Sequence[np.ndarray]) -> np.ndarray:
    """Per layer: mean over examples of tau(ICL attention to the demonstration tokens, FT importance of the same
    training tokens); ``icl[n]`` and ``ft[n]`` are ``(L, tokens)`` -> ``(L,)``, undefined taus left out."""
    taus = np.array([[kendall(a, b) for a, b in zip(xa, xb, strict=True)] for xa, xb in zip(icl, ft, strict=True)])
    return np.nanmean(taus, axis=0)


# ---- reading a decoder ----


def query_width(decoder: Decoder) -> int:
    return decoder.cfg.n_heads * decoder.cfg.head_dim


def kv_rows(decoder: Decoder) -> slice:
    """The rows of each block's fused ``qkv`` weight (and bias) that are the key and value projections."""
    c = decoder.cfg
    return slice(c.n_heads * c.head_dim, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim)


@contextmanager
def record_queries(decoder: Decoder, last_only: bool = False) -> Iterator[list[torch.Tensor | None]]:
    """Per layer, the query projection ``(T, heads * head_dim)`` (or its last row) of the forwards run inside
    (batch 1), before any rotation, detached."""
    width = query_width(decoder)
    seen: list[torch.Tensor | None] = [None] * len(decoder.blocks)

    def hook(i: int) -> Callable:
        def keep(module, args, out):
            q = out[0, :, :width].detach().float()
            seen[i] = q[-1] if last_only else q

        return keep

    hooks = [b.attn.qkv.register_forward_hook(hook(i)) for i, b in enumerate(decoder.blocks)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def read(
    decoder: Decoder,
    ids: Sequence[int],
    n_query: int,
    verbalizers: Sequence[Sequence[int]],
    demo_tokens: Sequence[int] = (),
    queries: bool = False,
    prefix: tuple[int, list] | None = None,
) -> Reading:
    """One probed forward of ``ids`` (the test input is its last ``n_query`` tokens): label log-probabilities and
    the last token's attention output and pre-softmax scores; ``demo_tokens`` (positions) adds the head-summed
    scores to them, ``queries`` the last token's query projection. ``prefix`` ``(n, past_key_values)``: the
    first n ids are already in that KV cache, so only the rest runs (the demonstrations, shared by every test)."""
    device = decoder.tok_emb.weight.device
    start, past = prefix if prefix is not None else (0, None)
    x = torch.tensor([list(ids[start:])], device=device)
    with (
        probe(decoder, positions=[-1], record=("attn_scores", "attn_output")) as seen,
        record_queries(decoder, last_only=True) as q,
    ):
        logits = decoder(x, past_key_values=past).logits[0, -1].float()
    scores = [s[0, :, 0].cpu() for s in seen.attn_scores]  # per layer (heads, keys)
    reading = Reading(
        logprobs=label_logprobs(decoder, list(ids), logits, verbalizers),
        attn_output=torch.stack([a[0, 0] for a in seen.attn_output]).float().cpu().numpy(),
        query_scores=[s[:, -n_query:].numpy() for s in scores],
    )
    if demo_tokens:
        index = torch.tensor(list(demo_tokens))
        reading.demo_scores = torch.stack([s[:, index].sum(0) for s in scores]).numpy()
    if queries:
        reading.query_vector = torch.stack(q).cpu().numpy()
    return reading


def label_logprobs(
    decoder: Decoder, ids: list[int], last_logits: torch.Tensor, verbalizers: Sequence[Sequence[int]]
) -> np.ndarray:
    """Summed log-probability of each label word after ``ids``; single-token words come from ``last_logits``."""
    first = last_logits.log_softmax(-1)
    out = []
    device = decoder.tok_emb.weight.device
    for word in verbalizers:
        if len(word) == 1:
            out.append(float(first[word[0]]))
            continue
        x = torch.tensor([ids + list(word)], device=device)
        logp = decoder(x).logits[0, len(ids) - 1 : -1].float().log_softmax(-1)
        out.append(float(logp.gather(1, torch.tensor(list(word), device=device)[:, None]).sum()))
    return np.array(out)


# ---- finetuning on the demonstrations ----


def finetune_kv(
    decoder: Decoder, sequences: Sequence[Sequence[int]], lr: float
) -> tuple[Decoder, list[list[torch.Tensor]]]:
    """A copy of ``decoder`` after one SGD step per sequence, in order, on the mean next-token loss over all its
    tokens, changing only the key and value rows of every ``qkv`` (weight and bias). Returns the copy and, per
    sequence, each layer's query projections ``(T, heads * head_dim)`` in that step's forward."""
    model = copy.deepcopy(decoder).eval()
    rows = kv_rows(model)
    params = []
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for p in (block.attn.qkv.weight, block.attn.qkv.bias):
            if p is not None:
                params.append(p.requires_grad_(True))
    device = model.tok_emb.weight.device
    seen_queries = []
    for i, seq in enumerate(sequences):
        if len(seq) < 2:
            raise ValueError(f"demonstration {i} is {len(seq)} token(s) long; finetuning needs at least 2")
        x = torch.tensor([list(seq)], device=device)
        with torch.enable_grad(), record_queries(model) as q:
            logits = model(x).logits[0, :-1].float()
            loss = F.cross_entropy(logits, x[0, 1:])
            grads = torch.autograd.grad(loss, params)
        seen_queries.append([t.cpu() for t in q])
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p[rows] -= lr * g[rows]
    for p in model.parameters():
        p.requires_grad_(False)
    return model, seen_queries


# ---- the study ----


@dataclass
class Setup:
    """A study's inputs: the label words (with their leading space), the k demonstrations in prompt order and the
    test examples, their text rendered by the task's template."""

    verbalizers: list[str]
    demos: list[Example]
    tests: list[Example]


def run_study(
    decoder: Decoder,
    encode: Callable[[str], list[int]],
    setup: Setup,
    lr: float,
    progress: Callable[[str], None] | None = None,
) -> Study:
    """Read every test example zero-shot, with the k demonstrations in context, and zero-shot after finetuning the
    key and value projections on those demonstrations."""
    decoder.eval()
    say = progress or (lambda msg: None)
    words = [encode(v) for v in setup.verbalizers]
    if any(not w for w in words):
        raise ValueError(f"label words {setup.verbalizers}: one encodes to no tokens")
    demo_ids = [encode(d.text + setup.verbalizers[d.label]) for d in setup.demos]
    sep = encode(SEP)
    context, demo_positions = [], []
    for ids in demo_ids:
        demo_positions += range(len(context), len(context) + len(ids))
        context += ids + sep
    study = Study(labels=[t.label for t in setup.tests])
    queries = [encode(t.text) for t in setup.tests]
    if any(not q for q in queries):
        raise ValueError("a test input encodes to no tokens")
    window = decoder.cfg.max_seq_len if decoder.cfg.positions != "rotary" else math.inf
    longest = len(context) + max(len(q) for q in queries) + max(len(w) for w in words)
    if longest > window:
        raise ValueError(
            f"the longest in-context prompt is {longest} tokens; the decoder takes {window}: use fewer shots"
        )
    t0 = time.time()
    prefix = None
    if decoder.cfg.attention != "momentum":  # (MoAttn reads the whole sequence: no shared cache)
        with torch.no_grad():
            device = decoder.tok_emb.weight.device
            prefix = (len(context), decoder(torch.tensor([context], device=device), use_cache=True).past_key_values)
    for q in queries:
        study.zsl.append(read(decoder, q, len(q), words))
        study.icl.append(read(decoder, context + q, len(q), words, demo_positions, prefix=prefix))
    say(f"ZSL and ICL read in {time.time() - t0:.0f} s")
    t0 = time.time()
    tuned, seen = finetune_kv(decoder, demo_ids, lr)
    study.train_queries = np.concatenate([torch.stack(s).numpy() for s in seen], axis=1)
    for q in queries:
        study.ft.append(read(tuned, q, len(q), words, queries=True))
    say(f"FT ({len(demo_ids)} steps) and its readings in {time.time() - t0:.0f} s")
    return study


def summarize(study: Study, seed: int = 0) -> dict:
    """Accuracies, Rec2FTP and the per-layer metrics with their baselines (and their means over layers)."""
    rng = np.random.default_rng(seed)
    gold = np.array(study.labels)
    right = {
        name: [bool(r.logprobs.argmax() == y) for r, y in zip(getattr(study, name), gold, strict=True)]
        for name in ("zsl", "icl", "ft")
    }
    zsl = np.stack([r.attn_output for r in study.zsl])
    icl = np.stack([r.attn_output for r in study.icl])
    ft = np.stack([r.attn_output for r in study.ft])
    icl_demo = [r.demo_scores for r in study.icl]
    ft_importance = [np.einsum("ld,ltd->lt", r.query_vector, study.train_queries) for r in study.ft]
    per_layer = {
        "simaou": simaou(zsl, icl, ft),
        "simaou_random": simaou_random(zsl, icl, rng),
        "simaou_random_uniform": simaou_random(zsl, icl, rng, uniform=True),
        "simam": simam([r.query_scores for r in study.icl], [r.query_scores for r in study.ft]),
        "simam_zsl": simam([r.query_scores for r in study.icl], [r.query_scores for r in study.zsl]),
        "kendall": kendall_per_layer(icl_demo, ft_importance),
        "kendall_random": kendall_per_layer(icl_demo, [rng.random(a.shape) for a in icl_demo]),
    }
    fixed = [not z and f for z, f in zip(right["zsl"], right["ft"], strict=True)]
    return {
        "n": len(gold),
        "accuracy": {name: float(np.mean(r)) for name, r in right.items()},
        "rec2ftp": rec2ftp(right["zsl"], right["icl"], right["ft"]),
        "zsl_wrong_ft_right": int(sum(fixed)),
        "zsl_wrong_ft_right_icl_right": int(sum(i for i, f in zip(right["icl"], fixed, strict=True) if f)),
        "mean": {k: float(np.nanmean(v)) for k, v in per_layer.items()},
        "per_layer": {k: [round(float(x), 6) for x in v] for k, v in per_layer.items()},
        "predictions": {name: [int(r.logprobs.argmax()) for r in getattr(study, name)] for name in right},
    }


# ---- tasks and results ----


def build_setup(task: str, tests: Sequence, pool: Sequence, k: int, seed: int, where: str = "") -> Setup:
    """The test examples and k demonstrations drawn by ``seed`` from ``pool`` (``data.tasks``
    ``ClassificationExample``\\ s; text only) rendered with the task's classification template."""
    import random

    from data.templates import CLASSIFICATION

    if task not in CLASSIFICATION:
        raise ValueError(f"task {task!r}: expected a classification task, one of {', '.join(sorted(CLASSIFICATION))}")
    template = CLASSIFICATION[task]
    if template.images:
        raise ValueError(f"task {task!r} shows images; the ICL-vs-finetuning analysis reads text-only tasks")

    def render(ex) -> Example:
        return Example(template.prompt(ex.texts)[0], template.index(ex.label, f"{where}: example {ex.id}"))

    if len(pool) < k:
        raise ValueError(f"{k} demonstrations asked for but the pool holds {len(pool)} examples")
    if not tests:
        raise ValueError(f"{where}: no test examples")
    demos = random.Random(seed).sample(list(pool), k)
    return Setup(template.verbalizers, [render(d) for d in demos], [render(t) for t in tests])


def analyse(decoder: Decoder, encode: Callable[[str], list[int]], setup: Setup, lr: float, seed: int = 0) -> dict:
    """``run_study`` and ``summarize``, with the demonstrations, the settings and the time taken."""
    t0 = time.time()
    study = run_study(decoder, encode, setup, lr, progress=print)
    result = summarize(study, seed)
    result.update(
        k=len(setup.demos),
        lr=lr,
        seed=seed,
        layers=len(decoder.blocks),
        label_words=setup.verbalizers,
        demonstrations=[{"text": d.text, "label": setup.verbalizers[d.label].strip()} for d in setup.demos],
        separator=SEP,
        seconds=round(time.time() - t0, 1),
    )
    return result


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(results: Sequence[dict]) -> str:
    """A summary table (one row per study) and each study's per-layer table."""
    lines = [
        "| study | k | lr | N | acc ZSL / ICL / FT | Rec2FTP | SimAOU (random) | SimAM (ZSL) | Kendall (random) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, m = r["accuracy"], r["mean"]
        rec = f"{_fmt(r['rec2ftp'])} ({r['zsl_wrong_ft_right_icl_right']}/{r['zsl_wrong_ft_right']})"
        lines.append(
            f"| {r['name']} | {r['k']} | {r['lr']:g} | {r['n']} | {a['zsl']:.3f} / {a['icl']:.3f} / {a['ft']:.3f} "
            f"| {rec} | {_fmt(m['simaou'])} ({_fmt(m['simaou_random'])}) | {_fmt(m['simam'])} ({_fmt(m['simam_zsl'])})"
            f" | {_fmt(m['kendall'])} ({_fmt(m['kendall_random'])}) |"
        )
    lines += seed_means(results)
    for r in results:
        lines += ["", f"Per layer, {r['name']}:", "", "| layer | " + " | ".join(METRICS) + " |"]
        lines.append("|---" * (len(METRICS) + 1) + "|")
        for i in range(r["layers"]):
            lines.append(f"| {i} | " + " | ".join(_fmt(r["per_layer"][m][i]) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def seed_means(results: Sequence[dict]) -> list[str]:
    """Mean ± std over the studies that differ only in their seed (same task, model, k, lr), when there are several:
    a table under the summary."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["checkpoint"], r["k"], r["lr"]), []).append(r)
    rows = []
    for (task, checkpoint, k, lr), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        if len({r["seed"] for r in rs}) < 2:
            continue

        def ms(values: list[float | None]) -> str:
            v = np.array([np.nan if x is None else x for x in values], dtype=float)
            return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}"

        acc = " / ".join(ms([r["accuracy"][s] for r in rs]) for s in ("zsl", "icl", "ft"))
        metric = " | ".join(ms([r["mean"][m] for r in rs]) for m in ("simaou", "simaou_random", "simam"))
        rest = " | ".join(ms([r["mean"][m] for r in rs]) for m in ("simam_zsl", "kendall", "kendall_random"))
        seeds = ",".join(str(r["seed"]) for r in rs)
        rows.append(
            f"| {task}, {Path(checkpoint).name}, k={k}, lr={lr:g} | {seeds} | {acc} | "
            f"{ms([r['rec2ftp'] for r in rs])} | {metric} | {rest} |"
        )
    if not rows:
        return []
    head = "| study | seeds | acc ZSL / ICL / FT | Rec2FTP | SimAOU | random | SimAM | ZSL | Kendall | random |"
    return ["", "Mean ± std over seeds (demonstration sets):", "", head, "|---" * 10 + "|", *rows]


def plot(result: dict, path: str) -> None:
    """Per-layer SimAOU, SimAM and Kendall with their baselines, side by side."""
    from metalm.io import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    per = result["per_layer"]
    layers = range(result["layers"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("SimAOU", "simaou", "simaou_random", "random update"),
        ("SimAM", "simam", "simam_zsl", "ZSL (before finetuning)"),
        ("Kendall", "kendall", "kendall_random", "random"),
    )
    for ax, (title, key, base, base_label) in zip(axes, panels, strict=True):
        ax.plot(layers, per[key], marker="o", label=f"{title} (ICL vs FT)")
        ax.plot(layers, per[base], marker="x", linestyle="--", label=base_label)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['name']}: k={result['k']}, N={result['n']}, Rec2FTP={_fmt(result['rec2ftp'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
