"""Named model specs (see ``metalm.spec`` for the format): ``tiny`` trains on a laptop CPU in minutes, the paper's
shapes build with random weights, and ``language-small`` composes real pretrained parts.

- ``tiny``: a 4-layer 256-wide decoder, a 4-layer ViT on 32x32 images (8x8 patches) and a 2-layer text encoder that
  shares the decoder's tokenizer. Learned positions: on the bundled world they let the decoder start reading the
  docked image vectors several times sooner than sinusoidal ones did in our CPU runs.
- ``tiny-gpt``: the ``tiny`` decoder alone, the plain causal GPT baseline of the same size (no encoders, no spans).
- ``tiny-joint``: the ``tiny`` decoder with the paper's vision-language layout: one 4-layer 128-wide joint encoder
  reads a 32x32 image (8x8 patches) together with a caption prefix in the decoder's tokenizer (mlp connector), and
  the same native text encoder as ``tiny`` reads the text documents' spans.
- ``language-xl``: the paper's language MetaLM, a 24-layer 2048-wide decoder and a 24-layer 1024-wide text encoder
  whose last two layers are trained, docked through a linear connector.
- ``vl-medium``: the paper's vision-language MetaLM, a 24-layer 1024-wide decoder and a ViT-B/16 through a 3-layer
  MLP, with a 12-layer 768-wide text encoder for the semi-causal spans of its text rows.
- ``language-small``: the paper's language MetaLM in miniature with every part pretrained: SmolLM2-135M-Instruct as
  the decoder and all-MiniLM-L6-v2 as the text encoder (all but its last two layers frozen, linear connector),
  read from ``assets/`` as prepared by ``python -m metalm.assets smollm2 minilm --out assets``.

Big presets build on the meta device for parameter counts without allocating memory::

    with torch.device("meta"):
        model = MetaLM(get_preset("language-xl"))
"""

from __future__ import annotations

from typing import Any

from metalm.config import MetaLMConfig
from metalm.spec import decoder_config, metalm_config, resolve_spec

_TINY_DECODER = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, max_seq_len=256, positions="learned")


def _native_text(dim: int, n_layers: int, n_heads: int, **extra: Any) -> dict[str, Any]:
    """A native text encoder that shares the decoder's tokenizer, through a linear connector (``extra``: e.g. its
    freeze policy)."""
    encoder = {"kind": "native_text", "tokenizer": "decoder", "args": dict(dim=dim, n_layers=n_layers, n_heads=n_heads)}
    return {**encoder, **extra, "connector": {"kind": "linear"}}


_TINY_TEXT = _native_text(128, 2, 4)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "decoder": _TINY_DECODER,
        "encoders": {
            "vision": {
                "kind": "timm",
                "args": dict(
                    model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4
                ),
                "connector": {"kind": "mlp", "layers": 3},
            },
            "text": _TINY_TEXT,
        },
    },
    "tiny-gpt": {"decoder": _TINY_DECODER, "encoders": {}},
    "tiny-joint": {
        "decoder": _TINY_DECODER,
        "encoders": {
            "joint": {
                "kind": "joint_vl",
                "tokenizer": "decoder",
                "args": dict(dim=128, n_layers=4, n_heads=4, image_size=32, patch_size=8),
                "connector": {"kind": "mlp", "layers": 3},
            },
            "text": _TINY_TEXT,
        },
    },
    "language-xl": {
        "decoder": dict(vocab_size=64000, dim=2048, n_layers=24, n_heads=32, max_seq_len=2048, positions="sinusoidal"),
        "encoders": {
            "text": _native_text(1024, 24, 16, freeze="all_but_last_2"),
        },
    },
    "vl-medium": {
        "decoder": dict(vocab_size=64000, dim=1024, n_layers=24, n_heads=16, max_seq_len=2048, positions="sinusoidal"),
        "encoders": {
            "vision": {
                "kind": "open_clip",
                "args": dict(model_name="ViT-B-16"),
                "connector": {"kind": "mlp", "layers": 3},
            },
            "text": _native_text(768, 12, 12, freeze="all_but_last_2"),
        },
    },
    "language-small": {
        "decoder": {"from_hf": "assets/smollm2"},
        "encoders": {
            "text": {
                "kind": "hf_text",
                "weights": "assets/minilm",
                "freeze": "all_but_last_2",
                "connector": {"kind": "linear"},
            }
        },
    },
}


def get_preset(name: str, **decoder_overrides: Any) -> MetaLMConfig:
    """The named preset's config (random weights; see ``MetaLM.from_spec`` for presets with pretrained parts),
    with optional decoder fields replaced (e.g. ``vocab_size`` from a tokenizer)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    spec = resolve_spec({"preset": name}, PRESETS)
    if any(spec["decoder"].get(k) for k in ("from_hf", "from_gguf")):
        raise ValueError(f"preset {name!r} has a pretrained decoder: build it with MetaLM.from_spec")
    try:
        return metalm_config(spec, decoder_config(spec, **decoder_overrides))
    except ValueError as err:
        raise ValueError(f"bad decoder override ({err})") from err
