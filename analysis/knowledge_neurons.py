"""Knowledge neurons (Dai et al., "Knowledge Neurons in Pretrained Transformers", ACL 2022) in a causal decoder.

A fact is a set of prompts that all end where the answer should come next (``"The capital of France is"`` ->
``" Paris"``); ``F(a)`` is the probability of the answer's first token (multi-token answers are scored by their first
token) at the prompt's last position when the feed-forward activations ``a^(l)`` of layer ``l`` at that position are
set to ``a``. With ``a-bar`` the actual activations:

- **Knowledge attribution** (§3.1): integrated gradients from the zero baseline, for each layer on its own,
  ``Attr(a_i) = a-bar_i / m * sum_{k=1..m} dF(k/m * a-bar) / da_i`` (the right Riemann sum of the paper's
  equation; the authors' ``1_analyze_mlm.py`` uses the left one, k = 0..m-1). Completeness: per layer,
  ``sum_i Attr(a_i) -> F(a-bar) - F(0)`` as ``m`` grows, the error of an m-step Riemann sum being ``O(1/m)``.
- **Refining** (§3.2): per prompt, keep neurons with ``Attr >= t * max Attr`` over all layers (t = 0.2); per fact,
  keep those kept by at least a share ``p`` of its prompts (p = 0.7, and at least ``min(3, n)`` prompts). As the
  authors' ``2_get_kn.py`` does, ``p`` is moved by 0.05 (at most 6 rounds) until the facts have 2 to 5 neurons on
  average.
- **Suppressing and amplifying** (§4): the found neurons' activations at the last position set to 0 or doubled;
  the answer probability's change, against as many random neurons in the same layers and against the other facts.
- **Editing** (§5) through the value rows ``v_i = W_down[:, i]`` (``block.mlp.proj.weight[:, i]``), which a neuron
  adds to the residual stream in proportion to its activation. Erasing sets them to zero (the authors'
  ``7_erase_knowledge.py``; the paper erases a whole relation's common neurons, here one fact's). Updating a fact
  from answer ``o`` to ``o'`` (§5.1, ``6_edit_knowledge_sampled.py``), on the fact's neurons less those that more
  than 10% of the other facts share: ``v_i <- v_i - |v_i| / |e_o| * e_o + |v_i| / |e_o'| * e_o'`` with ``e`` the
  output embedding (the ``lm_head`` row; BERT's word embedding, tied to its output, in the paper).

A decoder changes nothing before the last position when the last position's activations change, so each
integrated-gradient batch runs the prompt's prefix once with a KV cache and only the last token ``m`` times.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from metalm.probes import probe

Neuron = tuple[int, int]  # (layer, index in the feed-forward intermediate layer)


@dataclass(frozen=True)
class Fact:
    """One fact: paraphrased next-token ``prompts`` and the ``answer`` they should be continued with."""

    name: str
    prompts: tuple[str, ...]
    answer: str


def load_facts(path: str | Path) -> list[Fact]:
    """Facts from a JSON list of ``{"name", "prompts": [...], "answer"}`` objects (answers with their leading space);
    errors name the file and the entry."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no facts file at {path}: expected a JSON list of facts") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{name, prompts, answer}} objects")
    facts = []
    for i, row in enumerate(rows):
        ok = isinstance(row, dict) and isinstance(row.get("name"), str) and isinstance(row.get("answer"), str)
        prompts = row.get("prompts") if isinstance(row, dict) else None
        ok = ok and isinstance(prompts, list) and len(prompts) > 0 and all(isinstance(p, str) and p for p in prompts)
        if not ok or not row["answer"]:
            raise ValueError(f"{path}: entry {i} must have a name, a non-empty list of prompts and an answer")
        facts.append(Fact(row["name"], tuple(prompts), row["answer"]))
    return facts


WORLD_FACTS = (  # (sentence of data.world.FACTS, the word it ends on that the prompt asks for)
    ("A circle is round and has no corners.", "corners"),
    ("Mixing red and yellow gives orange.", "orange"),
    ("Red, orange and yellow are warm colors.", "warm"),
    ("Green, blue and purple are cool colors.", "cool"),
    ("One and one make two.", "two"),
    ("The middle is between the left and the right.", "right"),
    ("A square has more corners than a triangle.", "triangle"),
    ("The background of a picture is white or light grey.", "grey"),
    ("Each place holds at most one shape.", "shape"),
    ("Three is more than two, and two is more than one.", "one"),
)


