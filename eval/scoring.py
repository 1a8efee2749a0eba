"""Shared scoring for every benchmark script: prompts, option ranking by log-probability, and generation.

A prompt is a list of segments, read left to right:

- ``str``: plain text the decoder reads causally;
- ``ImageSeg(image)``: an image docked through the vision encoder between ``<image>`` and ``</image>``;
- ``EncodedSeg(text)``: text read by the bidirectional text encoder and docked at its own positions (MetaLM's
  "in-context customization": demonstrations go through the encoder instead of being read causally);
- ``SpecialSeg(token)``: one special token, e.g. ``"</s>"`` or ``"</p>"``.

Two ways to score:

- ``Scorer.score(requests)``: the log-probability of a plain-text continuation after a prompt, summed and averaged
  over its tokens (likelihood ranking of options: multiple choice, classification by verbalizer);
- ``Scorer.generate(prompts, settings)``: greedy or beam-search answers, cut at the first stop string.

Both batch their inputs (sorted by length, results returned in input order) and show a progress bar. A
continuation is never docked, so no scored token is ever seen by an encoder (the semi-causal rule).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data.prompts import Encoded, EncodedSeg, ImageSeg, Prompt, PromptEncoder, SpecialSeg
from data.tokenizer import Tokenizer
from eval.settings import DecodeSettings
from metalm.decoder import Decoder
from metalm.model import MetaLM

__all__ = ["DecodeSettings", "EncodedSeg", "ImageSeg", "OptionScore", "Prompt", "Scorer", "SpecialSeg"]


@dataclass
class OptionScore:
    """Log-probability of a continuation: summed, per token, and whether greedy decoding would produce it."""

    logprob: float
    n_tokens: int
    is_greedy: bool

    @property
    def mean(self) -> float:
        return self.logprob / max(self.n_tokens, 1)


def load_decoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Decoder, Tokenizer]:
    """The decoder (in eval mode on ``device``) and tokenizer of a MetaLM checkpoint (``config.json`` with
    ``model_type: metalm``; its encoders left out) or of a transformers GPT-2 / Llama directory."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a MetaLM checkpoint or a transformers directory")
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON: {e}") from e
    decoder = MetaLM.from_pretrained(path).decoder if kind == "metalm" else Decoder.from_hf(str(path))
    return decoder.to(device).eval(), Tokenizer.load(path)


