"""CUDA only (``-m cuda``; skipped without a GPU): the decoder and MetaLM on CUDA equal CPU, the xformers backend
equals SDPA, and the training loop runs a bf16 autocast step. bench/gpu.sh runs these first."""

from __future__ import annotations

import functools

import pytest
import torch
from synthetic import VOCAB, make_batch, small_model, stream

from metalm import Decoder, DecoderConfig, MetaLM
from metalm.attention import attend, resolve_backend
from train.loop import train
from train.pretraining import PretrainConfig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
CUDA = torch.device("cuda")
TOLERANCE = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
"""How far CUDA may be from CPU (or xformers from SDPA): fp32 kernels sum in another order; bf16 keeps 8 bits."""

LLAMA = dict(positions="rotary", norm="rmsnorm", mlp="swiglu", attn_bias=False, mlp_bias=False, n_kv_heads=2)


@functools.cache
def xformers_problem() -> str | None:
    """Why the xformers kernels cannot run here (not installed, or built for another torch), None when they can."""
    try:
        import xformers.ops as xops

        q = torch.randn(1, 8, 2, 16, device=CUDA, dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except (ImportError, RuntimeError, NotImplementedError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


@pytest.fixture
def xformers_ok():
    problem = xformers_problem()
    if problem:
        pytest.skip(f"xformers kernels cannot run here ({problem})")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_on_cuda_equals_cpu(family, dtype):
    torch.manual_seed(0)
    extra = LLAMA if family == "llama" else {}
    model = Decoder(DecoderConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, attention="sdpa", **extra)).eval()
    ids = torch.randint(0, 97, (3, 40))
    mask = torch.ones_like(ids)
    mask[2, :7] = 0  # left padding in one row
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            got = model.to(CUDA)(ids.to(CUDA), attention_mask=mask.to(CUDA)).logits.float().cpu()
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


def test_metalm_forward_and_backward_on_cuda_equal_cpu():
    """Loss and every gradient of a tiny MetaLM (image dock and text span) in fp32 on CUDA equal CPU."""
    batch = make_batch(0, 4)
    grads = []
    for device in (torch.device("cpu"), CUDA):
        model = small_model().to(device)
        b = batch.to(device)
        out = model(b.input_ids, b.docks, b.attention_mask, b.labels)
        out.loss.backward()
        grads.append((out.loss.item(), {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}))
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = grads
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert cpu_grads.keys() == gpu_grads.keys() and len(cpu_grads) > 10
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)


def _qkv(case: str, dtype: torch.dtype):
    """Queries (2, 8, Tq, 64) and keys/values for an attention case: causal, key padding, grouped-query, or the
    last 5 queries of a KV cache."""
    g = torch.Generator().manual_seed(0)
    tq, tk, kv_heads = (5 if case == "cache" else 77), 77, 2 if case == "gqa" else 8
    q = torch.randn(2, 8, tq, 64, generator=g)
    k, v = torch.randn(2, kv_heads, tk, 64, generator=g), torch.randn(2, kv_heads, tk, 64, generator=g)
    mask = None
    if case in ("padding", "cache"):
        mask = torch.ones(2, tk, dtype=torch.bool)
        mask[1, :13] = False  # left padding
        mask[0, -9:] = False  # right padding (its queries still see themselves)
    to = lambda t: t.to(CUDA, dtype).requires_grad_()
    return to(q), to(k), to(v), None if mask is None else mask.to(CUDA)


@pytest.mark.parametrize("case", ["causal", "padding", "gqa", "cache"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_xformers_equals_sdpa_forward_and_backward(case, dtype, xformers_ok):
    results = []
    for backend in ("sdpa", "xformers"):
        q, k, v, mask = _qkv(case, dtype)
        out = attend(q, k, v, backend, mask)
        out.float().square().sum().backward()
        results.append([out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()])
    for name, got, want in zip(("out", "dq", "dk", "dv"), results[1], results[0], strict=True):
        scale = want.abs().max().item()
        tol = TOLERANCE[dtype]
        torch.testing.assert_close(got, want, atol=tol["atol"] * max(scale, 1.0), rtol=tol["rtol"], msg=name)


def test_decoder_with_xformers_equals_sdpa(xformers_ok):
    """The whole decoder under bf16 autocast, padded batch: the xformers backend gives SDPA's logits."""
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=97, dim=128, n_layers=2, n_heads=4, attention="sdpa", **LLAMA)).to(CUDA)
    ids = torch.randint(0, 97, (2, 96), device=CUDA)
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    logits = []
    for backend in ("sdpa", "xformers"):
        model.cfg.attention = backend
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            logits.append(model(ids, attention_mask=mask).logits.float())
    torch.testing.assert_close(logits[1], logits[0], **TOLERANCE[torch.bfloat16])


def test_auto_backend_picks_xformers_only_where_its_kernels_run():
    """A mismatched xformers build imports but has no kernels; ``auto`` (every CUDA run's default) must then pick
    sdpa, and the step must run whichever it picks."""
    assert resolve_backend("auto", CUDA) == ("sdpa" if xformers_problem() else "xformers")
    model = small_model().to(CUDA)
    model.decoder.cfg.attention = "auto"
    b = make_batch(0, 2).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(b.input_ids, b.docks, b.attention_mask, b.labels).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_training_loop_bf16_autocast_step_learns_and_saves(tmp_path):
    """The shared loop on CUDA (precision auto means bf16 autocast there): the loss of a repeated batch goes down,
    stays finite, and the final checkpoint loads with fp32 weights."""
    cfg = PretrainConfig(
        out=str(tmp_path), max_steps=12, seq_len=32, lr=3e-3, warmup_steps=2, log_every=1, eval_every=0, peak_flops=1e12
    )
    first = next(stream(0))

    def repeat(skip):
        while True:
            yield first

    result = train(cfg, small_model(), repeat)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0] - 0.3
    loaded = MetaLM.from_pretrained(tmp_path / "final")
    assert loaded.config.decoder.vocab_size == VOCAB
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