def world_facts(n_prompts: int = 5, seed: int = 0) -> list[Fact]:
    """Ten facts the bundled world's documents state (``data.world.FACTS``), each asked by its sentence up to the
    answer: alone, and after one or two other fact sentences (as the world's documents open with 2-4 of them)."""
    from data.world import FACTS

    rng = random.Random(seed)
    facts = []
    for sentence, word in WORLD_FACTS:
        if sentence not in FACTS:
            raise ValueError(f"world fact {sentence!r} is no longer among data.world.FACTS")
        stem = sentence[: sentence.rindex(" " + word)]
        others = [f for f in FACTS if f != sentence]
        prompts = [stem]
        while len(prompts) < n_prompts:
            prompt = " ".join(rng.sample(others, rng.randint(1, 2)) + [stem])
            if prompt not in prompts:
                prompts.append(prompt)
        facts.append(Fact(word, tuple(prompts), " " + word))
    return facts


def encode_fact(tokenizer, fact: Fact) -> tuple[list[list[int]], int]:
    """The prompts' ids and the answer's first token (``tokenizer.encode`` of the answer alone: byte-level BPE
    starts a word with its leading space, so it encodes the same after the prompt)."""
    answer = tokenizer.encode(fact.answer)
    if not answer:
        raise ValueError(f"fact {fact.name!r}: answer {fact.answer!r} encodes to no tokens")
    return [tokenizer.encode(p) for p in fact.prompts], answer[0]


@dataclass
class Attribution:
    """Integrated gradients of one prompt: ``scores`` ``(layers, hidden)``, ``prob`` = F(a-bar), per layer
    ``zero_prob`` = F(0) (that layer's last-position activations zeroed), and the actual ``activations``."""

    scores: torch.Tensor
    prob: float
    zero_prob: torch.Tensor
    activations: torch.Tensor


def _prefix(decoder, ids: Sequence[int]):
    """The KV cache of all but the last token (``None`` for a one-token prompt) and the last token's id tensor."""
    device = decoder.tok_emb.weight.device
    past = None
    if len(ids) > 1:
        with torch.no_grad():
            past = decoder(torch.tensor([ids[:-1]], device=device), use_cache=True, compute_logits=False)
        past = past.past_key_values
    return past, torch.tensor([[ids[-1]]], device=device)


def _expand(past, n: int):
    return None if past is None else [(k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) for k, v in past]


