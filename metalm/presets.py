"""Named model presets: ``tiny`` trains on a laptop CPU in minutes; the others are the paper's shapes.

Big presets are meant to be built on the meta device for parameter counts without allocating memory::

    with torch.device("meta"):
        model = MetaLM(get_preset("language-xl"))
"""

from __future__ import annotations

from collections.abc import Callable

from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig


def tiny(**overrides) -> MetaLMConfig:
    """4-layer 256-wide decoder, a 4-layer ViT on 32x32 images (8x8 patches) and a 2-layer text encoder that
    shares the decoder's tokenizer. Learned positions: on the bundled world they let the decoder start reading the
    docked image vectors several times sooner than sinusoidal ones did in our CPU runs."""
    decoder = _decoder(
        dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, max_seq_len=256, positions="learned"), overrides
    )
    vision = EncoderConfig(
        kind="timm",
        kwargs=dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4),
        connector=ConnectorConfig(kind="mlp", layers=3),
    )
    text = EncoderConfig(
        kind="native_text",
        kwargs=dict(vocab_size=decoder.vocab_size, dim=128, n_layers=2, n_heads=4, max_len=decoder.max_seq_len),
        connector=ConnectorConfig(kind="linear"),
    )
    return MetaLMConfig(decoder=decoder, encoders={"vision": vision, "text": text})


def tiny_joint(**overrides) -> MetaLMConfig:
    """The ``tiny`` decoder with the paper's vision-language layout: one 4-layer 128-wide joint encoder reads a
    32x32 image (8x8 patches) together with a caption prefix in the decoder's tokenizer (mlp connector), and the
    same native text encoder as ``tiny`` reads the text documents' spans."""
    base = tiny(**overrides)
    joint = EncoderConfig(
        kind="joint_vl",
        kwargs=dict(
            vocab_size=base.decoder.vocab_size,
            dim=128,
            n_layers=4,
            n_heads=4,
            image_size=32,
            patch_size=8,
            max_text_len=base.decoder.max_seq_len,
        ),
        connector=ConnectorConfig(kind="mlp", layers=3),
    )
    return MetaLMConfig(decoder=base.decoder, encoders={"joint": joint, "text": base.encoders["text"]})


def tiny_gpt(**overrides) -> MetaLMConfig:
    """The ``tiny`` decoder alone: the plain causal GPT baseline of the same size (no encoders, no spans)."""
    return MetaLMConfig(decoder=tiny(**overrides).decoder, encoders={})


def language_xl(**overrides) -> MetaLMConfig:
    """The paper's language MetaLM: a 24-layer 2048-hidden decoder and a 24-layer 1024-hidden text encoder whose
    last two layers are trained, docked through a linear connector."""
    decoder = _decoder(
        dict(vocab_size=64000, dim=2048, n_layers=24, n_heads=32, max_seq_len=2048, positions="sinusoidal"), overrides
    )
    text = EncoderConfig(
        kind="native_text",
        kwargs=dict(vocab_size=decoder.vocab_size, dim=1024, n_layers=24, n_heads=16, max_len=decoder.max_seq_len),
        freeze="all_but_last_2",
        connector=ConnectorConfig(kind="linear"),
    )
    return MetaLMConfig(decoder=decoder, encoders={"text": text})


def vl_medium(**overrides) -> MetaLMConfig:
    """The paper's vision-language MetaLM: a 24-layer 1024-hidden decoder and a ViT-B/16 through a 3-layer MLP."""
    decoder = _decoder(
        dict(vocab_size=64000, dim=1024, n_layers=24, n_heads=16, max_seq_len=2048, positions="sinusoidal"), overrides
    )
    vision = EncoderConfig(
        kind="open_clip", kwargs=dict(model_name="ViT-B-16"), connector=ConnectorConfig(kind="mlp", layers=3)
    )
    return MetaLMConfig(decoder=decoder, encoders={"vision": vision})


def _decoder(defaults: dict, overrides: dict) -> DecoderConfig:
    try:
        return DecoderConfig(**{**defaults, **overrides})
    except TypeError as err:
        raise ValueError(f"bad decoder override ({err})") from err


PRESETS: dict[str, Callable[..., MetaLMConfig]] = {
    "tiny": tiny,
    "tiny-gpt": tiny_gpt,
    "tiny-joint": tiny_joint,
    "language-xl": language_xl,
    "vl-medium": vl_medium,
}


def get_preset(name: str, **decoder_overrides) -> MetaLMConfig:
    """The named preset's config, with optional decoder fields replaced (e.g. ``vocab_size`` from a tokenizer)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name](**decoder_overrides)
