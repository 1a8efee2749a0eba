"""Multiple choice scored as lighteval scores it, so our numbers can stand beside a model card's (SmolLM2's).

What is followed, and where (huggingface/lighteval at c173871, 2024-11-19, the version SmolLM2 was evaluated with;
its tasks are huggingface/smollm ``text/evaluation/tasks.py``):

- prompts: ``default_prompts.piqa_harness`` and ``default_prompts.arc`` are context ``"Question: {q}\\nAnswer:"`` and
  choices ``" " + option``, which is what our PIQA and ARC readers (``data.tasks.choice``) already give;
- chat template (``--use_chat_template``, ``prompt_manager.PromptManager._single_turn_context``): the query becomes
  the one user message, rendered by the tokenizer's chat template with ``add_generation_prompt=True``; SmolLM2's
  template adds its default system message;
- tokenization (``models/abstract_model.py`` ``tok_encode_pair``, not pairwise): trailing whitespace of the context
  moves to the start of the continuation (under the chat template, the ``"\\n"`` after ``assistant``); the context
  is encoded alone, context + continuation together, and the continuation's ids are what follows the context's
  count (one fewer when the last context token merged into the continuation); no special tokens added, and the
  tokenizer's special tokens in the text read as one id each, as a transformers tokenizer reads them;
- metric ``loglikelihood_acc_norm_nospace`` (``metrics/metrics.py``, ``LoglikelihoodAcc`` with
  ``normalizations.LogProbCharNorm(ignore_first_space=True)``): the summed log-probability divided by the choice's
  length in characters, not counting one leading space; the best choice must be the gold one (ties: the first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer

from data.tasks import ChoiceExample, TaskData
from data.templates import chat_template, render_chat
from data.tokenizer import FILENAME, Tokenizer
from eval.runners import Outcome, device_of, finish, limited
from eval.scoring import OptionScore, load_decoder, option_batches, score_after_prefix
from eval.settings import EvalSettings
from metalm.decoder import Decoder
from metalm.model import read_tokenizer_files

SOURCE = "huggingface/lighteval c173871 (2024-11-19); huggingface/smollm text/evaluation/tasks.py"


def char_norm(logprobs: Sequence[float], choices: Sequence[str], ignore_first_space: bool = True) -> list[float]:
    """lighteval's ``LogProbCharNorm``: each summed log-probability over its choice's length in characters, less
    one for a leading space when ``ignore_first_space`` (the ``_nospace`` metrics)."""
    if len(logprobs) != len(choices):
        raise ValueError(f"{len(logprobs)} log-probabilities for {len(choices)} choices")
    if ignore_first_space:
        return [lp / (len(c) - 1 if c[0] == " " else len(c)) for lp, c in zip(logprobs, choices, strict=True)]
    return [lp / len(c) for lp, c in zip(logprobs, choices, strict=True)]


def tok_encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lighteval's ``tok_encode_pair`` (not pairwise): the context's trailing whitespace moves to the continuation,
    the whole string is encoded once and split after the context's own ids."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    context_ids = encode(context)
    n = len(context_ids)
    if n == len(whole):  # the continuation merged into the context's last token: score that token
        n -= 1
        context_ids = whole[:n]
    return context_ids, whole[n:]


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """How many leading ids every row shares, leaving each at least one of its own (so each row has a last
    position of its own to predict from)."""
    if not rows:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def chat_context(template: str, query: str) -> str:
    """The query as the single user message, rendered by a Jinja chat template with the generation prompt."""
    return render_chat(template, [{"role": "user", "content": query}])


def hf_encoder(tokenizer_json: Path) -> Callable[[str], list[int]]:
    """Text -> ids as a transformers fast tokenizer encodes it (no special tokens added, but the tokenizer's own
    special tokens written in the text, such as the chat template's ``<|im_start|>``, read as one id each). Our
    ``Tokenizer`` spells such strings out as plain text on purpose (user text never becomes a special token), so
    the chat template's tokens would otherwise become a dozen ordinary ids each."""
    backend = HFTokenizer.from_file(str(tokenizer_json))

    def encode(text: str) -> list[int]:
        return backend.encode(text, add_special_tokens=False).ids

    return encode


class DecoderLM:
    """A decoder alone and its tokenizer, answering lighteval's loglikelihood requests (context, continuation).
    ``encode`` turns text into ids as transformers would (``hf_encoder``); by default ``tokenizer.encode``."""

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Tokenizer,
        chat_template: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        progress: bool = True,
        encode: Callable[[str], list[int]] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.decoder = decoder.to(device=device, dtype=dtype).eval()
        self.encode = encode or tokenizer.encode
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.device, self.batch_size, self.progress = torch.device(device), batch_size, progress

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> DecoderLM:
        """The decoder of a MetaLM checkpoint (its encoders left out: the model card measures the decoder) or of a
        transformers GPT-2 / Llama directory, with the tokenizer and chat template beside it."""
        path = Path(path)
        decoder, tokenizer = load_decoder(path)
        template = chat_template(read_tokenizer_files(path))  # what MetaLM.from_pretrained reads as tokenizer_files
        return cls(decoder, tokenizer, template, encode=hf_encoder(path / FILENAME), **kwargs)

    def context(self, query: str, use_chat_template: bool) -> str:
        """The query as the model reads it: wrapped by the chat template, or as is."""
        if not use_chat_template:
            return query
        if self.chat_template is None:
            raise ValueError("--chat_template: this model's tokenizer has no chat template (chat_template.jinja)")
        return chat_context(self.chat_template, query)

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[tuple[str, str]], desc: str = "scoring") -> list[OptionScore]:
        """Summed log-probability of each continuation after its context (tokenized by ``tok_encode_pair``), in
        input order; requests with the same context ids share one run of it (``score_after_prefix``)."""
        contexts: list[list[int]] = []
        where: dict[tuple[int, ...], int] = {}
        members: list[list[tuple[int, list[int]]]] = []
        limit = self.decoder.cfg.max_seq_len
        for r, (context, continuation) in enumerate(requests):
            ctx, cont = tok_encode_pair(self.encode, context, continuation)
            if not ctx or not cont:
                raise ValueError(f"request {r}: context {context[-40:]!r} or continuation {continuation!r} is empty")
            if len(ctx) + len(cont) > limit:
                raise ValueError(f"request {r}: {len(ctx) + len(cont)} tokens; the decoder takes at most {limit}")
            g = where.setdefault(tuple(ctx), len(contexts))
            if g == len(contexts):
                contexts.append(ctx)
                members.append([])
            members[g].append((r, cont))
        results: list[OptionScore | None] = [None] * len(requests)
        shared = common_prefix(contexts)
        prefix = None
        if shared:  # run once for all requests (the chat template's system turn)
            ids = torch.tensor([contexts[0][:shared]], device=self.device)
            prefix = self.decoder(ids, use_cache=True, compute_logits=False).past_key_values
            contexts = [c[shared:] for c in contexts]
        batches = option_batches(
            [len(c) for c in contexts], [len(m) for m in members], self.batch_size, desc, self.progress
        )
        for batch in batches:
            width = max(len(contexts[g]) for g in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, g in enumerate(batch):
                ids[i, width - len(contexts[g]) :] = torch.tensor(contexts[g])
                mask[i, width - len(contexts[g]) :] = 1
            embeds = self.decoder.embed(ids.to(self.device))
            opts = [[c for _, c in members[g]] for g in batch]
            scores = score_after_prefix(self.decoder, embeds, mask.to(self.device), opts, prefix)
            for g, row in zip(batch, scores, strict=True):
                for (r, _), s in zip(members[g], row, strict=True):
                    results[r] = s
        return results  # type: ignore[return-value]


def choice_accuracies(
    scores: Sequence[Sequence[OptionScore]], choices: Sequence[Sequence[str]], labels: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-example correctness under lighteval's three normalisations: ``acc`` (summed log-probability),
    ``acc_norm`` (``loglikelihood_acc_norm_nospace``: per character, a leading space not counted) and
    ``acc_norm_token`` (per token, ``LogProbTokenNorm``); argmax takes the first of tied choices as numpy does."""
    out: dict[str, list[bool]] = {"acc": [], "acc_norm": [], "acc_norm_token": []}
    for row, texts, gold in zip(scores, choices, labels, strict=True):
        summed = [s.logprob for s in row]
        out["acc"].append(int(np.argmax(summed)) == gold)
        out["acc_norm"].append(int(np.argmax(char_norm(summed, texts))) == gold)
        out["acc_norm_token"].append(int(np.argmax([s.logprob / s.n_tokens for s in row])) == gold)
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate_choice(
    task: str, data: TaskData[ChoiceExample], settings: EvalSettings, lm: DecoderLM | None = None
) -> dict:
    """Zero-shot multiple choice scored as lighteval scores it (see the module docstring); the headline is
    ``acc_norm`` (``loglikelihood_acc_norm_nospace``). Writes and returns the results as every evaluator does."""
    if settings.shots != [0]:
        raise ValueError("--scoring lighteval is zero-shot only (as the model card's numbers); use --shots 0")
    examples = limited(data.examples, settings.limit)
    for ex in examples:
        if ex.label is None:
            raise ValueError(f"{data.report.source}: example {ex.id} has no label; accuracy needs a labeled split")
        if len({ctx for ctx, _ in ex.options}) != 1:
            raise ValueError(f"{task}: lighteval scores one query per example; example {ex.id} has several contexts")
    lm = lm or DecoderLM.load(
        settings.checkpoint,
        device=device_of(settings.device),
        batch_size=settings.batch_size,
        dtype=getattr(torch, settings.dtype),
    )
    contexts = [lm.context(ex.options[0][0], settings.chat_template) for ex in examples]
    requests = [(ctx, cont) for ctx, ex in zip(contexts, examples, strict=True) for _, cont in ex.options]
    flat = lm.loglikelihood(requests, desc=f"{task} (lighteval)")
    scores, k = [], 0
    for ex in examples:
        scores.append(flat[k : k + len(ex.options)])
        k += len(ex.options)
    choices = [[cont for _, cont in ex.options] for ex in examples]
    labels = [ex.label for ex in examples]
    correct = choice_accuracies(scores, choices, labels)
    entry: dict = {"shots": 0, "mode": "causal", "n": len(examples)}
    for name, hits in correct.items():
        value = float(hits.mean()) if len(hits) else 0.0
        entry[name] = {"trials": [value], "mean": value, "std": 0.0}
    entry.update(metric="acc_norm (lighteval loglikelihood_acc_norm_nospace)", score=entry["acc_norm"]["mean"])
    predictions = []
    for ex, row, texts in zip(examples, scores, choices, strict=True):
        normed = char_norm([s.logprob for s in row], texts)
        predictions.append(
            {
                "id": ex.id,
                "shots": 0,
                "trial": 0,
                "prediction": int(np.argmax(normed)),
                "label": ex.label,
                "logprobs": [round(s.logprob, 4) for s in row],
                "tokens": [s.n_tokens for s in row],
            }
        )
    example_query = examples[0].options[0][0] if examples else "Question: {question}\nAnswer:"
    header = {
        "n": len(examples),
        "template": lm.context(example_query, settings.chat_template) + "[ option]" if examples else "",
        "scoring": {
            "style": "lighteval",
            "chat_template": settings.chat_template,
            "metric": "loglikelihood_acc_norm_nospace: summed log-probability / characters of the choice, a "
            "leading space not counted",
            "tokenization": "lighteval tok_encode_pair: the context's trailing whitespace moves to the continuation",
            "model": "the decoder alone",
            "dtype": settings.dtype,
            "source": SOURCE,
        },
        "data": data.report.to_dict(),
        "skipped": dict(data.report.skipped),
    }
    return finish(settings, f"{task}-lighteval", header, Outcome([entry], predictions))
