"""Attention backends behind one function.

``attend(q, k, v, backend, key_mask=None)`` takes queries ``(B, H, Tq, D)`` and keys/values
``(B, Hkv, Tk, D)`` with ``Tk >= Tq``: the queries are the last ``Tq`` positions, so a query at row ``i`` sees
keys ``0 .. Tk - Tq + i`` (causal, bottom-right aligned, which is what a KV cache needs). ``key_mask``
``(B, Tk)`` is True for real keys and False for padding. Backends: ``eager`` (the reference), ``sdpa`` (PyTorch's
fused kernels), ``xformers`` (memory-efficient attention, CUDA only, imported lazily) and ``momentum``
(MoAttn: SDPA plus an exponential moving average of earlier values).
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F


def resolve_backend(name: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend: xformers on CUDA when its kernels run there, else sdpa."""
    if name != "auto":
        return name
    return "xformers" if device.type == "cuda" and xformers_runs() else "sdpa"


@torch.compiler.assume_constant_result
@functools.cache
def xformers_runs() -> bool:
    """Whether xformers imports and its kernels run on the current GPU, tried once: a build for another torch
    imports with a warning but has no kernels, and ``auto`` must not pick it then."""
    try:
        import xformers.ops as xops

        q = torch.zeros(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except Exception as err:  # ImportError, or whatever a missing or mismatched kernel raises
        message = f"attention 'auto': xformers cannot run here ({type(err).__name__}: {err}); using sdpa"
        warnings.warn(message, stacklevel=2)
        return False
    return True


def allowed_mask(tq: int, tk: int, key_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean ``(B or 1, 1, Tq, Tk)`` mask of what each query may attend to.

    A query always sees its own position, so a padding query never has an empty row (which would give NaN).
    """
    offset = tk - tq
    rows = torch.arange(tq, device=device)[:, None] + offset
    cols = torch.arange(tk, device=device)[None, :]
    causal = cols <= rows
    if key_mask is None:
        return causal[None, None]
    return (causal[None] & key_mask[:, None, :].bool() | (cols == rows)[None])[:, None]


def _expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    if x.shape[1] == n_heads:
        return x
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Reference implementation: softmax(q k^T / sqrt(d) + mask) v in float32."""
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = allowed_mask(q.shape[2], k.shape[2], key_mask, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention; uses the causal fast path when no explicit mask is needed."""
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if key_mask is None and tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if key_mask is None and tq == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    mask = allowed_mask(tq, tk, key_mask, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """xformers ``memory_efficient_attention``; CUDA only, so CPU tensors are refused with a clear message."""
    if q.device.type != "cuda":
        raise RuntimeError(
            "attention backend 'xformers' has no CPU kernels; use 'sdpa' (or 'auto', which picks sdpa on CPU)"
        )
    try:
        import xformers.ops as xops
    except ImportError as err:
        raise RuntimeError("attention backend 'xformers' needs the xformers package: pip install xformers") from err
    return xformers_call(xops, q, k, v, key_mask)


def xformers_call(xops, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None):
    """Translate our ``(B, H, T, D)`` layout and masks to xformers' ``(B, T, H, D)`` and attention-bias objects."""
    from xformers.ops.fmha import attn_bias as xbias

    tq, tk = q.shape[2], k.shape[2]
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    if key_mask is None:
        bias = xbias.LowerTriangularMask() if tq == tk else xbias.LowerTriangularFromBottomRightMask()
    else:
        allowed = allowed_mask(tq, tk, key_mask, q.device).expand(q.shape[0], q.shape[1], tq, tk)
        # xformers wants the bias's last dim padded to a multiple of 8 in memory; slicing keeps that layout
        padded = -(-tk // 8) * 8
        bias = torch.zeros(q.shape[0], q.shape[1], tq, padded, dtype=q.dtype, device=q.device)[..., :tk]
        bias.masked_fill_(~allowed, float("-inf"))
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


def momentum_term(v: torch.Tensor, tq: int, eta: float, key_mask: torch.Tensor | None) -> torch.Tensor:
    """MoAttn's momentum ``m_t = eta * (m_{t-1} + v_{t-1})``, i.e. ``m_t = sum_{j<t} eta^(t-j) v_j``, per head.

    Returned for the last ``tq`` positions, shape ``(B, Hkv, Tq, D)``. Padding keys contribute nothing and are not
    counted in ``t - j`` (the distance in real tokens), so padding anywhere, e.g. between a cached shared prefix
    and a left-padded context, gives what the unpadded sequence gives."""
    tk = v.shape[2]
    index = torch.arange(tk, device=v.device)
    earlier = index[None, :] < index[tk - tq :, None]  # (Tq, Tk): key j strictly before query t
    if key_mask is None:
        position = index.float()[None]  # (1, Tk)
    else:
        position = key_mask.float().cumsum(-1)  # (B, Tk): real tokens up to and including each key
    dist = position[:, tk - tq :, None] - position[:, None, :]  # (B or 1, Tq, Tk)
    weights = torch.where(earlier[None], torch.exp(dist * math.log(eta)), torch.zeros((), device=v.device))
    if key_mask is not None:
        weights = weights * key_mask[:, None, :].float()
    return (weights[:, None] @ v.float()).to(v.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str,
    key_mask: torch.Tensor | None = None,
    momentum_eta: float = 0.9,
) -> torch.Tensor:
    """Causal attention over ``(B, H, T, D)`` tensors with the named backend; returns ``(B, H, Tq, D)``."""
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if backend == "sdpa":
        return sdpa_attention(q, k, v, key_mask)
    if backend == "eager":
        return eager_attention(q, k, v, key_mask)
    if backend == "xformers":
        return xformers_attention(q, k, v, key_mask)
    if backend == "momentum":
        out = sdpa_attention(q, k, v, key_mask)
        return out + _expand_kv(momentum_term(v, q.shape[2], momentum_eta, key_mask), q.shape[1])
    raise ValueError(f"unknown attention backend {backend!r}: expected sdpa, eager, xformers, momentum or auto")
