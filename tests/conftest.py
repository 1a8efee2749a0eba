"""Shared fixtures: tiny random transformers models saved in Hugging Face format (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64, initializer_range=0.2,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, vocab_size=97, max_position_embeddings=64, initializer_range=0.2,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=500.0)  # fmt: skip
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture(params=["gpt2", "llama"])
def hf_dir(request, tmp_path):
    """(transformers model, directory it was saved to) for each supported family."""
    model = tiny_gpt2() if request.param == "gpt2" else tiny_llama()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def tiny_metalm(vocab: int, *, text: bool = True, vision: bool = True, img_size: int = 8, patch_size: int = 4,
                max_len: int = 64, vision_freeze: str = "none", **decoder):  # fmt: skip
    """A small random MetaLM (seeded): a 2-layer 32-wide decoder, a 1-layer ViT and a 1-layer native text encoder
    that shares the decoder's tokenizer."""
    from metalm import MetaLM
    from metalm.config import ConnectorConfig, DecoderConfig, EncoderConfig, MetaLMConfig

    torch.manual_seed(0)
    encoders = {}
    if vision:
        encoders["vision"] = EncoderConfig(
            "timm", dict(model_name="vit_tiny_patch16_224", img_size=img_size, patch_size=patch_size, embed_dim=16,
                         depth=1, num_heads=2), freeze=vision_freeze, connector=ConnectorConfig("mlp"),
        )  # fmt: skip
    if text:
        encoders["text"] = EncoderConfig(
            "native_text", dict(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, max_len=max_len),
            connector=ConnectorConfig("linear"),
        )  # fmt: skip
    dec = dict(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=max_len, init_std=0.2, **decoder)
    return MetaLM(MetaLMConfig(DecoderConfig(**dec), encoders)).eval()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small bundled world, shared by the finetuning and instruction-tuning tests (read it, do not write to it).
    Modules that need another world define their own ``world`` fixture, which takes precedence."""
    from data.world import generate_world

    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(out, seed=2, n_train=40, n_val=16, n_test=2, n_heldout=4, n_docs=20)
    return out


@pytest.fixture(scope="session")
def pretrained(world, tmp_path_factory):
    """A tiny random MetaLM (frozen ViT, learned positions) and a BPE tokenizer trained on ``world``'s corpus and
    instructions, saved as pretraining leaves them."""
    import json

    from data.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("pretrained") / "final"
    texts = [json.loads(line)["text"] for line in (world / "text" / "corpus_train.jsonl").read_text().splitlines()]
    texts += (world / "instructions_train.jsonl").read_text().splitlines()
    tok = Tokenizer.train(texts, vocab_size=500)
    model = tiny_metalm(tok.vocab_size, img_size=32, patch_size=8, max_len=256, vision_freeze="all",
                        positions="learned")  # fmt: skip
    model.save_pretrained(out)
    tok.save(out)
    return out
