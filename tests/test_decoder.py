"""Our decoder: backends agree, the KV cache equals a full forward, causality, MoAttn's recurrence, bad input."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metalm import Decoder, DecoderConfig
from metalm.attention import attend, eager_attention, momentum_term, xformers_call
from metalm.decoder import PreallocatedKVCache

VARIANTS = [
    dict(positions=p, norm=n, mlp=m)
    for p, n, m in itertools.product(("sinusoidal", "learned", "rotary"), ("layernorm", "rmsnorm"), ("gelu", "swiglu"))
]


def make(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, max_seq_len=64, init_std=0.2)
    cfg.update(kw)
    return Decoder(DecoderConfig(**cfg)).eval()


def ids(b=2, t=16, seed=0):
    return torch.randint(0, 61, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(v.values()))
def test_sdpa_matches_eager_reference(variant):
    dec = make(**variant, n_kv_heads=2)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    with torch.no_grad():
        dec.cfg.attention = "eager"
        ref = dec(x, attention_mask=mask).logits
        dec.cfg.attention = "sdpa"
        out = dec(x, attention_mask=mask).logits
    assert ref.std() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "eager", "momentum"])
def test_causal_changing_a_token_leaves_earlier_logits_unchanged(backend):
    dec = make(attention=backend, positions="rotary")
    x = ids(b=1, t=20)
    y = x.clone()
    y[0, 11] = (y[0, 11] + 1) % 61
    with torch.no_grad():
        a, b = dec(x).logits, dec(y).logits
    torch.testing.assert_close(a[:, :11], b[:, :11], atol=1e-6, rtol=0)
    assert (a[:, 11:] - b[:, 11:]).abs().max() > 1e-3


@settings(max_examples=20, deadline=None)
@given(
    variant=st.sampled_from(VARIANTS),
    backend=st.sampled_from(["sdpa", "eager", "momentum"]),
    split=st.integers(1, 15),
    gqa=st.booleans(),
    pad=st.integers(0, 4),
    preallocated=st.booleans(),
)
def test_kv_cache_prefill_then_decode_equals_full_forward(variant, backend, split, gqa, pad, preallocated):
    dec = make(**variant, attention=backend, n_kv_heads=2 if gqa else 4)
    x = ids(t=16)
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    cache = PreallocatedKVCache(dec.cfg.n_layers, 16) if preallocated else None
    with torch.no_grad():
        full = dec(x, attention_mask=mask).logits
        out = dec(x[:, :split], attention_mask=mask[:, :split], past_key_values=cache, use_cache=True)
        pieces, cache = [out.logits], out.past_key_values
        for t in range(split, 16):
            out = dec(x[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(pieces, 1)[mask.bool()], full[mask.bool()], atol=1e-4, rtol=1e-4)


def test_preallocated_cache_refuses_more_positions_than_it_holds():
    dec = make(positions="rotary")
    cache = PreallocatedKVCache(dec.cfg.n_layers, 5)
    with torch.no_grad():
        dec(ids(t=4), past_key_values=cache, use_cache=True)
        dec(ids(t=1), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="holds 5 positions; 6 are needed"):
            dec(ids(t=1), past_key_values=cache, use_cache=True)


def test_logits_to_keep_gives_the_last_positions_logits():
    dec = make(positions="rotary")
    with torch.no_grad():
        torch.testing.assert_close(dec(ids(), logits_to_keep=3).logits, dec(ids()).logits[:, -3:], atol=1e-6, rtol=0)


def test_rotary_table_equals_rotary_computed_per_forward():
    dec = make(positions="rotary")
    x, mask = ids(), torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():  # explicit position_ids take the per-forward path, the table serves the rest
        explicit = dec(x, attention_mask=mask, position_ids=positions).logits
        assert torch.equal(dec(x, attention_mask=mask).logits, explicit)


def test_left_padding_gives_the_unpadded_logits():
    dec = make(positions="learned")
    x = ids(b=1, t=10)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(dec(padded, attention_mask=mask).logits[:, 3:], dec(x).logits, atol=1e-5, rtol=0)


def test_momentum_term_follows_its_recurrence():
    torch.manual_seed(0)
    v = torch.randn(2, 3, 9, 4)
    eta = 0.7
    m = torch.zeros(2, 3, 4)
    expected = []
    for t in range(9):
        if t > 0:
            m = eta * (m + v[:, :, t - 1])
        expected.append(m)
    torch.testing.assert_close(momentum_term(v, 9, eta, None), torch.stack(expected, 2), atol=1e-6, rtol=1e-5)
    # the last 3 rows alone (a KV-cache step) are the same rows
    torch.testing.assert_close(momentum_term(v, 3, eta, None), torch.stack(expected, 2)[:, :, 6:], atol=1e-6, rtol=1e-5)


def test_momentum_backend_adds_the_momentum_to_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    out = attend(q, k, v, "momentum", momentum_eta=0.5)
    torch.testing.assert_close(out, eager_attention(q, k, v, None) + momentum_term(v, 7, 0.5, None), atol=1e-5, rtol=0)


def _reference_xformers():
    """Stands in for xformers' kernels on CPU: materialises the bias object and runs plain attention in BMHK."""

    def memory_efficient_attention(q, k, v, attn_bias):
        b, tq, h, d = q.shape
        bias = attn_bias if torch.is_tensor(attn_bias) else attn_bias.materialize((b, h, tq, k.shape[1]))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5 + bias
        return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)

    return types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)


