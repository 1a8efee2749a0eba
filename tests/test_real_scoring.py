"""lighteval-style multiple-choice scoring (eval/lighteval.py) and the fast scorer (eval/scoring.py
``score_after_prefix``) on tiny synthetic files and tiny random models: the metric by hand, lighteval's
tokenization and chat template, and equality with a naive full-logits computation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from data.tokenizer import Tokenizer
from eval.lighteval import (
    DecoderLM,
    char_norm,
    chat_context,
    choice_accuracies,
    common_prefix,
    hf_encoder,
    tok_encode_pair,
)
from eval.scoring import OptionScore, score_after_prefix
from metalm.config import DecoderConfig
from metalm.decoder import Decoder

TEMPLATE = (  # SmolLM2-135M-Instruct's chat template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "Question: How do I dry wet shoes?\nAnswer: stuff them with newspaper and leave them overnight.",
    "Question: Which is a mammal?\nAnswer: a whale, a dog, a bat, not a trout or a frog.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. user assistant system",
] * 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved by transformers, a BPE tokenizer with ChatML's special tokens, and the chat
    template: a transformers decoder directory as ``assets/smollm2`` is one."""
    out = tmp_path_factory.mktemp("decoder")
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    tok.backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(out)
    tok = Tokenizer.load(out)
    tiny_llama(vocab_size=tok.vocab_size, max_position_embeddings=256).save_pretrained(out)
    (out / "chat_template.jinja").write_text(TEMPLATE)
    return out


def test_char_norm_by_hand():
    # lighteval LogProbCharNorm(ignore_first_space=True): one leading space is not counted
    assert char_norm([-6.0, -4.0], [" abc", " abcdefg"]) == [-2.0, -4.0 / 7]
    assert char_norm([-6.0, -4.0], ["abc", "  ab"]) == [-2.0, -4.0 / 3]  # no space: all; two: one not counted
    assert char_norm([-6.0, -4.0], [" abc", " abcdefg"], ignore_first_space=False) == [-1.5, -0.5]
    with pytest.raises(ValueError, match="2 log-probabilities for 1 choices"):
        char_norm([-1.0, -2.0], [" a"])


def test_choice_accuracies_by_hand():
    # option 0: -3 over " ab" (2 chars, 1 token); option 1: -5 over " abcdef" (6 chars, 5 tokens)
    scores = [[OptionScore(-3.0, 1, False), OptionScore(-5.0, 5, False)]]
    choices = [[" ab", " abcdef"]]
    gold_1 = choice_accuracies(scores, choices, [1])
    # summed: -3 > -5 picks 0; per character: -1.5 < -0.83 picks 1; per token: -3 < -1 picks 1
    assert gold_1["acc"].tolist() == [False]
    assert gold_1["acc_norm"].tolist() == [True]
    assert gold_1["acc_norm_token"].tolist() == [True]
    tie = choice_accuracies([[OptionScore(-2.0, 1, False), OptionScore(-2.0, 1, False)]], [[" a", " b"]], [0])
    assert tie["acc"].tolist() == [True]  # numpy's argmax: the first of tied choices


def test_tok_encode_pair_moves_trailing_whitespace(model_dir):
    encode = hf_encoder(model_dir / "tokenizer.json")
    ctx, cont = tok_encode_pair(encode, "<|im_start|>assistant\n", " a whale")
    assert ctx == encode("<|im_start|>assistant")  # the newline goes with the continuation
    assert ctx + cont == encode("<|im_start|>assistant\n a whale")
    assert cont[0] == encode("\n")[0]
    ctx, cont = tok_encode_pair(encode, "Answer:", " a whale")
    assert ctx == encode("Answer:") and ctx + cont == encode("Answer: a whale")
    # the continuation merges with the context's last token: that token is scored as the continuation's
    ctx, cont = tok_encode_pair(encode, "Answer: wh", "ale")
    whole = encode("Answer: whale")
    if len(encode("Answer: wh")) == len(whole):
        assert ctx == whole[:-1] and cont == whole[-1:]
    else:
        assert ctx + cont == whole


def test_chat_context_and_special_tokens(model_dir):
    text = chat_context(TEMPLATE, "Question: Which is a mammal?\nAnswer:")
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nQuestion: Which is a mammal?\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    encode, ours = hf_encoder(model_dir / "tokenizer.json"), Tokenizer.load(model_dir)
    start = ours.backend.token_to_id("<|im_start|>")
    assert encode("<|im_start|>user") == [start, *encode("user")]  # one id, as transformers reads it
    assert start not in ours.encode("<|im_start|>user")  # our Tokenizer spells it out (user text never a special)
    lm = DecoderLM.load(model_dir, progress=False)
    assert lm.context("Q?", True) == chat_context(TEMPLATE, "Q?") and lm.context("Q?", False) == "Q?"


def test_common_prefix():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2], [1, 2]]) == 1  # each keeps a last position of its own
    assert common_prefix([[1], [2]]) == 0 and common_prefix([]) == 0


