"""The causal interface decoder: a compact pre-norm transformer with GPT-2 and Llama options and a KV cache.

Inputs are token ids or ready-made embeddings (MetaLM docks encoder vectors into them); positional
information is added inside the decoder, so docked positions keep their decoder positional encoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from metalm.attention import attend, resolve_backend
from metalm.config import DecoderConfig, eager_checks

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # or a PreallocatedKVCache (below), which decoding uses


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None when compute_logits=False
    hidden_states: torch.Tensor  # (B, T, dim), after the final norm
    past_key_values: KVCache | PreallocatedKVCache | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op instead of seven: a decoding step is mostly per-op overhead
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()  # lower precisions normalise in float32, then scale, as Llama does
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(cfg: DecoderConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table ``(n_positions, dim)``: first half sines, second half cosines."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * freqs[None]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half))


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin ``(B, T, 1, head_dim)`` for rotary embeddings in the rotate-half layout Llama uses; the
    sin's first half is negated so that ``apply_rotary`` rotates with one ``roll`` instead of a split and a cat."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)[:, :, None]
    sin = emb.sin()
    sin[..., : head_dim // 2].neg_()
    return emb.cos(), sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, T, heads, head_dim)``: ``x * cos + rotate_half(x) * sin``, where ``rotate_half(x)`` is
    ``[-x2, x1]``, written as ``roll(x) * signed_sin`` (the same products, so the same rounding)."""
    xf = x.float()  # x itself in fp32
    out = xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * signed_sin
    return out if x.dtype == torch.float32 else out.to(x.dtype)


class RotaryTable:
    """cos and signed sin for positions ``0 .. n - 1``, computed once and indexed each forward (a decoding step
    would otherwise recompute them for its one position); grown when a longer sequence arrives."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim, self.theta = head_dim, theta
        self.cos = self.sin = torch.empty(0, 1, head_dim)

    def __call__(self, positions: torch.Tensor, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for ``positions`` ``(B, T)``, all of which are below ``needed``."""
        if self.cos.shape[0] < needed or self.cos.device != positions.device:
            n = max(needed, 2 * self.cos.shape[0])
            cos, sin = rotary_cos_sin(torch.arange(n, device=positions.device)[None], self.head_dim, self.theta)
            self.cos, self.sin = cos[0], sin[0]
        return self.cos[positions], self.sin[positions]


