"""eval/report.py: its Markdown and plot from a results structure like the one its run produces, the text tokens
each model's pretraining reads (the GPT's matched to MetaLM's), and instruction scores over templates."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from data.batch import Batch
from eval.report import (
    batch_text_tokens,
    count_text_tokens,
    instruction_eval,
    pretrain_config,
    template_summary,
    write_markdown,
)


def entry(shots: int, **means) -> dict:
    return {"shots": shots, **{k: {"trials": [v], "mean": v, "std": 0.01 * shots} for k, v in means.items()}}


def summary(mean: float, best: float, which: int) -> dict:
    return {"mean": mean, "best": best, "best_template": which, "templates": [mean, best]}


def test_report_tables_and_plot(tmp_path):
    icl = {
        key: {
            "entail": {"results": [entry(k, none=0.5, contextual=0.55, prototypical=0.6) for k in (0, 1, 4)]},
            "choice": {"results": [entry(k, acc=0.3 + 0.1 * k) for k in (0, 1, 4)]},
        }
        for key in ("gpt/causal", "metalm/causal", "metalm/encoder")
    }
    tokens = {"batch_size": 16, "seq_len": 256}
    report = {
        "settings": {
            "steps": 480,
            "seed": 0,
            "finetune_steps": 200,
            "limit": 200,
            "trials": 3,
            "instruct_steps": 300,
            "heldout_tasks": "yesno,count",
            "instruct_limit": 60,
        },
        "text_tokens": {
            "metalm": {
                **tokens,
                "steps": 480,
                "text_tokens": 1242923,
                "document_tokens": 614400,
                "caption_tokens": 628523,
            },
            "gpt": {**tokens, "steps": 304, "text_tokens": 1245184, "document_tokens": 1245184, "caption_tokens": 0},
        },
        "minutes": 31.0,
        "in_context": icl,
        "captions": {
            s: {"results": [entry(0, cider_d=2.0, bleu_4=0.5, shapes_named=0.6, colors_named=0.7)]}
            for s in ("val", "heldout")
        },
        "finetuned": {
            "metalm/entail": {"results": [entry(0, none=0.9)]},
            "metalm-frozen/entail": {"results": [entry(0, none=0.7)]},
            "gpt/entail": {"results": [entry(0, none=0.8)]},
            "metalm/vqa-val": {"results": [entry(0, vqa_accuracy=0.7)]},
        },
        "instructions": {
            "after": {
                "count": {
                    "exact_match": summary(0.1, 0.2, 3),
                    "rank_classification": summary(0.6, 0.75, 1),
                    "chance": 1 / 3,
                    "majority": 0.43,
                }
            }
        },
    }
    out = write_markdown(report, tmp_path)
    text = out.read_text()
    assert "| metalm | entail | accuracy | 0.900 |" in text and "| gpt | entail | accuracy | 0.800 |" in text
    assert "| metalm (decoder frozen) | entail | accuracy | 0.700 |" in text
    assert "| metalm | vqa-val | VQA accuracy | 0.700 |" in text
    assert "| metalm/encoder | 4 | 0.500 ± 0.040 | 0.550 ± 0.040 | 0.600 ± 0.040 | 0.700 ± 0.040 |" in text
    assert "| heldout | 2.000 | 0.500 | 0.600 | 0.700 | – |" in text
    assert "MetaLM 1,242,923 in 480 steps" in text and "the GPT 1,245,184 of documents in 304 steps" in text
    assert "| count | after tuning | 0.100 | 0.200 (3) | 0.600 | 0.750 (1) | 0.333 | 0.430 |" in text
    assert "Produced by `python eval/report.py` in 31 minutes on CPU." in text
    assert (tmp_path / "report-icl.png").stat().st_size > 1000
    report["settings"].update(metalm="runs/tiny/final", reuse=True, instruct_steps=0)
    text = write_markdown(report, tmp_path).read_text()
    assert "`python eval/report.py --metalm runs/tiny/final --reuse --instruct_steps 0` in 31 minutes" in text


def test_template_summary_mean_and_best():
    entries = [
        {"option_accuracy/yesno": {"trials": [v], "mean": v, "std": 0.0}, "exact_match/yesno": e}
        for v, e in ((0.5, 0.0), (0.7, 0.2), (0.6, 0.1))
    ]
    rank = template_summary(entries, "option_accuracy/yesno")
    assert rank["mean"] == pytest.approx(0.6) and rank["best"] == 0.7 and rank["best_template"] == 1
    exact = template_summary(entries, "exact_match/yesno")
    assert exact["templates"] == [0.0, 0.2, 0.1] and exact["best_template"] == 1
    missing = template_summary(entries, "option_accuracy/count")
    assert math.isnan(missing["mean"]) and missing["best_template"] is None


def test_batch_text_tokens_leaves_out_image_positions():
    tok = SimpleNamespace(image_start_id=5, image_end_id=6, vec_id=7)
    ids = torch.tensor(
        [
            [10, 11, 12, 13, 14, 15, 16, 17],  # a document row, full
            [5, 7, 7, 6, 20, 21, 1, 0],  # <image> 2 vectors </image>, a caption of 2 tokens and </s>, one pad
            [5, 7, 7, 6, 30, 5, 7, 7],  # two images (the second cut at the row's end: its </image> is not in it)
        ]
    )
    mask = torch.tensor([[1] * 8, [1] * 7 + [0], [1] * 8])
    batch = Batch(ids, ids.masked_fill(mask == 0, -100), mask)
    # row 1: 7 real - 2 markers - 2 vectors = 3; row 2: 8 real - 3 markers - 2 x 2 vectors = 1
    assert batch_text_tokens(batch, tok, image_tokens=2) == (8, 4)


@pytest.fixture(scope="module")
def own_world(tmp_path_factory):
    """A small world of this module's own: counting tokens writes a tokenizer and shards into it."""
    from data.world import generate_world

    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(out, seed=3, n_train=40, n_val=8, n_test=2, n_heldout=4, n_docs=20)
    return out


