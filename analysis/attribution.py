"""Self-attention attribution (Hao, Dong, Wei and Xu, "Self-Attention Attribution: Interpreting Information
Interactions Inside Transformer", AAAI 2021) for our causal decoders, read and edited through ``metalm.probes``.

A decoder classifies by ranking label words (``data.templates``): after the prompt, the logits of each label's first
token, softmaxed over the K labels, give ``P(label | prompt)``; ``F`` is the probability of one target label (the
model's prediction, or the gold label as the authors' pruning script uses).

**Attribution (§3, eq. 3-4).** Let ``A = (A_1, ..., A_H)`` be layer ``l``'s attention maps for one example, the
softmax weights each head computes from the input. ``F(alpha * A)`` is the forward with layer ``l``'s maps replaced
by ``alpha * A`` (every other layer computes its own as usual). The attribution of head ``h`` is integrated gradients
from the zero map to ``A``:

    Attr_h(A) = A_h ⊙ ∫_0^1 ∂F(alpha A) / ∂A_h d alpha
              ≈ A_h / m ⊙ Σ_{k=1..m} ∂F(k/m · A) / ∂A_h            (the paper's right Riemann sum, m steps)

with ``rule="left"`` the released code's points ``k = 0..m-1`` and ``rule="midpoint"`` ``(k + 1/2)/m``. The m
scaled copies run as one batch. Entry ``[i, j]`` is how much the interaction of query token ``i`` with key token
``j`` in that head contributes to the prediction. Completeness (integrated gradients' axiom): summed over heads and
entries, the attributions equal ``F(A) - F(0)`` up to the Riemann error, which falls as m grows.

**Head importance (§4.1).** ``I_h`` = the maximum entry of ``Attr_h``, averaged over examples (the authors' script
sums, the same ranking). Baselines: the maximum attention weight ``max A_h`` averaged the same way (query row 0 is
left out: in a causal decoder it attends only to itself, weight 1 in every head), and random orders.

**Pruning (§4.1, fig. 3).** Heads are removed least important first, in steps of a tenth of all heads, by zeroing
their attention maps in every forward (``edit_attn``); a head's output is then zero, a layer with all heads pruned
outputs its projection's bias (nothing for a bias-free Llama). Accuracy is measured after each step. (With the
``momentum`` backend MoAttn's value term is added after the weights and stays.)

**Attribution graph (§5, the authors' ``attribution_tree.py``).** Per layer, the attributions summed over heads,
divided by their largest entry; edges (key ``j`` -> query ``i``) at or above a threshold (0.4, theirs) are the
information flow of the example, drawn layer over layer.

We follow the authors' code in YRdddream/attattr (``examples/generate_attrscore.py``, ``examples/prune_head_with_
attr.py``, ``examples/attribution_tree.py``, ``pytorch_pretrained_bert/model_attr.py``); the code here is our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from metalm.probes import probe

RULES = ("right", "left", "midpoint")
Encode = Callable[[str], list[int]]


@dataclass
class Item:
    """One classification example as decoder ids: the prompt (ending where the label word would follow) and the
    gold label's index among the task's labels, or among its own ``label_ids`` (first tokens of its candidate
    answers) when the candidates differ from example to example."""

    ids: list[int]
    label: int
    text: str = ""
    label_ids: list[int] | None = None

    def candidates(self, shared: Sequence[int] | None) -> list[int]:
        """The label tokens F is computed over: the item's own, else the task's."""
        if self.label_ids is None and shared is None:
            raise ValueError("the item has no candidate labels of its own and the task gave none")
        return list(self.label_ids if self.label_ids is not None else shared)


def label_token_ids(encode: Encode, verbalizers: Sequence[str]) -> list[int]:
    """The first token of each label word; two labels that share it could not be told apart at one position."""
    ids = []
    for word in verbalizers:
        pieces = encode(word)
        if not pieces:
            raise ValueError(f"label word {word!r} encodes to no tokens")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {list(verbalizers)} share a first token ({ids}); pick distinct words")
    return ids


def label_probs(
    decoder, ids: torch.Tensor, label_ids: Sequence[int], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, K)``: softmax over the K label words' logits at the last position (rows left-padded when batched)."""
    out = decoder(ids, attention_mask=attention_mask, logits_to_keep=1)
    return out.logits[:, -1, list(label_ids)].float().softmax(-1)


