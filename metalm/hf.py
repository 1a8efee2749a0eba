"""Load and save Hugging Face GPT-2 and Llama-family checkpoints as our ``Decoder``.

Only files are read (config.json plus safetensors or pytorch_model.bin, sharded or not); transformers is needed
for nothing here except writing its config class in ``save_decoder``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metalm.config import DecoderConfig
from metalm.decoder import Decoder
from metalm.io import read_json, save_safetensors_atomic

LLAMA_FAMILY = ("llama", "mistral")
# our linear layers and GPT-2's Conv1D layers (which store weights transposed), in both directions of conversion
GPT2_LINEARS = (
    ("attn.qkv", "attn.c_attn"),
    ("attn.proj", "attn.c_proj"),
    ("mlp.fc", "mlp.c_fc"),
    ("mlp.proj", "mlp.c_proj"),
)


def load_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a transformers checkpoint directory: safetensors (single or sharded) or pytorch_model.bin."""
    from safetensors.torch import load_file

    for index_name, loader in (
        ("model.safetensors.index.json", load_file),
        ("pytorch_model.bin.index.json", lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(read_json(index, "the shard index")["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(str(path / shard)))
            return state
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin (sharded or not) found")


def _rope_theta(hf: dict, source: Path) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{source}: rope type {kind!r} is not supported; expected default rotary embeddings")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def decoder_config_from_hf(hf: dict, source: Path) -> DecoderConfig:
    """Our DecoderConfig for a transformers config dict of model_type gpt2 or the Llama family."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            raise ValueError(f"{source}: GPT-2 attention scaling variants are not supported")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
            raise ValueError(f"{source}: activation_function {act!r} not supported; expected gelu_new or gelu")
        dim = hf["n_embd"]
        return DecoderConfig(
            vocab_size=hf["vocab_size"],
            dim=dim,
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            mlp_hidden=hf.get("n_inner") or 4 * dim,
            max_seq_len=hf["n_positions"],
            positions="learned",
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp="gelu",
            gelu_approximate="none" if act == "gelu" else "tanh",
            attn_bias=True,
            mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    if kind in LLAMA_FAMILY:
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} not supported; expected silu")
        if hf.get("sliding_window"):
            raise ValueError(f"{source}: sliding-window attention is not supported")
        return DecoderConfig(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            mlp_hidden=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            positions="rotary",
            rope_theta=_rope_theta(hf, source),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            mlp="swiglu",
            attn_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            tie_embeddings=hf.get("tie_word_embeddings", False),
        )
    raise ValueError(f"{source}: model_type {kind!r} is not supported; expected gpt2 or one of {LLAMA_FAMILY}")


def _gpt2_to_ours(sd: dict[str, torch.Tensor], cfg: DecoderConfig) -> dict[str, torch.Tensor]:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["wte.weight"], "pos_emb.weight": sd["wpe.weight"]}
    for name in ("weight", "bias"):
        out[f"norm.{name}"] = sd[f"ln_f.{name}"]
    for i in range(cfg.n_layers):
        h, o = f"h.{i}.", f"blocks.{i}."
        for name in ("weight", "bias"):
            out[o + f"norm1.{name}"] = sd[h + f"ln_1.{name}"]
            out[o + f"norm2.{name}"] = sd[h + f"ln_2.{name}"]
        for ours, theirs in GPT2_LINEARS:
            out[o + ours + ".weight"] = sd[h + theirs + ".weight"].t().contiguous()  # Conv1D stores (in, out)
            out[o + ours + ".bias"] = sd[h + theirs + ".bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_to_ours(sd: dict[str, torch.Tensor], cfg: DecoderConfig) -> dict[str, torch.Tensor]:
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for i in range(cfg.n_layers):
        h, o = f"model.layers.{i}.", f"blocks.{i}."
        out[o + "norm1.weight"] = sd[h + "input_layernorm.weight"]
        out[o + "norm2.weight"] = sd[h + "post_attention_layernorm.weight"]
        names = (("weight", True), ("bias", cfg.attn_bias))
        for suffix, present in names:
            if present:
                qkv = [sd[h + f"self_attn.{p}_proj.{suffix}"] for p in "qkv"]
                out[o + f"attn.qkv.{suffix}"] = torch.cat(qkv)
                out[o + f"attn.proj.{suffix}"] = sd[h + f"self_attn.o_proj.{suffix}"]
        for suffix, present in (("weight", True), ("bias", cfg.mlp_bias)):
            if present:
                out[o + f"mlp.fc.{suffix}"] = torch.cat(
                    [sd[h + f"mlp.gate_proj.{suffix}"], sd[h + f"mlp.up_proj.{suffix}"]]
                )
                out[o + f"mlp.proj.{suffix}"] = sd[h + f"mlp.down_proj.{suffix}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def load_decoder(path: str | Path) -> Decoder:
    """Build a Decoder from a transformers GPT-2 / Llama directory; returned in eval mode, float32."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory; expected a transformers checkpoint (config.json + weights)")
    hf = read_json(path / "config.json", "the transformers config of a GPT-2 or Llama model")
    cfg = decoder_config_from_hf(hf, path / "config.json")
    sd = load_hf_state_dict(path)
    convert = _gpt2_to_ours if hf["model_type"] == "gpt2" else _llama_to_ours
    try:
        ours = convert(sd, cfg)
    except KeyError as err:
        raise ValueError(f"{path}: checkpoint lacks tensor {err.args[0]!r} expected for {hf['model_type']}") from err
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks tensors for {missing[:5]}")
    return model.eval()


def hf_config_from_decoder(cfg: DecoderConfig) -> dict:
    """The transformers config dict equivalent to ``cfg``; ValueError if no GPT-2 or Llama model matches."""
    gpt2_like = (cfg.positions, cfg.norm, cfg.mlp, cfg.attn_bias, cfg.mlp_bias) == (
        "learned",
        "layernorm",
        "gelu",
        True,
        True,
    )
    llama_like = (cfg.positions, cfg.norm, cfg.mlp, cfg.mlp_bias) == ("rotary", "rmsnorm", "swiglu", False)
    if gpt2_like and cfg.n_kv_heads == cfg.n_heads and cfg.head_dim * cfg.n_heads == cfg.dim:
        return dict(
            model_type="gpt2",
            vocab_size=cfg.vocab_size,
            n_embd=cfg.dim,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.mlp_hidden,
            n_positions=cfg.max_seq_len,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new" if cfg.gelu_approximate == "tanh" else "gelu",
            tie_word_embeddings=cfg.tie_embeddings,
        )
    if llama_like:
        return dict(
            model_type="llama",
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            intermediate_size=cfg.mlp_hidden,
            max_position_embeddings=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            rms_norm_eps=cfg.norm_eps,
            attention_bias=cfg.attn_bias,
            mlp_bias=False,
            tie_word_embeddings=cfg.tie_embeddings,
            hidden_act="silu",
        )
    raise ValueError(
        "this decoder has no transformers equivalent: GPT-2 needs learned positions, layernorm, gelu and biases; "
        "Llama needs rotary positions, rmsnorm, swiglu and no MLP bias"
    )


def _ours_to_hf(model: Decoder, kind: str) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if kind == "gpt2":
        out = {
            "transformer.wte.weight": sd["tok_emb.weight"],
            "transformer.wpe.weight": sd["pos_emb.weight"],
            "transformer.ln_f.weight": sd["norm.weight"],
            "transformer.ln_f.bias": sd["norm.bias"],
        }
        for i in range(cfg.n_layers):
            h, o = f"transformer.h.{i}.", f"blocks.{i}."
            for name in ("weight", "bias"):
                out[h + f"ln_1.{name}"] = sd[o + f"norm1.{name}"]
                out[h + f"ln_2.{name}"] = sd[o + f"norm2.{name}"]
            for ours, theirs in GPT2_LINEARS:
                out[h + theirs + ".weight"] = sd[o + ours + ".weight"].t().contiguous()
                out[h + theirs + ".bias"] = sd[o + ours + ".bias"]
    else:
        out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"]}
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        for i in range(cfg.n_layers):
            h, o = f"model.layers.{i}.", f"blocks.{i}."
            out[h + "input_layernorm.weight"] = sd[o + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = sd[o + "norm2.weight"]
            for suffix in ("weight", "bias") if cfg.attn_bias else ("weight",):
                parts = sd[o + f"attn.qkv.{suffix}"].split([q, kv, kv])
                for p, t in zip("qkv", parts, strict=True):
                    out[h + f"self_attn.{p}_proj.{suffix}"] = t.contiguous()
                out[h + f"self_attn.o_proj.{suffix}"] = sd[o + f"attn.proj.{suffix}"]
            gate, up = sd[o + "mlp.fc.weight"].chunk(2)
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
            out[h + "mlp.down_proj.weight"] = sd[o + "mlp.proj.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def save_decoder(model: Decoder, path: str | Path) -> None:
    """Write ``model`` as a transformers checkpoint that ``AutoModelForCausalLM.from_pretrained`` loads."""
    from transformers import AutoConfig

    hf = hf_config_from_decoder(model.cfg)
    kind = hf.pop("model_type")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    AutoConfig.for_model(kind, **hf).save_pretrained(path)
    save_safetensors_atomic(_ours_to_hf(model, kind), path / "model.safetensors", metadata={"format": "pt"})
