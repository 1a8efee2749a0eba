"""metalm.probes: what a probed forward records equals what a plain forward computes (and what transformers
reports as attentions and hidden states), edits act and carry gradients, and the fast path is left as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from metalm import Decoder
from metalm.config import DecoderConfig
from metalm.decoder import PreallocatedKVCache
from metalm.probes import probe


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=61, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64, positions="rotary")
    cfg.update(norm="rmsnorm", mlp="swiglu", init_std=0.2)
    cfg.update(kw)
    return Decoder(DecoderConfig(**cfg)).eval()


def _ids(b=2, t=10, seed=3):
    return torch.randint(0, 61, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["sdpa", "eager", "momentum"])
@pytest.mark.parametrize("padded", [False, True])
def test_probed_forward_equals_plain_forward(attention, padded):
    dec = _decoder(attention=attention)
    ids = _ids()
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0
    with torch.no_grad():
        plain = dec(ids, attention_mask=mask).logits
        with probe(dec) as seen:
            probed = dec(ids, attention_mask=mask).logits
    assert plain.abs().max() > 1.0
    torch.testing.assert_close(probed, plain, atol=1e-5, rtol=0)
    assert all(b.attn.probe is None and b.mlp.probe is None for b in dec.blocks)  # detached afterwards
    weights = seen.attn_weights[0]
    assert weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    assert bool((weights.triu(1) == 0).all())  # causal: nothing above the diagonal
    if padded:
        assert bool((weights[1, :, 3:, :3] == 0).all())  # real queries never attend to padding


def test_records_decompose_the_residual_stream():
    """hidden[l] = hidden[l-1] + attn_output[l] + mlp(norm2(...)); attn_heads projected gives attn_output; and the
    heads are the recorded weights times the values."""
    dec = _decoder(attention="sdpa")
    ids = _ids()
    with torch.no_grad(), probe(dec) as seen:
        dec(ids)
    prev = seen.embeddings
    for i, block in enumerate(dec.blocks):
        torch.testing.assert_close(block.attn.proj(seen.attn_heads[i]), seen.attn_output[i])
        with torch.no_grad():  # values: the last two kv heads of the fused projection, each serving two query heads
            v = block.attn.qkv(block.norm1(prev)).view(2, 10, 8, 8)[:, :, 6:].transpose(1, 2)
            heads = seen.attn_weights[i] @ v.repeat_interleave(2, dim=1)
        torch.testing.assert_close(heads.transpose(1, 2).reshape(2, 10, 32), seen.attn_heads[i], atol=1e-6, rtol=0)
        mid = prev + seen.attn_output[i]
        with torch.no_grad():
            mlp_out = block.mlp.proj(seen.mlp_act[i])
            torch.testing.assert_close(block.mlp(block.norm2(mid)), mlp_out, atol=1e-6, rtol=0)
        torch.testing.assert_close(seen.hidden[i], mid + mlp_out, atol=1e-6, rtol=0)
        prev = seen.hidden[i]
    with torch.no_grad():
        torch.testing.assert_close(dec.norm(prev), dec(ids).hidden_states, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_attentions_and_hidden_states_match_transformers(family, tmp_path):
    hf = tiny_gpt2(attn_implementation="eager") if family == "gpt2" else tiny_llama(attn_implementation="eager")
    hf.save_pretrained(tmp_path)
    dec = Decoder.from_hf(tmp_path).eval()
    ids = _ids(t=12)
    with torch.no_grad():
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
        with probe(dec) as seen:
            dec(ids)
    for i in range(len(dec.blocks)):
        torch.testing.assert_close(seen.attn_weights[i], ref.attentions[i], atol=1e-5, rtol=0)
    # transformers' hidden_states: embeddings, then each block's output, the last one after the final norm
    torch.testing.assert_close(seen.embeddings, ref.hidden_states[0], atol=1e-5, rtol=0)
    for i in range(len(dec.blocks) - 1):
        torch.testing.assert_close(seen.hidden[i], ref.hidden_states[i + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(dec.norm(seen.hidden[-1]), ref.hidden_states[-1], atol=1e-5, rtol=0)


def test_positions_and_layers_select_what_is_kept():
    dec = _decoder()
    ids = _ids()
    with torch.no_grad():
        with probe(dec) as full:
            dec(ids)
        with probe(dec, positions=[-1, 2], layers=[1], record=("attn_weights", "hidden")) as some:
            dec(ids)
    assert some.attn_weights[0] is None and some.attn_weights[2] is None and some.mlp_act[1] is None
    torch.testing.assert_close(some.attn_weights[1], full.attn_weights[1][:, :, [9, 2]])
    torch.testing.assert_close(some.hidden[1], full.hidden[1][:, [9, 2]])


def test_cached_decoding_sees_what_a_full_forward_sees():
    dec = _decoder(attention="momentum")
    ids = _ids(b=1, t=9)
    with torch.no_grad():
        with probe(dec, positions=[-1]) as full:
            dec(ids)
        cache = PreallocatedKVCache(len(dec.blocks), 16)
        with probe(dec, positions=[-1]) as step:
            dec(ids[:, :6], past_key_values=cache, use_cache=True)
            for t in range(6, 9):
                dec(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
    assert step.calls == 4
    for i in range(3):
        torch.testing.assert_close(step.attn_weights[i], full.attn_weights[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(step.attn_output[i], full.attn_output[i], atol=1e-5, rtol=0)


def test_edits_change_the_output_and_carry_gradients():
    dec = _decoder()
    ids = _ids(b=1)
    with torch.no_grad():
        plain = dec(ids).logits

    def silence(layer, act):
        if layer == 1:
            act = act.clone()
            act[..., :5] = 0
            return act
        return None

    with torch.no_grad(), probe(dec, edit_mlp=silence) as seen:
        edited = dec(ids).logits
    assert (edited - plain).abs().max() > 1e-3
    assert bool((seen.mlp_act[1][..., :5] == 0).all()) and bool((seen.mlp_act[0][..., :5] != 0).any())

    alpha = torch.tensor(0.5, requires_grad=True)

    def scale(layer, weights):
        return alpha * weights if layer == 0 else None

    with probe(dec, edit_attn=scale, record=()):
        out = dec(ids).logits[0, -1].log_softmax(-1)[7]
    out.backward()
    assert alpha.grad is not None and alpha.grad.abs() > 0
    with torch.no_grad(), probe(dec, edit_attn=lambda layer, w: w, edit_mlp=lambda layer, a: a):
        torch.testing.assert_close(dec(ids).logits, plain, atol=1e-5, rtol=0)


def test_bad_requests_name_what_was_expected():
    dec = _decoder()
    with pytest.raises(ValueError, match="record=\\['attention'\\]"):
        with probe(dec, record=("attention",)):
            pass
    with pytest.raises(ValueError, match="layers \\[5\\]: the decoder has 3 layers"):
        with probe(dec, layers=[5]):
            pass