def attention_maps(decoder, ids: Sequence[int]) -> list[torch.Tensor]:
    """Every layer's attention maps ``(H, T, T)`` for one example (float32, detached)."""
    x = torch.tensor([list(ids)], device=_device(decoder))
    with torch.no_grad(), probe(decoder, record=("attn_weights",)) as seen:
        decoder(x)
    return [w[0] for w in seen.attn_weights]


def _device(decoder) -> torch.device:
    return next(decoder.parameters()).device


def _alphas(m: int, rule: str) -> torch.Tensor:
    if m < 1:
        raise ValueError(f"steps m={m}: need at least 1")
    k = torch.arange(m, dtype=torch.float32)
    if rule == "right":
        return (k + 1) / m
    if rule == "left":
        return k / m
    if rule == "midpoint":
        return (k + 0.5) / m
    raise ValueError(f"rule={rule!r}: expected one of {RULES}")


def scaled_prob(decoder, ids: Sequence[int], layer: int, maps: torch.Tensor, target: int, label_ids) -> torch.Tensor:
    """``F(maps)``: the target label's probability with layer ``layer``'s attention maps replaced by ``maps``
    ``(N, H, T, T)``, one forward row per map (the prompt repeated)."""
    x = torch.tensor([list(ids)], device=maps.device).expand(maps.shape[0], -1)
    with probe(decoder, record=(), edit_attn=lambda i, w: maps.to(w.dtype) if i == layer else None):
        return label_probs(decoder, x, label_ids)[:, target]


