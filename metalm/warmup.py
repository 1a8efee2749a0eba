"""Supervised warm-up of an encoder on per-example class labels, before it docks into the decoder.

MetaLM docks *pretrained* encoders; where none exists (the bundled world has no CLIP), a short supervised warm-up
stands in for one: a from-scratch ViT trained only through the caption loss learns to see far more slowly than the
decoder learns the caption templates, and the captions then ignore the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from encoders.base import IMAGE_TEXT


def image_vectors(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, num_tokens, d)`` vectors of images ``pixels`` from an image encoder: a joint vision-language one reads
    them with an empty text prefix and returns its image vectors first."""
    if encoder.reads == IMAGE_TEXT:
        return encoder(encoder.image_inputs(pixels)).hidden_states[:, : encoder.num_tokens]
    return encoder({"pixel_values": pixels}).hidden_states


def warm_up_on_labels(
    encoder: torch.nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    sizes: list[int],
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> list[float]:
    """Train image encoder ``encoder`` (with a linear head over its flattened vectors) to predict ``labels[:, k]`` among
    ``sizes[k]`` classes for every label ``k``; the last tenth of the examples is held out. Returns the held-out
    accuracy per label. The encoder's ``requires_grad`` flags are restored afterwards."""
    head = torch.nn.Linear(encoder.output_dim * encoder.num_tokens, sum(sizes))
    params = list(encoder.parameters()) + list(head.parameters())
    was = [p.requires_grad for p in encoder.parameters()]
    encoder.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    held = max(1, len(pixels) // 10)
    gen = torch.Generator().manual_seed(seed)

    def logits(x: torch.Tensor) -> list[torch.Tensor]:
        return head(image_vectors(encoder, x).flatten(1)).split(sizes, dim=-1)

    for _ in range(steps):
        idx = torch.randint(0, len(pixels) - held, (batch_size,), generator=gen)
        loss = sum(F.cross_entropy(out, labels[idx, k]) for k, out in enumerate(logits(pixels[idx])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p, flag in zip(encoder.parameters(), was, strict=True):
        p.requires_grad_(flag)
    with torch.no_grad():
        outs = logits(pixels[-held:])
    return [float((o.argmax(-1) == labels[-held:, k]).float().mean()) for k, o in enumerate(outs)]
