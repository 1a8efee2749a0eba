"""The ``language-small`` preset end to end with its real parts: SmolLM2-135M-Instruct as the decoder and
all-MiniLM-L6-v2 as a text encoder with its own tokenizer. It builds, trains semi-causal steps on real text,
saves, reloads from a copy where the asset directory is out of reach, and generates."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from data.prompts import EncodedSeg, PromptEncoder
from data.shards import write_text
from data.tokenizer import Tokenizer
from metalm import MetaLM
from tests.conftest import REAL_TEXT, needs_real_parts
from train.pretraining import PretrainConfig, compose, pretrain


def chat_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """A one-turn ChatML prompt (SmolLM2-Instruct's template) with its special tokens as single ids."""
    start, end = (tokenizer.backend.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    return [start, *tokenizer.encode(f"user\n{question}"), end, *tokenizer.encode("\n"), start] + tokenizer.encode(
        "assistant\n"
    )


@needs_real_parts
def test_language_small_trains_semi_causally_on_real_text_saves_reloads_and_generates(
    real_assets, world, tmp_path, monkeypatch
):
    monkeypatch.chdir(real_assets.parent)  # the preset reads assets/smollm2 and assets/minilm from here
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": text}) + "\n" for text in REAL_TEXT * 4))
    write_text([docs], str(tmp_path / "shards" / "text-%06d.tar"))
    cfg = PretrainConfig(
        preset="language-small",
        world=str(world),
        text_shards=str(tmp_path / "shards"),
        seq_len=96,
        batch_size=2,
        span_min=8,
        span_max=16,
        max_steps=2,
        lr=1e-5,
        warmup_steps=1,
        eval_batches=1,
        eval_every=0,
        log_every=1,
        shuffle_buffer=0,
        out=str(tmp_path / "run"),
    )
    summary = pretrain(cfg)
    assert summary["steps"] == 2 and 0 < summary["last_loss"] < 10
    final = tmp_path / "run" / "final"
    assert {"spec.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in final.iterdir()}
    assert (final / "tokenizers" / "text" / "tokenizer.json").is_file()

    # what trained: MiniLM's last two layers and the connector, never its frozen first four
    start = load_file(str(real_assets / "minilm" / "model.safetensors"))
    trained = load_file(str(final / "model.safetensors"))
    prefix = "encoders.text.model."
    assert torch.equal(
        trained[prefix + "encoder.layer.0.attention.self.query.weight"],
        start["encoder.layer.0.attention.self.query.weight"],
    )
    assert not torch.equal(
        trained[prefix + "encoder.layer.5.attention.self.query.weight"],
        start["encoder.layer.5.attention.self.query.weight"],
    )

    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(final, copy)
    monkeypatch.chdir(tmp_path / "elsewhere")  # no assets/ here: the copy must hold everything
    model = MetaLM.from_pretrained(copy)
    tokenizer = Tokenizer.load(copy)
    assert model.encoders["text"].tokenizer.name == "minilm"
    prompt = torch.tensor([chat_ids(tokenizer, "What is the capital of France?")])
    answer = model.generate(prompt, max_new_tokens=8)[0, prompt.shape[1] :]
    assert "Paris" in tokenizer.decode(answer.tolist())  # a few small steps leave the pretrained decoder intact

    prompts = PromptEncoder(model, tokenizer)
    encoded = prompts.encode([EncodedSeg("The capital of France is Paris."), " In one word, the capital is"])
    ids, mask, docks = prompts.collate([encoded])
    assert docks and docks[0].inputs["input_ids"].shape[1] == len(
        model.encoders["text"].tokenizer.encode("The capital of France is Paris.")
    )
    out = model.generate(ids, docks=docks, attention_mask=mask, max_new_tokens=4)
    assert out.shape == (1, ids.shape[1] + 4)


@needs_real_parts
def test_a_composed_language_small_answers_in_its_chat_template_in_the_demo(real_assets, tmp_path, monkeypatch):
    """train/compose.py's checkpoint of the preset, loaded by the demo: SmolLM2's ChatML prompt (its special tokens
    as single ids), the answer streamed until its end-of-turn token, and the preset checked against spec.json."""
    from demo import Settings
    from demo.engine import Chat, DemoError, load_checkpoint

    monkeypatch.chdir(real_assets.parent)
    out = compose({"preset": "language-small"}, seed=0, out=tmp_path / "composed")
    monkeypatch.chdir(tmp_path)
    engine = load_checkpoint(out, preset="language-small", encode_user=False)
    assert engine.chat.eos == "<|im_end|>" and engine.chat.stop == ()
    pieces: list[str] = []
    reply = Chat(engine, Settings(greedy=True, max_new_tokens=24)).ask(
        "What is the capital of France?", on_text=pieces.append
    )
    assert "Paris" in reply.text and reply.finish_reason == "eos"
    assert "".join(pieces) == reply.text and len(pieces) > 1
    with pytest.raises(DemoError, match="not a 'tiny' model"):
        load_checkpoint(out, preset="tiny")