def layer_attribution(
    decoder,
    ids: Sequence[int],
    layer: int,
    target: int,
    label_ids: Sequence[int],
    m: int = 20,
    rule: str = "right",
    batch: int = 0,
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Attr(A)`` ``(H, T, T)`` of layer ``layer`` for one example: integrated gradients of the target label's
    probability from the zero map to the layer's actual maps ``A`` (module docstring), the m scaled copies run in
    batches of ``batch`` rows (0: all at once). ``maps`` may pass ``A`` when already recorded."""
    a = attention_maps(decoder, ids)[layer] if maps is None else maps
    alphas = _alphas(m, rule).to(a.device)
    total = torch.zeros_like(a)
    size = batch or m
    for start in range(0, m, size):
        scaled = (alphas[start : start + size, None, None, None] * a).requires_grad_(True)
        prob = scaled_prob(decoder, ids, layer, scaled, target, label_ids)
        (grad,) = torch.autograd.grad(prob.sum(), scaled)
        total += grad.sum(0)
    return a * total / m


def attribute_example(
    decoder,
    ids: Sequence[int],
    label_ids: Sequence[int],
    target: int | None = None,
    m: int = 20,
    rule: str = "right",
    batch: int = 0,
) -> dict:
    """Every layer's attribution ``(L, H, T, T)`` and attention maps for one example, with the predicted label, its
    probabilities, and the target the attribution explains (``None``: the prediction, as the authors' script)."""
    x = torch.tensor([list(ids)], device=_device(decoder))
    with torch.no_grad():
        probs = label_probs(decoder, x, label_ids)[0]
    pred = int(probs.argmax())
    target = pred if target is None else target
    maps = attention_maps(decoder, ids)
    attrs = [layer_attribution(decoder, ids, i, target, label_ids, m, rule, batch, maps[i]) for i in range(len(maps))]
    return {
        "attr": torch.stack(attrs),
        "attn": torch.stack(maps),
        "probs": probs,
        "pred": pred,
        "target": target,
    }


def completeness_gap(decoder, ids: Sequence[int], layer: int, target: int, label_ids, attr: torch.Tensor) -> float:
    """``Σ Attr - (F(A) - F(0))`` for layer ``layer`` (zero: the attributions account for the whole change)."""
    a = attention_maps(decoder, ids)[layer]
    with torch.no_grad():
        ends = scaled_prob(decoder, ids, layer, torch.stack([a, torch.zeros_like(a)]), target, label_ids)
    return float(attr.sum() - (ends[0] - ends[1]))


def completeness_by_steps(
    decoder,
    item: Item,
    label_ids: Sequence[int] | None,
    layers: Sequence[int],
    steps: Sequence[int],
    rule: str = "midpoint",
    batch: int = 32,
) -> dict:
    """How many Riemann steps a model needs: for one example (the gold label as target) and each of ``layers``,
    ``F(A) - F(0)`` and the completeness gap at each m of ``steps``. The gap is the Riemann error; where the
    path from the zero map is sharply curved (a pretrained LLM's first layers) it shrinks only at large m."""
    cands = item.candidates(label_ids)
    maps = attention_maps(decoder, item.ids)
    rows = []
    for layer in layers:
        if not 0 <= layer < len(maps):
            raise ValueError(f"layer {layer}: the model has layers 0..{len(maps) - 1}")
        gaps = {}
        for m in steps:
            attr = layer_attribution(decoder, item.ids, layer, item.label, cands, m, rule, batch, maps[layer])
            gaps[m] = completeness_gap(decoder, item.ids, layer, item.label, cands, attr)
        change = float(attr.sum()) - gaps[steps[-1]]
        rows.append({"layer": layer, "f_change": change, "gaps": {str(m): g for m, g in gaps.items()}})
    return {"text": item.text, "rule": rule, "steps": list(steps), "layers": rows}


def completeness_markdown(result: dict, title: str) -> str:
    """The gap per layer (rows) and m (columns)."""
    steps = result["steps"]
    lines = [
        f"## {title}: completeness gap by Riemann steps m ({result['rule']} rule)",
        "",
        "Sum of the attributions minus F(A) - F(0), for one example, the gold label as target:",
        "",
        "| layer | F(A) - F(0) | " + " | ".join(f"m = {m}" for m in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for row in result["layers"]:
        gaps = " | ".join(f"{row['gaps'][str(m)]:+.2e}" for m in steps)
        lines.append(f"| {row['layer']} | {row['f_change']:+.4f} | {gaps} |")
    return "\n".join(lines) + "\n"


def head_scores(attr: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head ``(L, H)`` scores of one example: the largest attribution entry, and the largest attention weight
    outside query row 0 (row 0 of a causal map is 1 on itself in every head)."""
    return attr.flatten(2).amax(-1), attn[:, :, 1:].flatten(2).amax(-1)


def head_mask(order: Sequence[int], n_pruned: int, shape: tuple[int, int]) -> torch.Tensor:
    """``(L, H)`` of 1 (kept) and 0 (pruned): the first ``n_pruned`` heads of ``order`` (flat indices) pruned."""
    keep = torch.ones(shape[0] * shape[1])
    keep[list(order[:n_pruned])] = 0
    return keep.view(shape)


def prune_edit(keep: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor | None]:
    """An ``edit_attn`` that zeroes the maps of the heads ``keep`` marks 0 (layers with all heads kept untouched)."""

    def edit(layer: int, w: torch.Tensor) -> torch.Tensor | None:
        row = keep[layer]
        if bool((row == 1).all()):
            return None
        return w * row.to(w.device, w.dtype)[None, :, None, None]

    return edit


def accuracy(
    decoder,
    items: Sequence[Item],
    label_ids: Sequence[int] | None,
    keep: torch.Tensor | None = None,
    batch_size: int = 32,
) -> float:
    """Share of ``items`` whose highest-probability label is the gold one, with the heads ``keep`` marks 0 pruned
    (rows left-padded with id 0, which the attention mask hides)."""
    if not items:
        raise ValueError("accuracy of no examples")
    device = _device(decoder)
    correct = 0
    edit = prune_edit(keep) if keep is not None else None
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        width = max(len(it.ids) for it in chunk)
        x = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, it in enumerate(chunk):
            x[r, width - len(it.ids) :] = torch.tensor(it.ids)
            mask[r, width - len(it.ids) :] = 1
        with torch.no_grad(), probe(decoder, record=(), edit_attn=edit):
            logits = decoder(x.to(device), attention_mask=mask.to(device), logits_to_keep=1).logits[:, -1].cpu()
        for row, it in zip(logits, chunk, strict=True):
            correct += int(int(row[it.candidates(label_ids)].argmax()) == it.label)
    return correct / len(items)


def head_importance(
    decoder,
    items: Sequence[Item],
    label_ids: Sequence[int] | None,
    m: int = 20,
    rule: str = "right",
    target: str = "gold",
    batch: int = 0,
) -> dict[str, torch.Tensor]:
    """Per-head importance ``(L, H)`` averaged over ``items``: ``attribution`` (the max attribution entry) and
    ``attention`` (the max attention weight). ``target`` is ``gold`` (the authors' pruning script) or ``pred``."""
    if target not in ("gold", "pred"):
        raise ValueError(f"target={target!r}: expected 'gold' or 'pred'")
    attr_sum = attn_sum = None
    for it in items:
        gold = it.label if target == "gold" else None
        res = attribute_example(decoder, it.ids, it.candidates(label_ids), gold, m, rule, batch)
        a, w = head_scores(res["attr"], res["attn"])
        attr_sum = a if attr_sum is None else attr_sum + a
        attn_sum = w if attn_sum is None else attn_sum + w
    return {"attribution": attr_sum / len(items), "attention": attn_sum / len(items)}


def pruning_orders(importance: dict[str, torch.Tensor], seeds: Sequence[int]) -> dict[str, list[list[int]]]:
    """Heads least important first (flat ``layer * H + head`` indices) for each importance, and random orders."""
    orders = {name: [torch.argsort(score.flatten(), stable=True).tolist()] for name, score in importance.items()}
    n = next(iter(importance.values())).numel()
    orders["random"] = [torch.randperm(n, generator=torch.Generator().manual_seed(s)).tolist() for s in seeds]
    return orders


def pruning_curves(
    decoder,
    items: Sequence[Item],
    label_ids: Sequence[int] | None,
    orders: dict[str, list[list[int]]],
    shape: tuple[int, int],
    fractions: Sequence[float] = tuple(i / 10 for i in range(11)),
    batch_size: int = 32,
) -> dict[str, dict]:
    """Accuracy after pruning each fraction of all heads in each order (``mean`` and ``runs`` per fraction; several
    orders, as the random ones, are averaged)."""
    curves = {}
    for name, runs in orders.items():
        accs = [[_acc(decoder, items, label_ids, o, f, shape, batch_size) for f in fractions] for o in runs]
        t = torch.tensor(accs)
        curves[name] = {
            "fractions": list(fractions),
            "mean": t.mean(0).tolist(),
            "std": (t.std(0) if len(runs) > 1 else torch.zeros(len(fractions))).tolist(),
            "runs": accs,
        }
    return curves


def _acc(decoder, items, label_ids, order, fraction, shape, batch_size) -> float:
    keep = head_mask(order, round(fraction * shape[0] * shape[1]), shape)
    return accuracy(decoder, items, label_ids, keep, batch_size)


def attribution_graph(attr: torch.Tensor, threshold: float = 0.4) -> list[dict]:
    """Edges of one example's information flow: per layer, the attributions ``(L, H, T, T)`` summed over heads and
    divided by their largest entry; an edge (key ``j`` -> query ``i``, ``j != i``) wherever that share is at or
    above ``threshold`` (the authors' 0.4)."""
    edges = []
    for layer, a in enumerate(attr.sum(1)):
        top = float(a.max())
        if top <= 0:
            continue
        share = a / top
        for i, j in (share >= threshold).nonzero().tolist():
            if i != j:
                edges.append({"layer": layer, "from": j, "to": i, "share": round(float(share[i, j]), 4)})
    return edges


def _pyplot():
    from metalm.io import pyplot

    plt = pyplot()

    return plt


def _save(fig, out: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def plot_graph(edges: list[dict], tokens: Sequence[str], n_layers: int, out: str | Path, title: str = "") -> Path:
    """The attribution graph as a PNG: tokens along x, one row per layer boundary; an edge from token ``j`` below
    layer ``l`` to token ``i`` above it, darker for a larger share."""
    plt = _pyplot()
    t = len(tokens)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * t), 1.0 + 0.9 * n_layers))
    for e in edges:
        ax.annotate(
            "",
            xy=(e["to"], e["layer"] + 1),
            xytext=(e["from"], e["layer"]),
            arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.25 + 0.75 * e["share"], lw=0.6 + 2 * e["share"]),
        )
    used = {(e["layer"], e["from"]) for e in edges} | {(e["layer"] + 1, e["to"]) for e in edges}
    if used:
        ys, xs = zip(*used, strict=True)
        ax.scatter(xs, ys, s=14, color="tab:blue", zorder=3)
    ax.set_xticks(range(t))
    ax.set_xticklabels(tokens, rotation=70, fontsize=7)
    ax.set_yticks(range(n_layers + 1))
    ax.set_yticklabels(["input"] + [f"after layer {i}" for i in range(n_layers)], fontsize=7)
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_ylim(-0.4, n_layers + 0.4)
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def plot_pruning(curves: dict[str, dict], out: str | Path, title: str = "") -> Path:
    """Accuracy against the share of heads pruned, one line per order (random: mean ± std band)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, c in curves.items():
        x, y, s = c["fractions"], torch.tensor(c["mean"]), torch.tensor(c["std"])
        (line,) = ax.plot(x, y, marker="o", ms=3, label=name)
        if len(c["runs"]) > 1:
            ax.fill_between(x, y - s, y + s, alpha=0.2, color=line.get_color())
    ax.set_xlabel("share of heads pruned (least important first)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out)


def read_items(task: str, data: str | Path, encode: Encode, split: str = "val", limit: int = 0) -> tuple[list, list]:
    """``(items, verbalizers)`` of a classification task scored by label words: ``world-entail`` or
    ``world-choice`` from a world directory's ``split``, or a GLUE task (``sst2``, ``rte``, ...) from its tsv;
    ``limit`` keeps the first N. ``world-choice`` questions ("Where is the red circle in: ...?") each rank their
    own answers (``Item.label_ids``; no shared verbalizers)."""
    from data.tasks import read_glue
    from data.tasks.world import read_world_choice, read_world_entail
    from data.templates import CLASSIFICATION

    if task == "world-choice":
        items = []
        for ex in read_world_choice(data, split).examples[: limit or None]:
            context = ex.options[0][0]
            if any(c != context for c, _ in ex.options):
                raise ValueError(f"{data}: world-choice example {ex.id} has options with different contexts")
            own = label_token_ids(encode, [w for _, w in ex.options])
            items.append(Item(encode(context), ex.label, context, own))
        return items, []
    if task not in CLASSIFICATION:
        raise ValueError(f"task {task!r}: expected world-choice or one of {sorted(CLASSIFICATION)}")
    template = CLASSIFICATION[task]
    if template.images:
        raise ValueError(f"task {task!r} needs images; attribution here reads text-only prompts")
    examples = (read_world_entail(data, split) if task == "world-entail" else read_glue(data, task)).examples
    items = []
    for ex in examples[: limit or None]:
        (body,) = template.prompt(ex.texts)
        items.append(Item(encode(body), template.index(ex.label, f"{data}: example {ex.id}"), body))
    return items, template.verbalizers


def run_study(
    decoder,
    tokenizer,
    items: Sequence[Item],
    verbalizers: Sequence[str],
    n_importance: int = 24,
    m: int = 20,
    rule: str = "right",
    target: str = "gold",
    random_orders: int = 3,
    example: int = 0,
    threshold: float = 0.4,
    batch: int = 0,
) -> dict:
    """The miniature study: head importance from the first ``n_importance`` items, accuracy curves on all ``items``
    as heads are pruned by attribution, by attention weight and at random, and the attribution graph of item
    ``example`` (with its per-layer completeness gaps)."""
    import time

    if not 0 <= example < len(items):
        raise ValueError(f"example {example}: there are {len(items)} items")
    label_ids = label_token_ids(tokenizer.encode, verbalizers) if verbalizers else None
    shape = (len(decoder.blocks), decoder.blocks[0].attn.n_heads)
    t0 = time.perf_counter()
    imp = head_importance(decoder, items[:n_importance], label_ids, m, rule, target, batch)
    t_imp = time.perf_counter() - t0
    orders = pruning_orders(imp, range(random_orders))
    curves = pruning_curves(decoder, items, label_ids, orders, shape)
    t_prune = time.perf_counter() - t0 - t_imp
    it = items[example]
    cands = it.candidates(label_ids)
    res = attribute_example(decoder, it.ids, cands, None, m, rule, batch)
    gaps = [completeness_gap(decoder, it.ids, i, res["target"], cands, res["attr"][i]) for i in range(shape[0])]
    tokens = [tokenizer.decode([t], skip_special=False) for t in it.ids]
    return {
        "shape": {"layers": shape[0], "heads": shape[1]},
        "verbalizers": list(verbalizers or []),
        "label_token_ids": label_ids,
        "n_importance": min(n_importance, len(items)),
        "n_eval": len(items),
        "steps": m,
        "rule": rule,
        "target": target,
        "importance": {k: v.tolist() for k, v in imp.items()},
        "orders": {k: v[0] for k, v in orders.items() if k != "random"},
        "pruning": curves,
        "example": {
            "index": example,
            "text": it.text,
            "tokens": tokens,
            "candidates": [tokenizer.decode([c]) for c in cands],
            "gold": it.label,
            "pred": res["pred"],
            "probs": res["probs"].tolist(),
            "completeness_gap": gaps,
            "f_change": [float(a.sum()) - g for g, a in zip(gaps, res["attr"], strict=True)],
            "threshold": threshold,
            "edges": attribution_graph(res["attr"], threshold),
        },
        "seconds": {"importance": round(t_imp, 1), "pruning": round(t_prune, 1)},
    }


def markdown(result: dict, title: str) -> str:
    """The study's tables: accuracy per share of heads pruned for each order, and the example's completeness."""
    curves = result["pruning"]
    fractions = next(iter(curves.values()))["fractions"]
    head = "| order | " + " | ".join(f"{f:.0%}" for f in fractions) + " |"
    lines = [f"## {title}", "", "Accuracy as heads are pruned (least important first):", "", head]
    lines.append("|" + "---|" * (len(fractions) + 1))
    for name, c in curves.items():
        many = len(c["runs"]) > 1
        cells = [f"{m:.3f}" + (f" ± {s:.3f}" if many else "") for m, s in zip(c["mean"], c["std"], strict=True)]
        lines.append(f"| {name} ({len(c['runs'])} order{'s' if many else ''}) | " + " | ".join(cells) + " |")
    ex = result["example"]
    lines += [
        "",
        f"Model: {result['shape']['layers']} layers x {result['shape']['heads']} heads; importance from "
        f"{result['n_importance']} examples, accuracy on {result['n_eval']}; m = {result['steps']} "
        f"({result['rule']} Riemann sum), target = {result['target']} label.",
        "",
        f"Example {ex['index']} (gold {ex['gold']}, predicted {ex['pred']}, probabilities "
        f"{[round(p, 3) for p in ex['probs']]}): per layer, F(A) - F(0) and the completeness gap "
        "(sum of attributions minus it):",
        "",
        "| layer | F(A) - F(0) | gap |",
        "|---|---|---|",
    ]
    rows = zip(ex["f_change"], ex["completeness_gap"], strict=True)
    lines += [f"| {i} | {d:+.4f} | {g:+.2e} |" for i, (d, g) in enumerate(rows)]
    lines += ["", f"Attribution-graph edges at share >= {ex['threshold']}: {len(ex['edges'])}", ""]
    return "\n".join(lines)


def write_results(result: dict, out_dir: str | Path, name: str, title: str) -> list[Path]:
    """``{name}.json``, ``{name}.md``, ``{name}-pruning.png`` and ``{name}-graph.png`` under ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=1) + "\n")
    paths[1].write_text(markdown(result, title))
    paths.append(plot_pruning(result["pruning"], out / f"{name}-pruning.png", title))
    ex = result["example"]
    graph_title = f"{title}: attribution graph of example {ex['index']} (share >= {ex['threshold']})"
    layers = result["shape"]["layers"]
    paths.append(plot_graph(ex["edges"], ex["tokens"], layers, out / f"{name}-graph.png", graph_title))
    return paths
