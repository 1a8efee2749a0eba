"""eval/language_small.py: the seeded train / held-out split of a labeled tsv, and perplexity after a span read
causally, through the text encoder, or dropped, scored on the same tokens in every arm."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from test_own_tokenizer import own_model, wordpiece
from test_pipeline import documents

from data.tokenizer import Tokenizer
from eval.language_small import (
    CALIBRATION_COLUMNS,
    draw_span,
    line_documents,
    report,
    span_perplexity,
    split_tsv,
    windows,
)


def test_split_is_seeded_disjoint_and_keeps_every_row_and_the_header(tmp_path):
    rows = [f"sentence {i}\t{i % 2}\n" for i in range(50)]
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(rows))
    counts = split_tsv(data, 30, seed=3, out_dir=tmp_path / "a")
    assert (counts["train"], counts["heldout"]) == (30, 20)
    train = (tmp_path / "a" / "train.tsv").read_text().splitlines(keepends=True)
    held = (tmp_path / "a" / "heldout.tsv").read_text().splitlines(keepends=True)
    assert train[0] == held[0] == "sentence\tlabel\n"
    assert sorted(train[1:] + held[1:]) == sorted(rows) and not set(train[1:]) & set(held[1:])
    split_tsv(data, 30, seed=3, out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "train.tsv").read_text() == "".join(train)
    split_tsv(data, 30, seed=4, out_dir=tmp_path / "c")
    assert (tmp_path / "c" / "train.tsv").read_text() != "".join(train)
    with pytest.raises(ValueError, match="--train 50: expected between 1 and 49"):
        split_tsv(data, 50, seed=0, out_dir=tmp_path / "d")


def test_line_documents_keep_every_nonempty_line_in_order(tmp_path):
    text = tmp_path / "ptb.txt"
    text.write_text("".join(f" line {i} \n" + ("\n" if i % 3 == 0 else "") for i in range(7)))
    assert line_documents(text, 3, tmp_path / "docs.jsonl") == 3
    docs = [json.loads(line)["text"] for line in (tmp_path / "docs.jsonl").read_text().splitlines()]
    assert docs == ["line 0\nline 1\nline 2", "line 3\nline 4\nline 5", "line 6"]
    with pytest.raises(ValueError, match="--lines 0"):
        line_documents(text, 0, tmp_path / "x.jsonl")


def test_spans_start_in_the_first_quarter_and_leave_text_after_them():
    for i in range(200):
        start, end = draw_span(32, 4, 8, random.Random(i))
        assert 1 <= start <= 8 and 4 <= end - start <= 8 and end < 32
    with pytest.raises(ValueError, match="do not fit a 32-token window"):
        draw_span(32, 4, 24, random.Random(0))
    assert [len(w) for w in windows(list(range(70)), 32, 0)] == [32, 32]
    assert windows(list(range(70)), 32, 1) == [list(range(32))]


@pytest.fixture(scope="module")
def parts():
    docs = documents(0)
    texts = [next(docs)["text"] for _ in range(200)]
    tokenizer = Tokenizer.train(texts, vocab_size=300)
    model = own_model(tokenizer, wordpiece(texts), positions=64, max_len=64)
    return model, tokenizer, " ".join(texts[:40])


def manual_nll(model, rows: list[list[int]], firsts: list[int]) -> float:
    """Mean NLL of ``row[first:]`` for each row, each row through the decoder alone."""
    total, n = 0.0, 0
    for row, first in zip(rows, firsts, strict=True):
        with torch.no_grad():
            logp = model.decoder(torch.tensor([row])).logits[0].log_softmax(-1)
        for t in range(first, len(row)):
            total -= float(logp[t - 1, row[t]])
            n += 1
    return total / n


def test_each_arm_scores_the_same_tokens_and_the_causal_and_dropped_arms_are_plain_forwards(parts):
    model, tokenizer, text = parts
    got = span_perplexity(model, tokenizer, text, window=32, span_min=4, span_max=8, seed=1, limit=6, batch_size=4)
    pieces = windows(tokenizer.encode(text), 32, 6)
    spans = [draw_span(32, 4, 8, random.Random(1 * 100_003 + i)) for i in range(len(pieces))]
    causal = manual_nll(model, pieces, [e for _, e in spans])
    dropped = manual_nll(model, [w[:s] + w[e:] for w, (s, e) in zip(pieces, spans, strict=True)], [s for s, _ in spans])
    assert got["tokens_scored"] == sum(32 - e for _, e in spans)
    assert got["nll"]["causal"] == pytest.approx(causal, abs=1e-4)
    assert got["nll"]["dropped"] == pytest.approx(dropped, abs=1e-4)
    assert got["perplexity"]["encoder"] == pytest.approx(math.exp(got["nll"]["encoder"]))


def test_only_the_encoder_arm_reads_the_encoder(parts):
    model, tokenizer, text = parts
    kw = dict(window=32, span_min=4, span_max=8, seed=0, limit=4, batch_size=4)
    before = span_perplexity(model, tokenizer, text, **kw)
    connector = next(model.connectors["text"].parameters())
    saved = connector.detach().clone()
    try:
        with torch.no_grad():  # new random weights: scaling them would barely show through the pre-norm blocks
            connector.copy_(torch.randn(connector.shape, generator=torch.Generator().manual_seed(1)))
        after = span_perplexity(model, tokenizer, text, **kw)
    finally:
        with torch.no_grad():
            connector.copy_(saved)
    assert after["nll"]["causal"] == before["nll"]["causal"]
    assert after["nll"]["dropped"] == before["nll"]["dropped"]
    assert abs(after["nll"]["encoder"] - before["nll"]["encoder"]) > 1e-3
    assert abs(after["nll"]["encoder_other"] - before["nll"]["encoder_other"]) > 1e-3


def test_the_control_arm_reads_another_windows_span(parts):
    """``encoder_other`` reads window i + 1's span in window i: with one window that is its own span."""
    model, tokenizer, text = parts
    kw = dict(window=32, span_min=4, span_max=8, seed=0, batch_size=4)
    one = span_perplexity(model, tokenizer, text, limit=1, **kw)
    assert one["nll"]["encoder_other"] == pytest.approx(one["nll"]["encoder"], abs=1e-6)
    many = span_perplexity(model, tokenizer, text, limit=4, **kw)
    assert abs(many["nll"]["encoder_other"] - many["nll"]["encoder"]) > 1e-4