class Scorer:
    """A MetaLM and its tokenizer, turned into a scorer of prompts. ``vision``/``text`` name the encoders used for
    images and encoder-read text (found by kind when not given)."""

    def __init__(
        self,
        model: MetaLM,
        tokenizer: Tokenizer,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        vision: str | None = None,
        text: str | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        if model.config.decoder.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the decoder only {model.config.decoder.vocab_size}:"
                " they do not belong together"
            )
        self.prompts = PromptEncoder(model, tokenizer, vision, text)
        self._kept: dict[int, tuple[Prompt | str, Encoded]] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> Scorer:
        """Load a checkpoint directory written by training (``model.safetensors``, ``config.json``, tokenizer)."""
        model = MetaLM.from_pretrained(path)
        return cls(model, Tokenizer.load(path), device, **kwargs)

    @property
    def max_len(self) -> int:
        return self.model.config.decoder.max_seq_len

    # ---- prompts -> ids and docks ----

    def encode(self, prompt: Prompt | str) -> Encoded:
        """Decoder ids and docks of a prompt (see ``data.prompts``); one handed to ``keep`` is not encoded again."""
        kept = self._kept.pop(id(prompt), None)
        if kept is not None and kept[0] is prompt:
            return kept[1]
        return self.prompts.encode(prompt)

    def keep(self, prompt: Prompt | str, encoded: Encoded) -> None:
        """Hold ``encoded`` for the next ``score``/``rank``/``generate`` call that gets this very ``prompt`` object
        (a caller that measured a prompt need not have its images read twice). Held encodings last until the end
        of that next call."""
        self._kept[id(prompt)] = (prompt, encoded)

    def _check_len(self, n: int, what: str) -> None:
        if n > self.max_len:
            raise ValueError(
                f"{what} is {n} tokens long; the decoder takes at most {self.max_len} (decoder.max_seq_len): "
                "use fewer shots or shorter inputs"
            )

    def _batch(self, rows: list[Encoded], width: int, left_pad: bool):
        ids, mask, docks = self.prompts.collate(rows, width, left_pad)
        return ids.to(self.device), mask.to(self.device), [d.to(self.device) for d in docks]

    def _chunks(self, lengths: list[int], desc: str):
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return tqdm(chunks, desc=desc, disable=not self.progress or len(chunks) < 2, leave=False)

    # ---- likelihood ranking ----

    @torch.no_grad()
    def score(self, requests: Sequence[tuple[Prompt, str]], desc: str = "scoring") -> list[OptionScore]:
        """Log-probability of each plain-text continuation given its prompt, in input order. Requests whose
        prompts are the same (the same object, or the same ids with nothing docked) share one run of the prompt
        (``score_after_prefix``)."""
        requests = list(requests)  # holds every prompt object for the whole call, so ids stay unique
        contexts: list[Encoded] = []
        groups: dict[object, int] = {}  # prompt key -> context index
        members: list[list[tuple[int, list[int]]]] = []  # per context: (request index, continuation ids)
        seen: dict[int, Encoded] = {}  # options of one example share their prompt object: encode (and load) it once
        for r, (prompt, continuation) in enumerate(requests):
            enc = seen.get(id(prompt)) or seen.setdefault(id(prompt), self.encode(prompt))
            cont = self.tokenizer.encode(continuation)
            if not cont:
                raise ValueError(f"continuation {continuation!r} has no tokens; nothing to score")
            if not enc.ids:
                raise ValueError("an empty prompt leaves the continuation's first token unconditioned: give a prompt")
            self._check_len(len(enc.ids) + len(cont), "prompt + continuation")
            plain = not (enc.images or enc.spans or enc.own_spans)
            key = ("ids", tuple(enc.ids)) if plain else ("prompt", id(prompt))
            if key not in groups:
                groups[key] = len(contexts)
                contexts.append(enc)
                members.append([])
            members[groups[key]].append((r, cont))
        results: list[OptionScore | None] = [None] * len(requests)
        for chunk in self._group_chunks(contexts, members, desc):
            rows = [contexts[g] for g in chunk]
            ids, mask, docks = self._batch(rows, max(len(r.ids) for r in rows), left_pad=True)
            embeds = self.model.embed_inputs(ids, docks)
            scores = score_after_prefix(self.model.decoder, embeds, mask, [[c for _, c in members[g]] for g in chunk])
            for g, row in zip(chunk, scores, strict=True):
                for (r, _), s in zip(members[g], row, strict=True):
                    results[r] = s
        self._kept.clear()
        return results  # type: ignore[return-value]

    def _group_chunks(self, contexts: list[Encoded], members: list[list], desc: str):
        """Batches of contexts, longest first, each holding at most ``batch_size`` continuations (or one context)."""
        return option_batches(
            [len(c.ids) for c in contexts], [len(m) for m in members], self.batch_size, desc, self.progress
        )

    def rank(self, options: Sequence[Sequence[tuple[Prompt, str]]], desc: str = "ranking") -> list[list[OptionScore]]:
        """Scores of each example's options (``[(prompt, continuation), ...]``), all batched together."""
        flat = [req for opts in options for req in opts]
        scores = self.score(flat, desc)
        out, k = [], 0
        for opts in options:
            out.append(scores[k : k + len(opts)])
            k += len(opts)
        return out

    # ---- generation ----

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Prompt], settings: DecodeSettings | None = None, desc: str = "generating"
    ) -> list[str]:
        """Answers to ``prompts`` in input order: decoded text cut at the first stop string, stripped."""
        settings = settings or DecodeSettings()
        encoded = [self.encode(p) for p in prompts]
        for e in encoded:
            if not e.ids:
                raise ValueError("an empty prompt: give the model something to continue")
            self._check_len(len(e.ids) + settings.max_new_tokens, "prompt + max_new_tokens")
        answers: list[str | None] = [None] * len(encoded)
        for chunk in self._chunks([len(e.ids) for e in encoded], desc):
            rows = [encoded[i] for i in chunk]
            width = max(len(r.ids) for r in rows)
            ids, mask, docks = self._batch(rows, width, left_pad=True)
            out = self.model.generate(
                ids,
                docks,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                num_beams=settings.num_beams,
                length_penalty=settings.length_penalty,
                eos_token_id=self.tokenizer.eos_id,
                pad_token_id=self.tokenizer.pad_id,
            )
            for r, i in enumerate(chunk):
                new = out[r, width:].tolist()
                if self.tokenizer.eos_id in new:
                    new = new[: new.index(self.tokenizer.eos_id)]
                answers[i] = cut_at_stop(self.tokenizer.decode(new), settings.stop)
        self._kept.clear()
        return answers  # type: ignore[return-value]


