"""Looking inside the decoder: per-layer attention weights, attention outputs, feed-forward activations and hidden
states of chosen positions, read (and, for attribution and knowledge-neuron studies, edited) during an ordinary
forward.

    with probe(decoder, positions=[-1]) as seen:
        decoder(input_ids)
    seen.attn_weights[layer]  # (B, heads, P, keys): softmax weights of the P probed query positions
    seen.attn_scores[layer]   # (B, heads, P, keys): the scores q.k / sqrt(d) before the softmax (-inf: masked)
    seen.attn_output[layer]   # (B, P, dim): the attention sublayer's output (after its output projection)
    seen.attn_heads[layer]    # (B, P, heads * head_dim): the heads' weighted values, before the projection
    seen.mlp_act[layer]       # (B, P, mlp_hidden): the feed-forward activations (silu(gate) * up, or gelu(fc))
    seen.hidden[layer]        # (B, P, dim): the residual stream after block ``layer``; ``seen.embeddings`` before

The fast path is untouched: an attention or MLP module computes differently only while a probe is attached (one
``is None`` test otherwise). While attached, attention is computed explicitly (weights in float32, as the eager
backend does, plus MoAttn's momentum when the decoder uses it), so a probed forward equals a plain one within
float rounding (tests/test_probes.py). ``edit_attn(layer, weights)`` and ``edit_mlp(layer, act)`` may return
replacements for the weights of the probed rows' full attention (all query rows, ``(B, heads, Tq, Tk)``) or the
activations (``(B, Tq, mlp_hidden)``); gradients flow through what they return (integrated gradients over
attention maps, scaling knowledge neurons). Recorded tensors keep their graph when the forward tracks gradients;
``detach=True`` (the default) stores detached copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from metalm.attention import _expand_kv, allowed_mask, momentum_term, resolve_backend

RECORDABLE = ("attn_weights", "attn_scores", "attn_heads", "attn_output", "mlp_act", "hidden")
Edit = Callable[[int, torch.Tensor], torch.Tensor | None]


@dataclass
class Seen:
    """What a probed forward recorded: per-layer lists (``None`` for a layer not probed), appended to on each
    forward inside the probe (so decoding step by step extends ``calls``)."""

    attn_weights: list[torch.Tensor | None] = field(default_factory=list)
    attn_scores: list[torch.Tensor | None] = field(default_factory=list)
    attn_heads: list[torch.Tensor | None] = field(default_factory=list)
    attn_output: list[torch.Tensor | None] = field(default_factory=list)
    mlp_act: list[torch.Tensor | None] = field(default_factory=list)
    hidden: list[torch.Tensor | None] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    calls: int = 0


class LayerProbe:
    """Attached to one block's attention and MLP while a ``probe`` is open: selects rows, records, edits."""

    def __init__(self, layer: int, owner: _Probe) -> None:
        self.layer, self.owner = layer, owner

    def rows(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        positions = self.owner.positions
        if positions is None:
            return x
        t = x.shape[dim]
        index = torch.tensor([p % t for p in positions if -t <= p < t], device=x.device)
        return x.index_select(dim, index)

    def keep(self, name: str, value: torch.Tensor, dim: int) -> None:
        if name in self.owner.record:
            value = self.rows(value, dim)
            getattr(self.owner.seen, name)[self.layer] = value.detach() if self.owner.detach else value

    def attention(self, attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask) -> torch.Tensor:
        """Explicit attention ``(B, H, Tq, D)`` with the weights exposed; matches ``metalm.attention.attend``."""
        if key_mask is not None and bool(key_mask.all()):
            key_mask = None
        h = q.shape[1]
        ke, ve = _expand_kv(k, h), _expand_kv(v, h)
        scores = (q.float() @ ke.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
        mask = allowed_mask(q.shape[2], k.shape[2], key_mask, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        self.keep("attn_scores", scores, 2)
        weights = scores.softmax(-1)
        if self.owner.edit_attn is not None:
            edited = self.owner.edit_attn(self.layer, weights)
            weights = weights if edited is None else edited
        self.keep("attn_weights", weights, 2)
        out = (weights @ ve.float()).to(q.dtype)
        if resolve_backend(attn.cfg.attention, q.device) == "momentum":
            out = out + _expand_kv(momentum_term(v, q.shape[2], attn.cfg.momentum_eta, key_mask), h)
        return out

    def mlp_activation(self, act: torch.Tensor) -> torch.Tensor:
        if self.owner.edit_mlp is not None:
            edited = self.owner.edit_mlp(self.layer, act)
            act = act if edited is None else edited
        self.keep("mlp_act", act, 1)
        return act


class _Probe:
    def __init__(self, n_layers, positions, record, detach, edit_attn, edit_mlp) -> None:
        self.positions, self.record, self.detach = positions, record, detach
        self.edit_attn, self.edit_mlp = edit_attn, edit_mlp
        self.seen = Seen()
        self.n_layers = n_layers

    def start_call(self) -> None:
        """Each forward overwrites the per-layer slots (``calls`` counts forwards)."""
        for name in RECORDABLE:
            setattr(self.seen, name, [None] * self.n_layers)
        self.seen.calls += 1


@contextmanager
def probe(
    decoder,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    record: Sequence[str] = RECORDABLE,
    detach: bool = True,
    edit_attn: Edit | None = None,
    edit_mlp: Edit | None = None,
) -> Iterator[Seen]:
    """Record ``record`` (a subset of ``RECORDABLE``) at query ``positions`` (indices into each forward's new
    positions, negative from the end; ``None`` for all) of ``layers`` (``None`` for all) during the forwards run
    inside; ``edit_attn`` / ``edit_mlp`` may replace attention weights / feed-forward activations. ``decoder`` is a
    ``metalm.Decoder`` (a MetaLM's ``.decoder``). The seen tensors are those of the last forward inside."""
    unknown = sorted(set(record) - set(RECORDABLE))
    if unknown:
        raise ValueError(f"probe record={unknown}: expected names among {RECORDABLE}")
    n = len(decoder.blocks)
    chosen = range(n) if layers is None else list(layers)
    bad = [i for i in chosen if not -n <= i < n]
    if bad:
        raise ValueError(f"probe layers {bad}: the decoder has {n} layers")
    owner = _Probe(n, list(positions) if positions is not None else None, set(record), detach, edit_attn, edit_mlp)
    hooks = [decoder.register_forward_pre_hook(lambda module, args, kwargs: owner.start_call(), with_kwargs=True)]
    if "hidden" in owner.record:

        def keep_embeddings(module, args, output):
            rows = LayerProbe(0, owner).rows(output, 1)
            owner.seen.embeddings = rows.detach() if detach else rows

        hooks.append(decoder.drop.register_forward_hook(keep_embeddings))
    for i in chosen:
        i %= n
        block = decoder.blocks[i]
        layer = LayerProbe(i, owner)
        block.attn.probe = block.mlp.probe = layer
        if "hidden" in owner.record:
            hooks.append(block.register_forward_hook(lambda m, a, out, layer=layer: layer.keep("hidden", out[0], 1)))
    try:
        yield owner.seen
    finally:
        for hook in hooks:
            hook.remove()
        for block in decoder.blocks:
            block.attn.probe = block.mlp.probe = None
