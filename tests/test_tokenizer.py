"""The byte-level BPE tokenizer: lossless round trips, fixed special ids, save/load, determinism, HF directories."""

from __future__ import annotations

import pytest

from data.tokenizer import SPECIAL_TOKENS, Tokenizer

TEXTS = [
    "a red circle on the left and a blue square on the right.",
    "There are two shapes in the picture. The green triangle is in the middle.",
    "Question: what color is the square? Answer: yellow.",
    "naïve café, 日本語のテキスト, emoji 🙂🚀 and tabs\tand\nnewlines",
] * 20
STRINGS = ["", " ", "hello world", "  two  spaces\n\nand a blank line", "日本語 🙂 ünïcödé", "</s> <vec> not specials"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=320)


def test_round_trip_any_string(tok):
    for text in STRINGS + TEXTS[:4] + ["\x00\x7f\u200b\U0010ffff"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("") == [] and tok.encode_batch(STRINGS) == [tok.encode(s) for s in STRINGS]
    assert len(tok.encode("a red circle on the left")) < len("a red circle on the left")  # merges were learned


def test_special_ids_fixed(tok):
    ids = (tok.pad_id, tok.eos_id, tok.par_id, tok.image_start_id, tok.image_end_id, tok.vec_id)
    assert ids == (0, 1, 2, 3, 4, 5) and tok.vocab_size == 320
    assert not set(tok.encode("</s> <pad> <image> </p> <vec>")) & set(ids)  # special strings in text stay text
    sample = [tok.image_start_id, tok.vec_id, tok.image_end_id] + tok.encode("hi") + [tok.eos_id]
    assert tok.decode(sample) == "hi"
    assert tok.decode(sample, skip_special=False) == "<image><vec></image>hi</s>"


def test_save_load_and_determinism(tok, tmp_path):
    file = tok.save(tmp_path / "a")
    assert file == tmp_path / "a" / "tokenizer.json" and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "tokenizer.json"
    ]
    loaded = Tokenizer.load(tmp_path / "a")
    assert loaded.encode_batch(STRINGS) == tok.encode_batch(STRINGS) and loaded.vocab_size == tok.vocab_size
    assert Tokenizer.load(file).eos_id == 1
    Tokenizer.train(TEXTS, vocab_size=320).save(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == file.read_bytes()
    Tokenizer.train(TEXTS[:3], vocab_size=320).save(tmp_path / "c")
    assert (tmp_path / "c" / "tokenizer.json").read_bytes() != file.read_bytes()


def test_load_hf_fast_tokenizer_dir(tok, tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Backend(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "hf")
    hf = Tokenizer.load(tmp_path / "hf")
    assert hf.encode("hello world") == [1, 2]
    ids = [hf.pad_id, hf.eos_id, hf.par_id, hf.image_start_id, hf.image_end_id, hf.vec_id]
    assert ids == [3, 4, 5, 6, 7, 8] and hf.vocab_size == 9
    assert hf.decode([1, hf.eos_id, 2]) == "hello world"

    PreTrainedTokenizerFast(tokenizer_object=tok.backend).save_pretrained(tmp_path / "ours")
    assert Tokenizer.load(tmp_path / "ours").encode_batch(STRINGS) == tok.encode_batch(STRINGS)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*tokenizer.json"):
        Tokenizer.load(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(TEXTS, vocab_size=100)
    assert len(SPECIAL_TOKENS) == 6