@contextmanager
def _frozen(decoder) -> Iterator[None]:
    """Parameters without gradients inside (the attributions need only the activations'), as they were after."""
    flags = [(p, p.requires_grad) for p in decoder.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def integrated_gradients(
    decoder,
    ids: Sequence[int],
    target: int,
    steps: int = 20,
    batch_size: int = 128,
    layers: Sequence[int] | None = None,
) -> Attribution:
    """Attributions of the feed-forward neurons at the last position of ``ids`` to the probability of ``target``
    (module docstring). The ``steps + 1`` points (0 included, for F(0)) of every layer in ``layers`` (all by
    default) are forwarded ``batch_size`` at a time, each row scaling its own layer only."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps}, batch_size={batch_size}: both must be at least 1")
    if not ids:
        raise ValueError("integrated_gradients: empty prompt")
    n_layers = len(decoder.blocks)
    layers = range(n_layers) if layers is None else [layer % n_layers for layer in layers]
    past, last = _prefix(decoder, ids)
    with torch.no_grad(), probe(decoder, record=("mlp_act",)) as seen:
        prob = decoder(last, past_key_values=past).logits[0, -1].float().softmax(-1)[target].item()
    actual = torch.stack([a[0, -1] for a in seen.mlp_act])  # (layers, hidden)
    grads = torch.zeros_like(actual, dtype=torch.float32)
    zero_prob = torch.full((n_layers,), float("nan"))
    points = [(layer, k) for layer in layers for k in range(steps + 1)]  # k = 0 gives F(0)
    for start in range(0, len(points), batch_size):
        chunk = points[start : start + batch_size]
        rows: dict[int, list[int]] = {}
        for row, (layer, _) in enumerate(chunk):
            rows.setdefault(layer, []).append(row)
        leaves = {
            layer: (torch.tensor([chunk[r][1] / steps for r in rs], device=actual.device)[:, None] * actual[layer])
            .float()
            .requires_grad_(True)
            for layer, rs in rows.items()
        }

        def edit(layer, act, rows=rows, leaves=leaves):
            if layer not in rows:
                return None
            act = act.clone()
            act[rows[layer], -1] = leaves[layer].to(act.dtype)
            return act

        with _frozen(decoder), torch.enable_grad(), probe(decoder, layers=sorted(rows), record=(), edit_mlp=edit):
            out = decoder(last.expand(len(chunk), 1), past_key_values=_expand(past, len(chunk)))
            probs = out.logits[:, -1].float().softmax(-1)[:, target]
            found = torch.autograd.grad(probs.sum(), list(leaves.values()))
        for (layer, rs), grad in zip(rows.items(), found, strict=True):
            for r, g in zip(rs, grad, strict=True):
                if chunk[r][1] == 0:
                    zero_prob[layer] = probs[r].item()
                else:  # the right Riemann sum: k = 1..m
                    grads[layer] += g
    scores = actual.float() * grads / steps
    return Attribution(scores.cpu(), prob, zero_prob, actual.float().cpu())


def prompt_neurons(scores: torch.Tensor, share: float = 0.2) -> set[Neuron]:
    """Neurons of one prompt whose attribution is at least ``share`` of the largest (over all layers); none when no
    attribution is positive."""
    top = float(scores.max())
    if top <= 0:
        return set()
    layer, index = torch.nonzero(scores >= share * top, as_tuple=True)
    return set(zip(layer.tolist(), index.tolist(), strict=True))


def fact_neurons(per_prompt: Sequence[set[Neuron]], prompt_share: float = 0.7, min_prompts: int = 3) -> list[Neuron]:
    """Neurons kept by at least ``prompt_share`` of a fact's prompts and by at least ``min(min_prompts, n)``."""
    counts = Counter(n for neurons in per_prompt for n in neurons)
    need = max(prompt_share * len(per_prompt), min(min_prompts, len(per_prompt)))
    return sorted(n for n, c in counts.items() if c >= need - 1e-9)


def refine(
    attributions: Sequence[Sequence[Attribution]],
    share: float = 0.2,
    prompt_share: float = 0.7,
    target: tuple[float, float] | None = (2, 5),
    rounds: int = 6,
) -> tuple[list[list[Neuron]], float]:
    """Each fact's knowledge neurons from its prompts' attributions, and the prompt share used: ``prompt_share``
    moved by 0.05 (at most ``rounds`` times) until the mean count lies in ``target`` (``None``: never moved)."""
    per_fact = [[prompt_neurons(a.scores, share) for a in fact] for fact in attributions]
    p = prompt_share
    for _ in range(rounds):
        found = [fact_neurons(prompts, p) for prompts in per_fact]
        mean = sum(map(len, found)) / max(len(found), 1)
        if target is None or target[0] <= mean <= target[1]:
            break
        p = min(1.0, p + 0.05) if mean > target[1] else max(0.0, p - 0.05)
    else:
        found = [fact_neurons(prompts, p) for prompts in per_fact]
    return found, p


def answer_probs(
    decoder, prompts: Sequence[Sequence[int]], target: int, scale: dict[Neuron, float] | None = None
) -> torch.Tensor:
    """The probability of ``target`` after each prompt, with the activations of the neurons in ``scale`` at the
    last position multiplied by their factor (0 suppresses, 2 amplifies)."""
    device = decoder.tok_emb.weight.device
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):  # left padding: the last position is every prompt's own last token
        ids[row, width - len(p) :] = torch.tensor(p, device=device)
        mask[row, width - len(p) :] = 1
    by_layer: dict[int, list[tuple[int, float]]] = {}
    for (layer, index), factor in (scale or {}).items():
        by_layer.setdefault(layer, []).append((index, factor))

    def edit(layer, act):
        if layer not in by_layer:
            return None
        act = act.clone()
        for index, factor in by_layer[layer]:
            act[:, -1, index] *= factor
        return act

    with torch.no_grad(), probe(decoder, layers=sorted(by_layer) or None, record=(), edit_mlp=edit):
        logits = decoder(ids, attention_mask=mask).logits[:, -1]
    return logits.float().softmax(-1)[:, target].cpu()


