"""Next-token cross-entropy, with a fused chunked path that never holds the full logits.

The output projection and cross-entropy dominate a small decoder's step when the vocabulary is large (50k x 384
is most of a GPT-2-small-width model's FLOPs, and the ``(tokens, vocab)`` logits, their softmax and their gradient
are three large buffers). ``fused_linear_cross_entropy`` computes the loss and both gradients chunk by chunk in
the forward pass, only for rows that have a target, so ignored positions (docked spans, padding) cost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 25  # logits elements per chunk: 128 MiB in fp32


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Targets for each position: ``labels`` aligned to the inputs, moved one to the left (last is ignored)."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy of ``logits`` ``(B, T, V)`` against input-aligned ``labels``, and the number
    of counted targets. The labels are shifted, not the logits, so no logits-sized slice is copied."""
    targets = shift_labels(labels).reshape(-1)
    n = int((targets != IGNORE_INDEX).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / max(n, 1), n


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = (targets != IGNORE_INDEX).nonzero()[:, 0]
        n = max(len(rows), 1)
        h_all, t_all = hidden.index_select(0, rows), targets.index_select(0, rows)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, len(rows), chunk):
            h, t = h_all[start : start + chunk], t_all[start : start + chunk]
            logits = (h @ weight.t().to(h.dtype)).float()
            lse = logits.logsumexp(-1)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            if need_h or need_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                g = probs.div_(n).to(h.dtype)
                if need_h:
                    # under autocast the matmul comes out in the autocast dtype; grad_h keeps the hidden's
                    grad_h.index_copy_(0, rows[start : start + chunk], (g @ weight.to(h.dtype)).to(grad_h.dtype))
                if need_w:
                    grad_w.addmm_(g.t().float(), h.float())
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The same value and gradients as ``causal_lm_loss(hidden @ weight.T, labels)``, computed in chunks.

    ``hidden`` ``(B, T, d)`` are the final hidden states, ``weight`` ``(V, d)`` the output projection.
    """
    targets = shift_labels(labels).reshape(-1)
    n = int((targets != IGNORE_INDEX).sum())
    if n and (int(targets.max()) >= weight.shape[0] or int(targets[targets != IGNORE_INDEX].min()) < 0):
        raise ValueError(f"labels hold ids outside 0 .. {weight.shape[0] - 1} (vocab_size) or {IGNORE_INDEX}")
    loss = _FusedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets)
    return loss, n
