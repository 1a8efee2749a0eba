"""The causal interface decoder: a compact pre-norm transformer with GPT-2 and Llama options and a KV cache.

Inputs are token ids or ready-made embeddings (MetaLM docks encoder vectors into them); positional
information is added inside the decoder, so docked positions keep their decoder positional encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from metalm.attention import attend, resolve_backend
from metalm.config import DecoderConfig, eager_checks

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None  # (B, T, vocab); None when compute_logits=False
    hidden_states: torch.Tensor  # (B, T, dim), after the final norm
    past_key_values: KVCache | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
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
    """cos and sin ``(B, 1, T, head_dim)`` for rotary embeddings in the rotate-half layout Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, qkv_out, bias=cfg.attn_bias)
        self.proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.attn_bias)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1
        )
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        backend = resolve_backend(self.cfg.attention, x.device)
        y = attend(q, k, v, backend, key_mask, self.cfg.momentum_eta)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.approximate = cfg.gelu_approximate
        self.fc = nn.Linear(cfg.dim, cfg.mlp_hidden * (2 if self.swiglu else 1), bias=cfg.mlp_bias)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(h, approximate=self.approximate))


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
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.activation_checkpointing = False  # recompute each block in backward to save memory (training only)
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
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        compute_logits: bool = True,
    ) -> DecoderOutput:
        """Logits for every position. ``attention_mask`` ``(B, past + T)`` marks real tokens (1) and padding (0);
        without ``position_ids`` positions count real tokens only, so left padding works as in transformers.
        ``compute_logits=False`` skips the output projection (for the fused loss in ``metalm.loss``)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) or inputs_embeds (B, T, dim)")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"decoder inputs have shape {tuple(x.shape)}; expected (batch, seq, {self.cfg.dim})")
        b, t, _ = x.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        if attention_mask is not None and attention_mask.shape != (b, past_len + t):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({b}, {past_len + t}) "
                "covering cached and new positions"
            )
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
            else:
                position_ids = torch.arange(past_len, past_len + t, device=x.device)[None].expand(b, t)
        if self.cfg.positions != "rotary" and eager_checks() and int(position_ids.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} is past decoder.max_seq_len = {self.cfg.max_seq_len}")
        rotary = None
        if self.cfg.positions == "learned":
            x = x + self.pos_emb(position_ids)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.pos_table[position_ids].to(x.dtype)
        else:
            rotary = rotary_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.drop(x)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        presents: KVCache = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and not use_cache
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values else None
            if recompute:
                x, present = checkpoint(block, x, rotary, key_mask, past, use_reentrant=False)
            else:
                x, present = block(x, rotary, key_mask, past)
            presents.append(present)
        x = self.norm(x)
        logits = self.lm_head(x) if compute_logits else None
        return DecoderOutput(logits, x, presents if use_cache else None)

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
