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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data.prompts import Encoded, EncodedSeg, ImageSeg, Prompt, PromptEncoder, SpecialSeg
from data.tokenizer import Tokenizer
from eval.settings import DecodeSettings
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
        """Log-probability of each plain-text continuation given its prompt, in input order."""
        requests = list(requests)  # holds every prompt object for the whole call, so ids stay unique
        encoded = []
        seen: dict[int, Encoded] = {}  # options of one example share their prompt object: encode (and load) it once
        for prompt, continuation in requests:
            enc = seen.get(id(prompt)) or seen.setdefault(id(prompt), self.encode(prompt))
            cont = self.tokenizer.encode(continuation)
            if not cont:
                raise ValueError(f"continuation {continuation!r} has no tokens; nothing to score")
            if not enc.ids:
                raise ValueError("an empty prompt leaves the continuation's first token unconditioned: give a prompt")
            self._check_len(len(enc.ids) + len(cont), "prompt + continuation")
            encoded.append((enc, cont))
        results: list[OptionScore | None] = [None] * len(encoded)
        lengths = [len(e.ids) + len(c) for e, c in encoded]
        for chunk in self._chunks(lengths, desc):
            rows = [encoded[i][0] + encoded[i][1] for i in chunk]
            ids, mask, docks = self._batch(rows, max(len(r.ids) for r in rows), left_pad=False)
            embeds = self.model.embed_inputs(ids, docks)
            hidden = self.model.decoder(inputs_embeds=embeds, attention_mask=mask, compute_logits=False).hidden_states
            for r, i in enumerate(chunk):
                enc, cont = encoded[i]
                start = len(enc.ids)
                logits = self.model.decoder.lm_head(hidden[r, start - 1 : start - 1 + len(cont)]).float()
                logp = logits.log_softmax(-1)
                target = torch.tensor(cont, device=logp.device)
                total = float(logp.gather(1, target[:, None]).sum())
                greedy = bool((logits.argmax(-1) == target).all())
                results[i] = OptionScore(total, len(cont), greedy)
        self._kept.clear()
        return results  # type: ignore[return-value]

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


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest stop string (leading whitespace ignored), stripped."""
    text = text.lstrip()
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()