def random_neurons(neurons: Sequence[Neuron], hidden: int, rng: random.Random) -> list[Neuron]:
    """As many neurons per layer as ``neurons`` has, drawn at random among the others of those layers."""
    taken = set(neurons)
    out: list[Neuron] = []
    for layer, count in sorted(Counter(layer for layer, _ in neurons).items()):
        pool = [i for i in range(hidden) if (layer, i) not in taken]
        out += [(layer, i) for i in sorted(rng.sample(pool, count))]
    return out


def value_row(decoder, neuron: Neuron) -> torch.Tensor:
    """The vector neuron ``(layer, i)`` writes to the residual stream per unit of activation: ``W_down[:, i]``."""
    layer, index = neuron
    return decoder.blocks[layer].mlp.proj.weight[:, index]


@contextmanager
def edited_rows(decoder, rows: dict[Neuron, torch.Tensor]) -> Iterator[None]:
    """Inside, each neuron's value row is replaced by the given vector; afterwards the saved rows are put back
    exactly. Nothing else of the weights is touched."""
    saved = {n: value_row(decoder, n).detach().clone() for n in rows}
    try:
        with torch.no_grad():
            for (layer, index), row in rows.items():
                decoder.blocks[layer].mlp.proj.weight[:, index] = row
        yield
    finally:
        with torch.no_grad():
            for (layer, index), row in saved.items():
                decoder.blocks[layer].mlp.proj.weight[:, index] = row


def erase_rows(decoder, neurons: Sequence[Neuron]) -> dict[Neuron, torch.Tensor]:
    """The rows that erase a fact: each neuron's value row set to zero (§5.2)."""
    return {n: torch.zeros_like(value_row(decoder, n)) for n in neurons}


def update_rows(decoder, neurons: Sequence[Neuron], old: int, new: int) -> dict[Neuron, torch.Tensor]:
    """The rows that move a fact from answer token ``old`` to ``new`` (§5.1): each value row loses the old answer's
    output embedding and gains the new one's, both scaled to the row's norm."""
    e_old, e_new = decoder.lm_head.weight[old].detach(), decoder.lm_head.weight[new].detach()
    rows = {}
    for n in neurons:
        v = value_row(decoder, n).detach()
        rows[n] = v - v.norm() / e_old.norm() * e_old + v.norm() / e_new.norm() * e_new
    return rows


