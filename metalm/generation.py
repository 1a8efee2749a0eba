"""Decoding with the KV cache: greedy, temperature / top-k / top-p sampling, and beam search.

The prompt is run once (as ids, or as embeddings that carry docked encoder vectors), then one token per step
reuses the cache. Batched prompts are left-padded; ``attention_mask`` marks the real tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from metalm.decoder import Decoder, PreallocatedKVCache


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scale by temperature, then keep the top-k tokens and the smallest set whose probability reaches top-p."""
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature}: expected > 0 (use do_sample=False for greedy)")
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p; the first token always stays
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _prefill(
    decoder: Decoder,
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
) -> tuple[torch.Tensor, PreallocatedKVCache]:
    """Run the prompt into a cache with room for ``max_new_tokens`` more; the last position's logits."""
    cache = PreallocatedKVCache(decoder.cfg.n_layers, input_ids.shape[1] + max_new_tokens)
    if inputs_embeds is not None:
        input_ids = None
    out = decoder(
        input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float(), cache


def _step(decoder: Decoder, tokens: torch.Tensor, attention_mask: torch.Tensor | None, cache: PreallocatedKVCache):
    out = decoder(tokens[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True)
    return out.logits[:, -1].float()


def compiled_step(decoder: Decoder) -> Callable:
    """``_step`` through ``torch.compile`` (dynamic shapes, so the growing cache compiles once), made on first use
    and kept on the decoder. On CPU it fuses a step's small operators and removes their Python overhead (about 10%
    faster decoding on SmolLM2, ``bench/smollm2.py``), after a compilation of tens of seconds that needs a C++
    compiler; the same tokens as eager decoding."""
    step = decoder.__dict__.get("_compiled_step")
    if step is None:
        step = torch.compile(functools.partial(_step, decoder), dynamic=True)
        decoder.__dict__["_compiled_step"] = step
    return step


def _grown(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask with one more real position; None (no padding anywhere) stays None."""
    if attention_mask is None:
        return None
    return torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)


@torch.no_grad()
def generate(
    decoder: Decoder,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 32,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Return ``input_ids`` followed by up to ``max_new_tokens`` new tokens, ``(B, T + new)``.

    Finished rows (after ``eos_token_id``) are filled with ``pad_token_id``. ``on_token`` is called with each
    step's new tokens ``(B,)`` for streaming. ``inputs_embeds`` replaces the prompt's embeddings (docking).
    ``compile=True`` runs each decoding step through ``torch.compile`` (``compiled_step``; greedy and sampling).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected (batch, seq)")
    with decoder.decoding():  # on CPU: input-major weight copies, faster matrix-vector products
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: steps need no mask to grow
        if num_beams > 1:
            if compile:
                raise ValueError("compile=True covers greedy and sampled decoding, not beam search (num_beams > 1)")
            if do_sample:
                raise ValueError("beam search with sampling is not supported: use num_beams=1 or do_sample=False")
            return beam_search(
                decoder,
                input_ids,
                attention_mask,
                inputs_embeds,
                max_new_tokens,
                num_beams,
                length_penalty,
                eos_token_id,
                pad_token_id,
            )
        logits, cache = _prefill(decoder, input_ids, inputs_embeds, attention_mask, max_new_tokens)
        step = compiled_step(decoder) if compile else functools.partial(_step, decoder)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        out = [input_ids]
        for _ in range(max_new_tokens):
            if do_sample:
                probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
                tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                tokens = logits.argmax(-1)
            tokens = tokens.masked_fill(done, pad_token_id)
            out.append(tokens[:, None])
            if on_token is not None:
                on_token(tokens)
            if eos_token_id is not None:
                done = done | (tokens == eos_token_id)
                if bool(done.all()):
                    break
            attention_mask = _grown(attention_mask)
            logits = step(tokens, attention_mask, cache)
        return torch.cat(out, dim=1)


def beam_search(
    decoder: Decoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    eos_token_id: int | None,
    pad_token_id: int,
) -> torch.Tensor:
    """Beam search with the KV cache; a finished hypothesis scores sum log-prob / new_length ** length_penalty.

    Stops a row once it holds ``num_beams`` finished hypotheses and no running beam can beat the worst of them
    (the running scores only fall, so the bound uses the longest possible length when length_penalty > 0).
    """
    b, t = input_ids.shape
    logits, cache = _prefill(decoder, input_ids, inputs_embeds, attention_mask, max_new_tokens)
    rows = torch.arange(b, device=input_ids.device).repeat_interleave(num_beams)
    cache.reorder(rows)
    logprobs = logits.log_softmax(-1).index_select(0, rows)
    mask = attention_mask.index_select(0, rows) if attention_mask is not None else None
    scores = torch.full((b, num_beams), float("-inf"), device=input_ids.device)
    scores[:, 0] = 0.0
    seqs = torch.empty(b * num_beams, 0, dtype=torch.long, device=input_ids.device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    closed = [False] * b
    vocab = logprobs.shape[-1]
    for step in range(max_new_tokens):
        cand = (scores.view(-1, 1) + logprobs).view(b, num_beams * vocab)
        top_scores, top_idx = cand.topk(2 * num_beams, dim=-1)
        next_beam = torch.zeros(b, num_beams, dtype=torch.long, device=input_ids.device)
        next_tok = torch.full((b, num_beams), pad_token_id, dtype=torch.long, device=input_ids.device)
        next_scores = torch.full((b, num_beams), float("-inf"), device=input_ids.device)
        for i in range(b):
            if closed[i]:
                next_beam[i] = i * num_beams
                continue
            kept = 0
            for rank in range(2 * num_beams):
                beam, tok = divmod(int(top_idx[i, rank]), vocab)
                score = float(top_scores[i, rank])
                if eos_token_id is not None and tok == eos_token_id:
                    if rank < num_beams:
                        seq = torch.cat([seqs[i * num_beams + beam], top_idx.new_tensor([tok])])
                        finished[i].append((score / (step + 1) ** length_penalty, seq))
                    continue
                next_beam[i, kept], next_tok[i, kept], next_scores[i, kept] = i * num_beams + beam, tok, score
                kept += 1
                if kept == num_beams:
                    break
            if len(finished[i]) >= num_beams:
                finished[i] = sorted(finished[i], key=lambda h: -h[0])[:num_beams]
                best_len = max_new_tokens if length_penalty > 0 else step + 1
                if float(next_scores[i].max()) / best_len**length_penalty <= finished[i][-1][0]:
                    closed[i] = True
        if all(closed):
            break
        index = next_beam.view(-1)
        seqs = torch.cat([seqs.index_select(0, index), next_tok.view(-1, 1)], dim=1)
        scores = next_scores
        if step + 1 == max_new_tokens:
            break
        cache.reorder(index)
        mask = _grown(mask.index_select(0, index) if mask is not None else None)
        logits = _step(decoder, next_tok.view(-1), mask, cache)
        logprobs = logits.log_softmax(-1)
    n = seqs.shape[1]
    for i in range(b):
        if closed[i]:
            continue
        for j in range(num_beams):
            finished[i].append((float(scores[i, j]) / max(n, 1) ** length_penalty, seqs[i * num_beams + j]))
    best = [max(hyps, key=lambda h: h[0])[1] for hyps in finished]
    width = max(len(s) for s in best)
    out = torch.full((b, width), pad_token_id, dtype=torch.long, device=input_ids.device)
    for i, s in enumerate(best):
        out[i, : len(s)] = s
    return torch.cat([input_ids, out], dim=1)