def option_batches(
    context_lengths: Sequence[int], n_options: Sequence[int], batch_size: int, desc: str, progress: bool = True
):
    """Context indices in batches for ``score_after_prefix``, longest context first, each batch holding at most
    ``batch_size`` options (a context with more options goes alone); a progress bar over the options."""
    order = sorted(range(len(context_lengths)), key=lambda i: -context_lengths[i])
    batches, current, count = [], [], 0
    for i in order:
        if current and count + n_options[i] > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(i)
        count += n_options[i]
    if current:
        batches.append(current)
    bar = tqdm(total=sum(n_options), desc=desc, unit="option", disable=not progress or len(batches) < 2, leave=False)
    for batch in batches:
        yield batch
        bar.update(sum(n_options[i] for i in batch))
    bar.close()


@torch.no_grad()
def score_after_prefix(
    decoder: Decoder,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    options: Sequence[Sequence[Sequence[int]]],
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[list[OptionScore]]:
    """Scores of continuations after shared contexts, computed fast and exactly as one full forward per option.

    ``embeds`` ``(B, W, dim)`` and ``mask`` ``(B, W)`` are B contexts padded on the left; ``options[b]`` holds the
    continuation ids to score after context ``b``. Each context runs once and its KV cache is reused by all of its
    options; each option runs once over that cache, less its last token (nothing after it is scored); and the
    output projection runs only at the scored positions: the context's last position (each option's first token)
    and the option's own positions but its last. ``prefix``: the KV cache (batch 1) of tokens that come before
    every context (the part all requests share, e.g. a chat template's system turn), run once by the caller."""
    if embeds.shape[0] != len(options) or any(not o for opts in options for o in opts):
        raise ValueError("one list of non-empty continuations per context is expected")
    device = embeds.device
    past = None
    if prefix is not None:
        b = embeds.shape[0]
        past = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix]
        mask = torch.cat([mask.new_ones((b, prefix[0][0].shape[2])), mask], dim=1)
    out = decoder(inputs_embeds=embeds, attention_mask=mask, past_key_values=past, use_cache=True, compute_logits=False)
    last = out.hidden_states[:, -1]
    rows = [(b, list(cont)) for b, opts in enumerate(options) for cont in opts]
    width = max(len(c) for _, c in rows) - 1
    hidden = None
    if width > 0:
        index = torch.tensor([b for b, _ in rows], device=device)
        past = [(k.index_select(0, index), v.index_select(0, index)) for k, v in out.past_key_values]
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        own = torch.zeros((len(rows), width), dtype=mask.dtype)
        for r, (_, c) in enumerate(rows):
            ids[r, : len(c) - 1] = torch.tensor(c[:-1])
            own[r, : len(c) - 1] = 1
        full = torch.cat([mask.index_select(0, index), own.to(device)], dim=1)
        hidden = decoder(input_ids=ids.to(device), attention_mask=full, past_key_values=past, compute_logits=False)
        hidden = hidden.hidden_states
    pieces = []
    for r, (b, c) in enumerate(rows):
        pieces.append(last[b : b + 1])
        if len(c) > 1:
            pieces.append(hidden[r, : len(c) - 1])
    logits = decoder.lm_head(torch.cat(pieces)).float()
    targets = torch.tensor([t for _, c in rows for t in c], device=device)
    picked = logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(-1)
    hits = logits.argmax(-1) == targets
    scores: list[list[OptionScore]] = [[] for _ in options]
    start = 0
    for b, c in rows:
        end = start + len(c)
        scores[b].append(OptionScore(float(picked[start:end].sum()), len(c), bool(hits[start:end].all())))
        start = end
    return scores


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest stop string (leading whitespace ignored), stripped."""
    text = text.lstrip()
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()