@pytest.mark.parametrize("case", ["causal", "cache", "padding", "gqa"])
def test_xformers_layout_and_masks_match_eager(case):
    pytest.importorskip("xformers")
    torch.manual_seed(0)
    tq = 3 if case == "cache" else 9
    q = torch.randn(2, 4, tq, 8)
    kv_heads = 2 if case == "gqa" else 4
    k, v = torch.randn(2, kv_heads, 9, 8), torch.randn(2, kv_heads, 9, 8)
    key_mask = None
    if case == "padding":
        key_mask = torch.ones(2, 9, dtype=torch.bool)
        key_mask[1, :4] = False
    out = xformers_call(_reference_xformers(), q, k, v, key_mask)
    torch.testing.assert_close(out, eager_attention(q, k, v, key_mask), atol=1e-5, rtol=1e-5)


def test_xformers_on_cpu_is_a_clear_error():
    dec = make(attention="xformers")
    with pytest.raises(RuntimeError, match="no CPU kernels"):
        dec(ids())


def test_auto_backend_runs_on_cpu():
    dec = make(attention="auto")
    with torch.no_grad():
        out = dec(ids()).logits
    dec.cfg.attention = "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(out, dec(ids()).logits)


def test_tied_and_untied_embeddings():
    tied, untied = make(tie_embeddings=True), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() == tied.num_params() + 61 * 32


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("attention", "flash9", "decoder.attention = 'flash9'"),
        ("positions", "alibi", "decoder.positions = 'alibi'"),
        ("norm", "batchnorm", "decoder.norm"),
        ("n_heads", 5, "not divisible"),
        ("n_kv_heads", 3, "not a multiple"),
        ("momentum_eta", 1.5, "momentum_eta"),
    ],
)
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{"dim": 32, "n_heads": 4, field: value})


def test_bad_inputs_are_named():
    dec = make(positions="learned")
    with pytest.raises(ValueError, match="vocab_size"):
        dec(torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match="max_seq_len = 64"):
        dec(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="expected \\(batch, seq, 32\\)"):
        dec(inputs_embeds=torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        dec(ids(), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="exactly one"):
        dec()


def test_sampling_filters():
    from metalm.generation import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, 1.0, top_k=2, top_p=1.0).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, 1.0, top_k=0, top_p=0.7).isfinite()  # 0.5 < 0.7, 0.5+0.3 >= 0.7
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, 1.0, top_k=0, top_p=0.4).isfinite()
    assert kept.tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, 0.0, 0, 1.0)


def test_sampling_is_seeded_and_respects_top_k():
    dec = make()
    x = ids(b=2, t=4)
    a = dec.generate(x, max_new_tokens=12, do_sample=True, top_k=3, generator=torch.Generator().manual_seed(5))
    b = dec.generate(x, max_new_tokens=12, do_sample=True, top_k=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # every sampled token is among the 3 most likely at its step
    with torch.no_grad():
        logits = dec(a).logits[:, 3:-1]
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == a[:, 4:, None]).any(-1).all()


def test_streaming_callback_sees_every_new_token():
    dec = make()
    seen = []
    out = dec.generate(ids(b=1, t=4), max_new_tokens=6, on_token=lambda t: seen.append(int(t[0])))
    assert seen == out[0, 4:].tolist()


@pytest.mark.slow  # compiling takes tens of seconds and needs a C++ compiler
def test_compiled_decoding_gives_the_eager_tokens():
    dec = make(positions="rotary", norm="rmsnorm", mlp="swiglu")
    x, mask = ids(b=2, t=6), torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding: the mask grows each step, inside the compiled step
    for m in (None, mask):
        eager = dec.generate(x, attention_mask=m, max_new_tokens=10)
        assert torch.equal(dec.generate(x, attention_mask=m, max_new_tokens=10, compile=True), eager)
    with pytest.raises(ValueError, match="not beam search"):
        dec.generate(x, max_new_tokens=2, num_beams=2, compile=True)
