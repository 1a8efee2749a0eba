"""Connectors project encoder vectors into the decoder's embedding space.

``linear`` is the paper's choice for language, ``mlp`` (3 layers) for vision; ``resampler`` turns any number of
vectors into a fixed number of learned-query outputs, so an image costs fewer decoder positions.
"""

from __future__ import annotations

import torch
from torch import nn

from metalm.config import ConnectorConfig


class Connector(nn.Module):
    """Maps ``(N, L, d_enc)`` with mask ``(N, L)`` to ``(N, L_out, d_dec)`` with mask ``(N, L_out)``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LinearConnector(Connector):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x, mask):
        return self.proj(x), mask


class MLPConnector(Connector):
    def __init__(self, d_in: int, d_out: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(d_in if i == 0 else d_out, d_out))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.net = nn.Sequential(*mods)

    def forward(self, x, mask):
        return self.net(x), mask


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=~mask, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class ResamplerConnector(Connector):
    """Learned queries cross-attend to the encoder vectors (Perceiver-resampler style)."""

    def __init__(self, d_in: int, d_out: int, queries: int, heads: int, depth: int) -> None:
        super().__init__()
        if d_out % heads:
            raise ValueError(f"resampler: decoder dim {d_out} is not divisible by connector.heads = {heads}")
        self.proj_in = nn.Linear(d_in, d_out)
        self.queries = nn.Parameter(torch.randn(queries, d_out) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(d_out, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x, mask):
        kv = self.proj_in(x)
        q = self.queries[None].expand(x.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, kv, mask)
        out = self.norm(q)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


def build_connector(cfg: ConnectorConfig, d_in: int, d_out: int) -> Connector:
    if cfg.kind == "linear":
        return LinearConnector(d_in, d_out)
    if cfg.kind == "mlp":
        return MLPConnector(d_in, d_out, cfg.layers)
    return ResamplerConnector(d_in, d_out, cfg.queries, cfg.heads, cfg.depth)