class PreallocatedKVCache:
    """Keys and values of every layer in buffers allocated once for ``capacity`` positions and written in place,
    so a decoding step appends its one position instead of copying the whole cache (as a list of tensors grown by
    ``torch.cat`` does). Pass it as ``past_key_values``; the decoder advances ``length`` after each forward."""

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # allocated by the first append, in k's dtype
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` ``(B, Hkv, T, D)`` after the cached positions; return all of the layer's keys, values."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; {end} are needed")
        if self.keys[layer] is None:
            b, h, _, d = k.shape
            self.keys[layer] = k.new_empty(b, h, self.capacity, d)
            self.values[layer] = v.new_empty(b, h, self.capacity, d)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class Linear(nn.Linear):
    """``nn.Linear`` that can multiply by an input-major ``(in, out)`` copy of its weight instead: on CPU a
    matrix-vector product streams that layout almost twice as fast (``bench/smollm2.py``), and a decoding step is
    matrix-vector products. ``Decoder.decoding()`` sets the copy; the parameter and its state-dict entry are as in
    ``nn.Linear``."""

    input_major: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_major is None:
            return F.linear(x, self.weight, self.bias)
        y = x @ self.input_major
        return y if self.bias is None else y + self.bias


class Attention(nn.Module):
    probe = None  # a metalm.probes.LayerProbe while a probe is open: attention is then computed explicitly

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.qkv = Linear(cfg.dim, qkv_out, bias=cfg.attn_bias)
        self.proj = Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.attn_bias)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | tuple[PreallocatedKVCache, int] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = x.shape
        h, hkv = self.n_heads, self.n_kv_heads
        heads = self.qkv(x).view(b, t, h + 2 * hkv, self.head_dim)
        if rotary is not None:  # queries and keys rotated together: one set of element-wise ops, not two
            qk = apply_rotary(heads[:, :, : h + hkv], *rotary)
            q, k = qk[:, :, :h], qk[:, :, h:]
        else:
            q, k = heads[:, :, :h], heads[:, :, h : h + hkv]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), heads[:, :, h + hkv :].transpose(1, 2)
        if past is not None and isinstance(past[0], PreallocatedKVCache):
            k, v = past[0].append(past[1], k, v)
        elif past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        backend = resolve_backend(self.cfg.attention, x.device)
        if self.probe is None:
            y = attend(q, k, v, backend, key_mask, self.cfg.momentum_eta)
            return self.proj(y.transpose(1, 2).reshape(b, t, h * self.head_dim)), (k, v)
        y = self.probe.attention(self, q, k, v, key_mask).transpose(1, 2).reshape(b, t, h * self.head_dim)
        self.probe.keep("attn_heads", y, 1)
        out = self.proj(y)
        self.probe.keep("attn_output", out, 1)
        return out, (k, v)


class MLP(nn.Module):
    probe = None  # a metalm.probes.LayerProbe while a probe is open: sees (and may edit) the activations

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.approximate = cfg.gelu_approximate
        self.fc = Linear(cfg.dim, cfg.mlp_hidden * (2 if self.swiglu else 1), bias=cfg.mlp_bias)
        self.proj = Linear(cfg.mlp_hidden, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            act = F.silu(gate) * up
        else:
            act = F.gelu(h, approximate=self.approximate)
        if self.probe is not None:
            act = self.probe.mlp_activation(act)
        return self.proj(act)


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg, cfg.dim)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rotary, key_mask, past):
        a, present = self.attn(self.norm1(x), rotary, key_mask, past)
        if self.dropout.p == 0 or not self.training:  # skip the two no-op calls: decoding is per-op bound
            x = x + a
            return x + self.mlp(self.norm2(x)), present
        x = x + self.dropout(a)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x, present


class Decoder(nn.Module):
    """Causal transformer LM. ``Decoder.from_hf(dir)`` loads GPT-2 / Llama checkpoints saved by transformers."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
        elif cfg.positions == "sinusoidal":
            # scaled to the token embeddings' size (sin/cos have std 1/sqrt(2)); unscaled they drown the tokens and
            # the docked vectors, which then grow large and image-independent (seen on the bundled world)
            table = sinusoidal_table(cfg.max_seq_len, cfg.dim) * (cfg.init_std * math.sqrt(2))
            self.register_buffer("pos_table", table, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.dim)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.activation_checkpointing = False  # recompute each block in backward to save memory (training only)
        self.rotary_table = RotaryTable(cfg.head_dim, cfg.rope_theta) if cfg.positions == "rotary" else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections, scaled as in GPT-2
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, T, dim)``, before positions are added."""
        bad = eager_checks() and input_ids.numel() > 0
        if bad and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"input_ids hold values in [{int(input_ids.min())}, {int(input_ids.max())}]; "
                f"expected 0 .. {self.cfg.vocab_size - 1} (vocab_size)"
            )
        return self.tok_emb(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | PreallocatedKVCache | None = None,
        use_cache: bool = False,
        compute_logits: bool = True,
        logits_to_keep: int = 0,
    ) -> DecoderOutput:
        """Logits for every position. ``attention_mask`` ``(B, past + T)`` marks real tokens (1) and padding (0);
        without ``position_ids`` positions count real tokens only, so left padding works as in transformers.
        ``compute_logits=False`` skips the output projection (for the fused loss in ``metalm.loss``);
        ``logits_to_keep=n`` computes logits for the last ``n`` positions only (decoding needs one).
        ``past_key_values`` is a list of per-layer ``(keys, values)`` (a new list is returned) or a
        ``PreallocatedKVCache`` (written in place and returned)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) or inputs_embeds (B, T, dim)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"decoder inputs have shape {tuple(x.shape)}; expected (batch, seq, {self.cfg.dim})")
        b, t, _ = x.shape
        preallocated = isinstance(past_key_values, PreallocatedKVCache)
        if preallocated:
            past_len = past_key_values.length
        else:
            past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if attention_mask is not None and attention_mask.shape != (b, past_len + t):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({b}, {past_len + t}) "
                "covering cached and new positions"
            )
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the causal fast paths, and positions are 0, 1, ... as below
        rotary = None
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
            else:
                position_ids = torch.arange(past_len, past_len + t, device=x.device)[None].expand(b, t)
            if self.rotary_table is not None:
                rotary = self.rotary_table(position_ids, past_len + t)
        if self.cfg.positions != "rotary" and eager_checks() and int(position_ids.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} is past decoder.max_seq_len = {self.cfg.max_seq_len}")
        if self.cfg.positions == "learned":
            x = x + self.pos_emb(position_ids)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.pos_table[position_ids].to(x.dtype)
        elif rotary is None:
            rotary = rotary_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.drop(x)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        presents: KVCache = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and not use_cache
        for i, block in enumerate(self.blocks):
            if preallocated:
                past = (past_key_values, i)
            else:
                past = past_key_values[i] if past_key_values else None
            if recompute:
                x, present = checkpoint(block, x, rotary, key_mask, past, use_reentrant=False)
            else:
                x, present = block(x, rotary, key_mask, past)
            presents.append(present)
        x = self.norm(x)
        logits = None
        if compute_logits:
            logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        if preallocated:
            past_key_values.length += t
            return DecoderOutput(logits, x, past_key_values if use_cache else None)
        return DecoderOutput(logits, x, presents if use_cache else None)

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Inside, on CPU without gradients, the linear layers multiply by input-major copies of their weights
        (same values; the products round differently only within fp32 rounding). The copies are kept, costing
        the weights' memory once more, and remade when a weight has changed since (an optimizer step)."""
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        if self.lm_head.weight.device.type != "cpu" or torch.is_grad_enabled():
            yield
            return
        for m in linears:
            w = m.weight
            key = (w.data_ptr(), w._version, w.dtype)
            if getattr(m, "input_major_key", None) != key:
                m.input_major_copy, m.input_major_key = w.detach().t().contiguous(), key
            m.input_major = m.input_major_copy
        try:
            yield
        finally:
            for m in linears:
                m.input_major = None

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if hasattr(self, "pos_emb"):
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B style: 6N + 12 L H Q T."""
        n = self.num_params(exclude_embeddings=True) + self.lm_head.weight.numel()
        c = self.cfg
        return 6 * n + 12 * c.n_layers * c.n_heads * c.head_dim * seq_len

    @classmethod
    def from_hf(cls, path: str) -> Decoder:
        """Load a GPT-2 or Llama-family checkpoint that transformers saved with ``save_pretrained``."""
        from metalm.hf import load_decoder  # here, not at the top: metalm.hf imports Decoder

        return load_decoder(path)

    def to_hf(self, path: str) -> None:
        """Write this decoder as a transformers GPT-2 or Llama checkpoint (config.json + model.safetensors)."""
        from metalm.hf import save_decoder  # (metalm.hf imports Decoder)

        save_decoder(self, path)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """Greedy, sampled or beam-search continuation; see ``metalm.generation.generate``."""
        from metalm.generation import generate  # (metalm.generation imports Decoder)

        return generate(self, input_ids, **kwargs)
