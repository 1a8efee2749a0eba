"""The fused chunked cross-entropy gives the same loss and gradients as the plain one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import metalm.loss as L


@settings(max_examples=15, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(2, 12),
    vocab=st.integers(2, 40),
    chunk_elements=st.sampled_from([1, 7, 64, 1 << 25]),
    ignored=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_fused_matches_plain_loss_and_gradients(b, t, vocab, chunk_elements, ignored, seed):
    saved, L.CHUNK_ELEMENTS = L.CHUNK_ELEMENTS, chunk_elements
    try:
        _check_fused(b, t, vocab, ignored, seed)
    finally:
        L.CHUNK_ELEMENTS = saved


def _check_fused(b, t, vocab, ignored, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, 8, generator=g, requires_grad=True)
    weight = torch.randn(vocab, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignored] = L.IGNORE_INDEX
    ref, n_ref = L.causal_lm_loss(hidden @ weight.t(), labels)
    ref.backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    (loss, n) = L.fused_linear_cross_entropy(hidden, weight, labels)
    (2.5 * loss).backward()  # the incoming gradient scales both
    assert n == n_ref
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, 2.5 * gh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weight.grad, 2.5 * gw, atol=1e-5, rtol=1e-4)


def test_fused_loss_without_gradients_and_bad_labels():
    hidden, weight = torch.randn(1, 4, 8), torch.randn(10, 8)
    labels = torch.tensor([[1, 2, 3, 4]])
    loss, n = L.fused_linear_cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(loss, L.causal_lm_loss(hidden @ weight.t(), labels)[0])
    assert n == 3
    with pytest.raises(ValueError, match="vocab_size"):
        L.fused_linear_cross_entropy(hidden, weight, torch.tensor([[1, 2, 30, 4]]))


def test_metalm_training_forward_equals_logits_forward():
    from synthetic import tiny_metalm

    m = tiny_metalm(50, training=True, encoders=(), max_len=16, n_layers=1, init_std=0.02)
    ids = torch.randint(0, 50, (2, 16))
    fused = m(ids, labels=ids)
    assert fused.logits is None
    plain = m(ids, labels=ids, return_logits=True)
    torch.testing.assert_close(fused.loss, plain.loss)