def test_a_model_without_a_text_encoder_has_no_encoder_arm(parts):
    model, tokenizer, text = parts
    with pytest.raises(ValueError, match="the encoder arm needs a text encoder"):
        span_perplexity(model.__class__(model.config.__class__(model.config.decoder, {})), tokenizer, text, 32, 4, 8)


def test_report_tables_average_the_seeds_and_trials(tmp_path):
    def glue(scores: dict[int, list[float]]) -> dict:
        rows = [
            {"shots": k, **{c: {"trials": t, "mean": sum(t) / len(t)} for c in CALIBRATION_COLUMNS}}
            for k, t in scores.items()
        ]
        return {"n": 10, "results": rows}

    ppl = {"perplexity": {"causal": 10.0, "encoder": 20.0, "dropped": 30.0}, "tokens_scored": 99, "windows": 3}
    ppl.update(window=32, span_min=4, span_max=8, seed=0)
    (tmp_path / "ppl-metalm-warmed.json").write_text(json.dumps(ppl))
    for seed, acc in enumerate([0.8, 0.9]):
        (tmp_path / f"ft-metalm-frozen-s{seed}.json").write_text(json.dumps(glue({0: [acc]})))
    (tmp_path / "icl-smollm2-causal.json").write_text(json.dumps(glue({0: [0.5], 4: [0.6, 0.7, 0.8]})))
    table = report(tmp_path)
    assert "| language-small, after the warm-up | 10.00 | 20.00 | 30.00 |" in table
    assert "(n = 10) | 2 | 85.0 ± 5.0 | 85.0 ± 5.0 | 85.0 ± 5.0 |" in table
    assert "| 4 | 70.0 ± 8.2 | 70.0 ± 8.2 | 70.0 ± 8.2 |" in table
    assert report(tmp_path / "empty").startswith("no results")