def exclusive(found: Sequence[Sequence[Neuron]], i: int, max_share: float = 0.1) -> list[Neuron]:
    """Fact ``i``'s neurons less those in more than ``max_share`` of the other facts' sets (the authors'
    ``select_kn`` keeps the neurons that say this fact, not the relation)."""
    others = [set(f) for j, f in enumerate(found) if j != i]
    return [n for n in found[i] if sum(n in o for o in others) <= max_share * len(others)]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def study(
    decoder,
    tokenizer,
    facts: Sequence[Fact],
    steps: int = 20,
    share: float = 0.2,
    prompt_share: float = 0.7,
    random_draws: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Attribute, refine, intervene and edit on ``facts``; every number the report quotes (module docstring)."""
    decoder.eval()
    encoded = [encode_fact(tokenizer, f) for f in facts]
    hidden = decoder.blocks[0].mlp.proj.weight.shape[1]
    attributions = []
    for fact, (prompts, target) in zip(facts, encoded, strict=True):
        if progress:
            progress(f"attributing {fact.name!r} ({len(prompts)} prompts)")
        attributions.append([integrated_gradients(decoder, p, target, steps) for p in prompts])
    found, p_used = refine(attributions, share, prompt_share)
    rng = random.Random(seed)
    base = [answer_probs(decoder, prompts, target) for prompts, target in encoded]

    def rel(new: torch.Tensor, old: torch.Tensor) -> float:  # the authors' ratio of mean change to mean probability
        return float((new - old).mean() / old.mean())

    rows = []
    for i, (fact, (prompts, target), neurons) in enumerate(zip(facts, encoded, found, strict=True)):
        others = [j for j in range(len(facts)) if j != i]
        row = dict(
            name=fact.name,
            answer=fact.answer,
            prompts=list(fact.prompts),
            prob=float(base[i].mean()),
            top1=float(_top1(decoder, prompts, target)),
            neurons=[list(n) for n in neurons],
            completeness_gap=max(
                abs(float(a.scores[layer].sum()) - (a.prob - float(a.zero_prob[layer])))
                for a in attributions[i]
                for layer in range(len(decoder.blocks))
            ),
        )
        if neurons:
            draws = [random_neurons(neurons, hidden, rng) for _ in range(random_draws)]
            for op, factor in (("suppress", 0.0), ("amplify", 2.0)):
                row[op] = rel(answer_probs(decoder, prompts, target, dict.fromkeys(neurons, factor)), base[i])
                row[f"{op}_random"] = _mean(
                    [rel(answer_probs(decoder, prompts, target, dict.fromkeys(d, factor)), base[i]) for d in draws]
                )
                row[f"{op}_other_facts"] = _mean(
                    [rel(answer_probs(decoder, *encoded[j], dict.fromkeys(neurons, factor)), base[j]) for j in others]
                )
            own = exclusive(found, i)
            if own:  # the fact's own neurons, without those it shares with other facts (relation neurons)
                silenced = answer_probs(decoder, prompts, target, dict.fromkeys(own, 0.0))
                row["suppress_exclusive"] = rel(silenced, base[i])
                row["suppress_exclusive_other_facts"] = _mean(
                    [rel(answer_probs(decoder, *encoded[j], dict.fromkeys(own, 0.0)), base[j]) for j in others]
                )
            row["erase"] = _edit_effect(decoder, encoded, base, i, erase_rows(decoder, neurons))
            row["erase_random"] = _edit_effect(decoder, encoded, base, i, erase_rows(decoder, draws[0]))
        new = (i + 1) % len(facts)
        while encoded[new][1] == target and new != i:
            new = (new + 1) % len(facts)
        keep = exclusive(found, i)
        if keep and new != i:
            new_target = encoded[new][1]
            with edited_rows(decoder, update_rows(decoder, keep, target, new_target)):
                after_new = answer_probs(decoder, prompts, new_target)
                after_old = answer_probs(decoder, prompts, target)
                success = _top1(decoder, prompts, new_target)
                other = _mean([float(answer_probs(decoder, encoded[j][0], encoded[j][1]).mean()) for j in others])
            row["update"] = dict(
                to=facts[new].answer,
                neurons=len(keep),
                new_prob_before=float(answer_probs(decoder, prompts, new_target).mean()),
                new_prob_after=float(after_new.mean()),
                old_prob_after=float(after_old.mean()),
                success=float(success),
                other_facts_before=_mean([float(base[j].mean()) for j in others]),
                other_facts_after=other,
            )
        rows.append(row)
    if progress:
        progress("completeness of the integrated gradients on the first prompt")
    curve = completeness_curve(decoder, encoded[0][0][0], encoded[0][1], (1, 2, 5, 10, 20, 50))
    counts = [len(f) for f in found]
    layers = Counter(layer for f in found for layer, _ in f)
    return dict(
        settings=dict(steps=steps, share=share, prompt_share=prompt_share, prompt_share_used=p_used, seed=seed),
        n_layers=len(decoder.blocks),
        hidden=hidden,
        mean_neurons=_mean(counts),
        neurons_per_layer=[layers.get(i, 0) for i in range(len(decoder.blocks))],
        facts=rows,
        summary=_summary(rows),
        completeness=curve,
    )


def _top1(decoder, prompts: Sequence[Sequence[int]], target: int) -> float:
    """The share of prompts whose most likely next token is ``target``."""
    device = decoder.tok_emb.weight.device
    hits = 0
    with torch.no_grad():
        for p in prompts:
            hits += int(decoder(torch.tensor([p], device=device)).logits[0, -1].argmax()) == target
    return hits / len(prompts)


def _edit_effect(decoder, encoded, base, i: int, rows: dict[Neuron, torch.Tensor]) -> dict:
    """The fact's and the other facts' mean answer probabilities with ``rows`` in place, relative to before."""
    with edited_rows(decoder, rows):
        own = answer_probs(decoder, *encoded[i])
        other = [answer_probs(decoder, *encoded[j]) for j in range(len(encoded)) if j != i]
    before_other = [base[j] for j in range(len(encoded)) if j != i]
    return dict(
        own=float((own - base[i]).mean() / base[i].mean()),
        other_facts=_mean([float((o - b).mean() / b.mean()) for o, b in zip(other, before_other, strict=True)]),
    )


def _summary(rows: Sequence[dict]) -> dict:
    """Means over the facts that have neurons (the update over those with exclusive neurons)."""
    with_neurons = [r for r in rows if r["neurons"]]
    out: dict = dict(facts=len(rows), facts_with_neurons=len(with_neurons))
    for key in ("suppress", "amplify"):
        for suffix in ("", "_random", "_other_facts"):
            out[key + suffix] = _mean([r[key + suffix] for r in with_neurons])
    only = [r for r in with_neurons if "suppress_exclusive" in r]
    out["facts_with_exclusive_neurons"] = len(only)
    for key in ("suppress_exclusive", "suppress_exclusive_other_facts"):
        out[key] = _mean([r[key] for r in only])
    for key in ("erase", "erase_random"):
        out[key] = _mean([r[key]["own"] for r in with_neurons])
        out[key + "_other_facts"] = _mean([r[key]["other_facts"] for r in with_neurons])
    updated = [r["update"] for r in rows if "update" in r]
    out["updated_facts"] = len(updated)
    for key in ("success", "new_prob_before", "new_prob_after", "old_prob_after", "other_facts_before"):
        out[f"update_{key}"] = _mean([u[key] for u in updated])
    out["update_other_facts_after"] = _mean([u["other_facts_after"] for u in updated])
    out["update_old_prob_before"] = _mean([r["prob"] for r in rows if "update" in r])
    return out


def completeness_curve(decoder, ids: Sequence[int], target: int, steps: Sequence[int]) -> list[dict]:
    """For each step count, the largest per-layer gap ``|sum_i Attr - (F(a-bar) - F(0))|`` on one prompt: the
    Riemann error, which shrinks as ``1/m``."""
    out = []
    for m in steps:
        a = integrated_gradients(decoder, ids, target, m)
        gaps = [abs(float(a.scores[i].sum()) - (a.prob - float(a.zero_prob[i]))) for i in range(len(decoder.blocks))]
        out.append(dict(steps=m, max_gap=max(gaps), max_change=max(abs(a.prob - float(z)) for z in a.zero_prob)))
    return out


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:+.1f}%"


def markdown(result: dict, title: str) -> str:
    """The report's tables: the summary (relative changes of the answer probability) and one row per fact."""
    s, st = result["summary"], result["settings"]
    lines = [
        f"# Knowledge neurons: {title}",
        "",
        f"{s['facts']} facts, integrated gradients with m = {st['steps']} steps, t = {st['share']}, "
        f"p = {st['prompt_share_used']:.2f} (asked {st['prompt_share']}); {result['mean_neurons']:.1f} neurons per "
        f"fact on average ({s['facts_with_neurons']} facts have any), per layer {result['neurons_per_layer']}. "
        f"Changes are relative to the answer's mean probability (the authors' ratio); took {result.get('seconds')} s.",
        "",
        "| intervention | the fact's answer | random neurons, same layers | other facts' answers |",
        "|---|---|---|---|",
        f"| suppress (activation x0) | {_pct(s['suppress'])} | {_pct(s['suppress_random'])} | "
        f"{_pct(s['suppress_other_facts'])} |",
        f"| amplify (activation x2) | {_pct(s['amplify'])} | {_pct(s['amplify_random'])} | "
        f"{_pct(s['amplify_other_facts'])} |",
        f"| suppress only the fact-exclusive neurons ({s.get('facts_with_exclusive_neurons', 0)} facts) | "
        f"{_pct(s.get('suppress_exclusive', float('nan')))} | | "
        f"{_pct(s.get('suppress_exclusive_other_facts', float('nan')))} |",
        f"| erase (value rows = 0) | {_pct(s['erase'])} | {_pct(s['erase_random'])} | "
        f"{_pct(s['erase_other_facts'])} (random: {_pct(s['erase_random_other_facts'])}) |",
        "",
        f"Update ({s['updated_facts']} facts, each to another fact's answer, on its exclusive neurons): the new answer "
        f"is top-1 on {_pct(s['update_success'])[1:]} of the prompts; its probability {s['update_new_prob_before']:.3f}"
        f" -> {s['update_new_prob_after']:.3f}, the old answer's {s['update_old_prob_before']:.3f} -> "
        f"{s['update_old_prob_after']:.3f}, the other facts' answers {s['update_other_facts_before']:.3f} -> "
        f"{s['update_other_facts_after']:.3f}.",
        "",
        "| fact | answer | p(answer) | top-1 | neurons (layer:index) | suppress | random | amplify | random | erase "
        "| update to | new top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["facts"]:
        u = r.get("update", {})
        shown = [f"{layer}:{i}" for layer, i in r["neurons"][:8]]
        more = len(r["neurons"]) - len(shown)
        neurons = (" ".join(shown) + (f" (+{more})" if more > 0 else "")) or "none"
        lines.append(
            f"| {r['name']} | `{r['answer'].strip()}` | {r['prob']:.3f} | {r['top1']:.2f} | {neurons} | "
            f"{_pct(r.get('suppress', float('nan')))} | {_pct(r.get('suppress_random', float('nan')))} | "
            f"{_pct(r.get('amplify', float('nan')))} | {_pct(r.get('amplify_random', float('nan')))} | "
            f"{_pct(r['erase']['own']) if 'erase' in r else 'n/a'} | "
            + (f"`{u['to'].strip()}` | {u['success']:.2f} |" if u else "no exclusive neurons | |")
        )
    gaps = ", ".join(f"m={c['steps']}: {c['max_gap']:.2g}" for c in result["completeness"])
    lines += ["", f"Completeness (largest per-layer |sum Attr - (F(x) - F(0))| on the first prompt): {gaps}.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    """Four panels: suppress / amplify / erase effects against random neurons, neurons per layer, the update, and
    the integrated gradients' completeness gap against m."""
    from metalm.io import pyplot

    plt = pyplot()

    s = result["summary"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    ops = ("suppress", "amplify", "erase")
    x = range(len(ops))
    for k, (suffix, label) in enumerate((("", "knowledge neurons"), ("_random", "random, same layers"))):
        axes[0].bar([i + 0.38 * k for i in x], [100 * s[op + suffix] for op in ops], 0.38, label=label)
    axes[0].set_xticks([i + 0.19 for i in x], ops)
    axes[0].axhline(0, color="black", lw=0.5)
    axes[0].set_ylabel("change of the answer's probability (%)")
    axes[0].legend(fontsize=8)
    axes[1].bar(range(result["n_layers"]), result["neurons_per_layer"])
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("knowledge neurons (all facts)")
    labels = ("new answer", "old answer", "other facts")
    before = (s["update_new_prob_before"], s["update_old_prob_before"], s["update_other_facts_before"])
    after = (s["update_new_prob_after"], s["update_old_prob_after"], s["update_other_facts_after"])
    axes[2].bar([i - 0.19 for i in range(3)], before, 0.38, label="before")
    axes[2].bar([i + 0.19 for i in range(3)], after, 0.38, label="after update")
    axes[2].set_xticks(range(3), labels)
    axes[2].set_ylabel("mean probability")
    axes[2].legend(fontsize=8)
    curve = result["completeness"]
    axes[3].loglog([c["steps"] for c in curve], [max(c["max_gap"], 1e-12) for c in curve], "o-")
    axes[3].set_xlabel("Riemann steps m")
    axes[3].set_ylabel("|sum Attr - (F(x) - F(0))|")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_results(result: dict, out_dir: str | Path, name: str, title: str) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``out_dir`` (written atomically); their paths."""
    from metalm.io import atomic_write, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    atomic_write_text(paths[0], json.dumps(result, indent=1) + "\n")
    atomic_write_text(paths[1], markdown(result, title))
    atomic_write(paths[2], lambda tmp: plot(result, tmp, title))
    return paths