def naive(decoder: Decoder, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Full logits at every position of context + continuation, as transformers computes them."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = decoder(ids).logits[0].float()
    rows = logits[len(ctx) - 1 : len(ctx) + len(cont) - 1]
    target = torch.tensor(cont)
    logp = rows.log_softmax(-1).gather(1, target[:, None]).sum()
    return float(logp), bool((rows.argmax(-1) == target).all())


@pytest.mark.parametrize("shared", [0, 3])
def test_score_after_prefix_equals_full_logits(shared):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    cfg.positions, cfg.norm, cfg.mlp, cfg.attn_bias, cfg.mlp_bias, cfg.init_std = (
        "rotary",
        "rmsnorm",
        "swiglu",
        0,
        0,
        0.2,
    )
    decoder = Decoder(cfg).eval()
    g = torch.Generator().manual_seed(1)

    def rand(n: int) -> list[int]:
        return torch.randint(3, 61, (n,), generator=g).tolist()

    head = rand(shared)
    contexts = [rand(5), rand(2), rand(8)]
    options = [[rand(1), rand(4)], [rand(3)], [rand(2), rand(1), rand(6)]]
    width = max(map(len, contexts))
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, c in enumerate(contexts):
        ids[i, width - len(c) :], mask[i, width - len(c) :] = torch.tensor(c), 1
    prefix = None
    if shared:
        with torch.no_grad():
            prefix = decoder(torch.tensor([head]), use_cache=True, compute_logits=False).past_key_values
    got = score_after_prefix(decoder, decoder.embed(ids), mask, options, prefix)
    for c, opts, row in zip(contexts, options, got, strict=True):
        for cont, score in zip(opts, row, strict=True):
            want, greedy = naive(decoder, head + c, cont)
            assert score.logprob == pytest.approx(want, abs=1e-4)
            assert score.n_tokens == len(cont) and score.is_greedy == greedy


def write_piqa(tmp_path):
    rows = [
        {"goal": "How do I dry wet shoes?", "sol1": "stuff them with newspaper", "sol2": "put them in a frog"},
        {"goal": "Which is a mammal?", "sol1": "a trout", "sol2": "a whale"},
        {"goal": "How do I dry wet shoes?", "sol1": "leave them overnight", "sol2": "a bat"},
    ]
    data = tmp_path / "valid.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = tmp_path / "valid-labels.lst"
    labels.write_text("0\n1\n0\n")
    return data, labels, rows


@pytest.mark.parametrize("chat", [False, True])
def test_multiple_choice_lighteval_end_to_end(model_dir, tmp_path, chat):
    """The script with --scoring lighteval on a transformers directory: every option's log-probability equals
    transformers' own full-logits computation on lighteval's tokens, and acc_norm is the per-character argmax."""
    from transformers import LlamaForCausalLM

    from eval.multiple_choice import main

    data, labels, rows = write_piqa(tmp_path)
    out = tmp_path / "piqa.json"
    flags = ["--checkpoint", str(model_dir), "--task", "piqa", "--data", str(data), "--labels", str(labels)]
    flags += ["--scoring", "lighteval", "--out", str(out), "--device", "cpu", "--batch_size", "3"]
    result = main(flags + (["--chat_template"] if chat else []))
    preds = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    hf = LlamaForCausalLM.from_pretrained(model_dir).eval()
    encode = hf_encoder(model_dir / "tokenizer.json")
    hits = []
    for row, pred, gold in zip(rows, preds, [0, 1, 0], strict=True):
        query = f"Question: {row['goal']}\nAnswer:"
        context = chat_context(TEMPLATE, query) if chat else query
        choices = [" " + row["sol1"], " " + row["sol2"]]
        for choice, got in zip(choices, pred["logprobs"], strict=True):
            ctx, cont = tok_encode_pair(encode, context, choice)
            with torch.no_grad():
                logp = hf(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
            want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
            assert got == pytest.approx(want, abs=1e-3)
        normed = [lp / (len(c) - 1) for lp, c in zip(pred["logprobs"], choices, strict=True)]
        assert pred["prediction"] == normed.index(max(normed))
        hits.append(pred["prediction"] == gold)
    entry = result["results"][0]
    assert entry["acc_norm"]["mean"] == pytest.approx(sum(hits) / 3)
    assert entry["score"] == entry["acc_norm"]["mean"]
    assert result["scoring"]["chat_template"] is chat and result["n"] == 3
    assert ("<|im_start|>assistant" in result["template"]) is chat


def test_lighteval_flags_are_checked(model_dir, tmp_path):
    from eval.multiple_choice import main

    data, labels, _ = write_piqa(tmp_path)
    base = ["--checkpoint", str(model_dir), "--task", "piqa", "--data", str(data), "--labels", str(labels)]
    with pytest.raises(SystemExit):
        main(base + ["--chat_template"])  # only with --scoring lighteval
    with pytest.raises(SystemExit):
        main(base + ["--scoring", "nonsense"])
    with pytest.raises(ValueError, match="zero-shot"):
        main(base + ["--scoring", "lighteval", "--shots", "0,1", "--out", str(tmp_path / "x.json")])


def test_boolq_string_labels(tmp_path):
    """SuperGLUE BoolQ as some exports write it: ``"label": "true"`` / ``"false"`` strings."""
    from data.tasks import TaskDataError, read_boolq

    rows = [
        {"question": "q", "passage": "p", "idx": 0, "label": "true"},
        {"question": "q", "passage": "p", "label": "False"},
    ]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [ex.label for ex in read_boolq(path).examples] == [1, 0]
    path.write_text(json.dumps({"question": "q", "passage": "p", "label": "maybe"}) + "\n")
    with pytest.raises(TaskDataError, match="field 'label' is 'maybe'; expected true or false"):
        read_boolq(path)
