"""eval/report.py's Markdown and plot from a results structure like the one its run produces."""

from __future__ import annotations

from eval.report import write_markdown


def entry(shots: int, **means) -> dict:
    return {"shots": shots, **{k: {"trials": [v], "mean": v, "std": 0.01 * shots} for k, v in means.items()}}


def test_report_tables_and_plot(tmp_path):
    icl = {
        key: {
            "entail": {"results": [entry(k, none=0.5, contextual=0.55, prototypical=0.6) for k in (0, 1, 4)]},
            "choice": {"results": [entry(k, acc=0.3 + 0.1 * k) for k in (0, 1, 4)]},
        }
        for key in ("gpt/causal", "metalm/causal", "metalm/encoder")
    }
    report = {
        "settings": {"steps": 480, "seed": 0, "finetune_steps": 200, "limit": 200, "trials": 3},
        "minutes": 31.0,
        "in_context": icl,
        "captions": {
            s: {"results": [entry(0, cider_d=2.0, bleu_4=0.5, shapes_named=0.6, colors_named=0.7)]}
            for s in ("val", "heldout")
        },
        "finetuned": {
            "metalm/entail": {"results": [entry(0, none=0.9)]},
            "gpt/entail": {"results": [entry(0, none=0.8)]},
            "metalm/vqa-val": {"results": [entry(0, vqa_accuracy=0.7)]},
        },
    }
    out = write_markdown(report, tmp_path)
    text = out.read_text()
    assert "| metalm | entail | accuracy | 0.900 |" in text and "| gpt | entail | accuracy | 0.800 |" in text
    assert "| metalm | vqa-val | VQA accuracy | 0.700 |" in text
    assert "| metalm/encoder | 4 | 0.500 ± 0.040 | 0.550 ± 0.040 | 0.600 ± 0.040 | 0.700 ± 0.040 |" in text
    assert "| heldout | 2.000 | 0.500 | 0.600 | 0.700 | – |" in text
    assert (tmp_path / "report-icl.png").stat().st_size > 1000
