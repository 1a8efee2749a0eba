"""Image encoders: the per-token hidden states of open_clip and timm vision transformers.

Both return every token after the tower's final norm (class/prefix tokens optional), drop the pooling heads
they never use (so no parameter is left without a gradient), and load weights only from local files.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import open_clip
import timm
import torch
from open_clip.factory import load_state_dict as _open_clip_state_dict
from open_clip.transformer import VisionTransformer as _OpenClipViT
from torch import nn

from .base import PIXELS, Encoder, EncoderOutput

# The text tower open_clip builds alongside the image tower is thrown away: build a minimal one instead of a
# 60M+ parameter transformer (or a Hugging Face model whose config would have to be downloaded).
_STUB_TEXT_CFG = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}

Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint file not found: {path}")


def _all_real(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def _has_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


class OpenClipVision(Encoder):
    """The image tower of an open_clip ViT: class token (optional) + patch tokens after ``ln_post``."""

    reads = PIXELS

    def __init__(self, model_name: str, checkpoint: str | None = None, include_cls: bool = True, **model_kwargs: Any):
        """``model_kwargs`` go to ``open_clip.create_model`` (e.g. ``vision_cfg``, ``embed_dim``, which replace the
        named config's entries); ``checkpoint`` is a local full-CLIP or image-tower state dict."""
        super().__init__()
        if checkpoint is not None:
            _require_file(checkpoint, "open_clip")
        clip = open_clip.create_model(
            model_name,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            device=torch.get_default_device(),
            **{**model_kwargs, "text_cfg": dict(_STUB_TEXT_CFG)},
        )
        visual = clip.visual
        if not isinstance(visual, _OpenClipViT):
            raise ValueError(
                f"open_clip model {model_name!r} has a {type(visual).__name__} image tower; OpenClipVision needs "
                "open_clip's own VisionTransformer (use TimmVision for timm towers)"
            )
        if visual.attn_pool is not None:
            raise ValueError(
                f"open_clip model {model_name!r} uses attentional pooling (CoCa): its tokens are pooler queries, "
                "not patch states; not supported"
            )
        if checkpoint is not None:
            _load_open_clip_visual(visual, checkpoint)
        visual.proj = None  # the contrastive projection acts on the pooled vector only
        self.visual = visual
        self.model_name = model_name
        self.include_cls = include_cls
        self.model_kwargs = copy.deepcopy(model_kwargs)
        self.output_dim = visual.transformer.width
        self.image_size: tuple[int, int] = tuple(visual.image_size)
        grid_h, grid_w = visual.grid_size
        self.num_tokens = grid_h * grid_w + int(include_cls)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """``pixel_values`` (N, 3, H, W) -> tokens (N, [1 +] H/p * W/p, width), all real."""
        out = self.visual.forward_intermediates(
            inputs["pixel_values"],
            indices=1,
            normalize_intermediates=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][0]
        if self.include_cls:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
        return EncoderOutput(tokens, _all_real(tokens))

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def head_modules(self) -> list[nn.Module]:
        return [self.visual.ln_post]

    def extra_state(self) -> dict:
        return {"model_name": self.model_name, "include_cls": self.include_cls, **copy.deepcopy(self.model_kwargs)}

    def normalization(self) -> Normalization:
        """Per-channel (mean, std) the tower expects its pixels normalised with."""
        cfg = getattr(self.visual, "preprocess_cfg", {})
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        return tuple(mean), tuple(std)


def _load_open_clip_visual(visual: nn.Module, path: str) -> None:
    """Load a full CLIP state dict (``visual.*`` keys; the text tower is ignored) or an image-tower one."""
    state = _open_clip_state_dict(path)
    if any(key.startswith("visual.") for key in state):
        state = {key.removeprefix("visual."): value for key, value in state.items() if key.startswith("visual.")}
    result = visual.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if key != "proj"]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit this open_clip image tower: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )


class TimmVision(Encoder):
    """A timm ViT-style model's ``forward_features`` tokens; prefix (class/register) tokens optional."""

    reads = PIXELS

    def __init__(self, model_name: str, checkpoint: str | None = None, include_cls: bool = True, **model_kwargs: Any):
        """``model_kwargs`` go to ``timm.create_model`` (e.g. ``img_size``, ``depth``); ``checkpoint`` is a local timm
        state dict (its classifier-head weights are ignored)."""
        super().__init__()
        if checkpoint is not None:
            _require_file(checkpoint, "timm")
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        if not all(hasattr(model, name) for name in ("patch_embed", "blocks", "num_prefix_tokens", "norm")):
            raise ValueError(
                f"timm model {model_name!r} ({type(model).__name__}) is not a ViT-style model with patch_embed, "
                "blocks and prefix tokens: TimmVision needs a token-sequence output"
            )
        if checkpoint is not None:
            _load_timm(model, checkpoint)
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool = None  # attention-pooling head: acts on the pooled output only
        fc_norm = getattr(model, "fc_norm", None)
        # Average-pooling models keep their final norm in fc_norm (norm is Identity): apply it to every token.
        self.token_norm = fc_norm if _has_params(fc_norm) else None
        self.model = model
        self.model_name = model_name
        self.include_cls = include_cls
        self.model_kwargs = copy.deepcopy(model_kwargs)
        self.output_dim = model.num_features
        self.num_prefix_tokens = model.num_prefix_tokens
        self.image_size: tuple[int, int] = tuple(model.patch_embed.img_size)
        self.num_tokens = model.patch_embed.num_patches + (self.num_prefix_tokens if include_cls else 0)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """``pixel_values`` (N, 3, H, W) -> tokens (N, [prefix +] patches, num_features), all real."""
        tokens = self.model.forward_features(inputs["pixel_values"])
        if self.token_norm is not None:
            tokens = self.token_norm(tokens)
        if not self.include_cls:
            tokens = tokens[:, self.num_prefix_tokens :]
        return EncoderOutput(tokens, _all_real(tokens))

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def head_modules(self) -> list[nn.Module]:
        return [module for module in (self.model.norm, self.token_norm) if _has_params(module)]

    def extra_state(self) -> dict:
        return {"model_name": self.model_name, "include_cls": self.include_cls, **copy.deepcopy(self.model_kwargs)}

    def normalization(self) -> Normalization:
        """Per-channel (mean, std) from the model's pretrained config."""
        cfg = timm.data.resolve_model_data_config(self.model)
        return tuple(cfg["mean"]), tuple(cfg["std"])


def _load_timm(model: nn.Module, path: str) -> None:
    """Load a timm state dict; classifier-head weights in it are skipped (the encoder has no classifier)."""
    result = timm.models.load_checkpoint(model, path, strict=False)
    unexpected = [key for key in result.unexpected_keys if not key.startswith(("head.", "head_dist."))]
    if result.missing_keys or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit timm model {type(model).__name__}: missing {result.missing_keys}, "
            f"unexpected {unexpected}"
        )
