"""Decoder.from_hf / to_hf against transformers: same logits, same greedy and beam outputs, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from metalm import Decoder


def _ids(batch=2, length=12, vocab=97, seed=1):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(hf_dir):
    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    ids = _ids()
    with torch.no_grad():
        ref, ours = hf(ids).logits, dec(ids).logits
    assert ref.abs().max() > 1.0  # the random model is not near-constant, so the comparison means something
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_left_padded_logits_match_transformers(hf_dir):
    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    ids, mask = _ids(), torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # transformers' forward does not derive positions from the mask
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        ours = dec(ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pytorch_bin_and_sharded_checkpoints(family, tmp_path):
    hf = tiny_gpt2() if family == "gpt2" else tiny_llama(tie_word_embeddings=False)
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids).logits
        for sub in ("bin", "sharded"):
            torch.testing.assert_close(Decoder.from_hf(tmp_path / sub)(ids).logits, ref, atol=1e-4, rtol=0)


def test_to_hf_round_trip(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    with torch.no_grad():
        dec.blocks[0].mlp.fc.weight.add_(torch.randn_like(dec.blocks[0].mlp.fc.weight))  # must survive the trip
    dec.to_hf(tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, dec(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(back(ids).logits, hf(ids).logits, atol=1e-3)


def test_to_hf_refuses_configs_without_equivalent(tmp_path):
    from metalm import DecoderConfig

    dec = Decoder(DecoderConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, positions="sinusoidal"))
    with pytest.raises(ValueError, match="no transformers equivalent"):
        dec.to_hf(tmp_path)


def test_greedy_generation_token_identical(hf_dir):
    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    ids, mask = _ids(length=8), torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None)
    ours = dec.generate(ids, attention_mask=mask, max_new_tokens=24)
    assert torch.equal(ours, ref)
    # with an end token: pick one the model does emit, so stopping and padding are exercised
    eos = int(ref[0, 12])
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=0)
    ours = dec.generate(ids, attention_mask=mask, max_new_tokens=24, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, ref)


def test_unpadded_greedy_generation_token_identical(hf_dir):
    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    ids = _ids(batch=1, length=8)
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert torch.equal(dec.generate(ids, max_new_tokens=24), ref)


def test_beam_search_matches_transformers(hf_dir):
    hf, path = hf_dir
    dec = Decoder.from_hf(path)
    ids, mask = _ids(length=8), torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=10, num_beams=4, do_sample=False, eos_token_id=None)
    ours = dec.generate(ids, attention_mask=mask, max_new_tokens=10, num_beams=4)
    assert torch.equal(ours, ref)


def test_clear_errors_for_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Decoder.from_hf(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        Decoder.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Decoder.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        Decoder.from_hf(tmp_path)
    tiny_gpt2().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Decoder.from_hf(tmp_path)


def test_unsupported_rope_scaling_is_refused(tmp_path):
    hf = tiny_llama()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 500.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        Decoder.from_hf(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_gpt2().save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd.pop("transformer.h.1.mlp.c_fc.weight")
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="h.1.mlp.c_fc.weight"):
        Decoder.from_hf(tmp_path)