def test_gpt_reads_as_many_text_tokens_as_metalm(own_world):
    args = SimpleNamespace(world=str(own_world), seed=0)
    small = {"seq_len": 64, "batch_size": 4, "vocab_size": 400}
    metalm = count_text_tokens(pretrain_config(args, 3, **small), steps=3)
    # round(4 x 0.3) = 1 of the 4 rows is a full document row; the rest are image-text rows
    assert metalm["steps"] == 3 and metalm["document_tokens"] == 3 * 64
    assert metalm["caption_tokens"] > 0
    assert metalm["text_tokens"] == metalm["document_tokens"] + metalm["caption_tokens"]
    gpt_cfg = pretrain_config(args, 1, preset="tiny-gpt", vision_warmup_steps=0, **small)
    gpt = count_text_tokens(gpt_cfg, target=metalm["text_tokens"])
    per_step = 4 * 64  # the GPT's rows are all full document rows
    assert gpt["caption_tokens"] == 0 and gpt["text_tokens"] == gpt["steps"] * per_step
    assert gpt["steps"] == -(-metalm["text_tokens"] // per_step)  # the fewest steps that reach MetaLM's count
    assert count_text_tokens(gpt_cfg, steps=gpt["steps"]) == gpt
    with pytest.raises(ValueError, match="give steps or target"):
        count_text_tokens(gpt_cfg)


def test_instruction_eval_over_every_template(world, pretrained, tmp_path):
    from data.templates import INSTRUCTION_TEMPLATES

    args = SimpleNamespace(world=str(world), seed=0, heldout_tasks="yesno,count", instruct_limit=2)
    table = instruction_eval(args, {"before": pretrained}, tmp_path)
    for task in ("yesno", "count"):
        row = table["before"][task]
        assert len(row["exact_match"]["templates"]) == len(INSTRUCTION_TEMPLATES)
        rank = row["rank_classification"]
        assert min(rank["templates"]) <= rank["mean"] <= rank["best"] == max(rank["templates"])
        assert rank["templates"][rank["best_template"]] == rank["best"]
        assert 0 < row["chance"] < 1
    assert len(list(tmp_path.glob("instruct-before-template*.json"))) == len(INSTRUCTION_TEMPLATES)
