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
