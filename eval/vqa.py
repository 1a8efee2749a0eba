"""Open-ended visual question answering: VQAv2 and OK-VQA from their published questions and annotations json
(the bundled world's VQA files use the same format), answered by generation and scored with the official VQA
accuracy (answers normalised as the official evaluation does; min(#humans that gave the answer / 3, 1) averaged
over the 10 leave-one-out subsets of the human answers).

    python eval/vqa.py --checkpoint runs/tiny/final --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --images val2014
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from eval/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.cli import base_parser  # noqa: E402

STOP = ("\n", "Question:")


def demo_answer(ex) -> str:
    """The answer a demonstration shows: the annotators' ``multiple_choice_answer``, else their most common one."""
    return ex.meta.get("multiple_choice_answer") or Counter(ex.answers).most_common(1)[0][0]


def run(args, data, demo_data=None, scorer=None, benchmark: str = "vqa") -> dict:
    """Answer every question of ``data`` (``TaskData`` of ``VQAExample``) and score it; returns the results dict."""
    from data.templates import QA_TEMPLATE, qa_prompt
    from eval.common import Query, answer, finish, limited, load_scorer, needs_pool, settings_from
    from eval.icl import Demo, shots_list
    from eval.metrics import vqa_score

    examples = limited(data.examples, args.limit)
    pool = [Demo(qa_prompt(ex.question, ex.image), " " + demo_answer(ex), ("demo", ex.question_id))
            for ex in (demo_data.examples if demo_data is not None else []) if ex.answers]  # fmt: skip
    needs_pool(args, pool)
    queries = [Query(ex.question_id, qa_prompt(ex.question, ex.image)) for ex in examples]
    annotated = bool(examples) and all(ex.answers for ex in examples)
    ids = [ex.question_id for ex in examples]

    def metric(answers: list[str]) -> dict[str, float]:
        if not annotated:
            return {}
        scores = vqa_score(dict(zip(ids, answers, strict=True)), {ex.question_id: ex.answers for ex in examples},
                           {ex.question_id: ex.answer_type or "all" for ex in examples})  # fmt: skip
        return {"vqa_accuracy": scores["overall"]} | {f"vqa_accuracy/{t}": v
                                                      for t, v in scores["per_answer_type"].items()}  # fmt: skip

    settings = settings_from(args, STOP)
    headline = "vqa_accuracy" if annotated else None
    outcome = answer(scorer or load_scorer(args), queries, pool, shots_list(args.shots), args.trials, args.seed,
                     settings, metric, headline, args.icl_mode, args.encode_input)  # fmt: skip
    header = {"n": len(examples), "template": f"<image> {QA_TEMPLATE} [answer]", "decoding": settings.to_dict(),
              "answer_normalisation": "official VQA evaluation (punctuation, digits, articles, contractions)",
              "data": data.report.to_dict(), "skipped": dict(data.report.skipped)}  # fmt: skip
    if not annotated:
        header["note"] = "no annotations: predictions only (see the submission file)"
    result = finish(args, benchmark, header, outcome)
    if not annotated:
        first = [p for p in outcome.predictions if p["trial"] == 0 and p["shots"] == shots_list(args.shots)[0]]
        sub = Path(result["predictions"]).with_suffix(".submission.json")
        sub.write_text(json.dumps([{"question_id": p["id"], "answer": p["prediction"]} for p in first]) + "\n")
        print(f"submission file (official results format): {sub}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0], generative=True)
    p.set_defaults(max_new_tokens=8)
    p.add_argument("--benchmark", default="vqav2", help="name in the results (vqav2, okvqa, ...)")
    p.add_argument("--questions", required=True, help="questions json ({'questions': [...], 'data_subtype': ...})")
    p.add_argument("--annotations", default=None, help="annotations json; leave out for a test split")
    p.add_argument("--images", required=True, help="image directory (COCO_<subtype>_<id:012d>.jpg or <subtype>/...)")
    p.add_argument("--image-name", default=None, help="file name template with {image_id} and {subtype}")
    p.add_argument("--demo-questions", default=None, help="questions json to draw in-context demonstrations from")
    p.add_argument("--demo-annotations", default=None)
    p.add_argument("--demo-images", default=None, help="image directory of the demonstrations (default: --images)")
    args = p.parse_args(argv)
    from data.tasks import read_vqa

    data = read_vqa(args.questions, args.annotations, args.images, args.image_name, on_error=args.on_error)
    demos = None
    if args.demo_questions:
        if not args.demo_annotations:
            p.error("--demo-questions needs --demo-annotations (demonstrations show their answers)")
        demos = read_vqa(args.demo_questions, args.demo_annotations, args.demo_images or args.images, args.image_name,
                         on_error=args.on_error)  # fmt: skip
    return run(args, data, demos, benchmark=args.benchmark)


if __name__ == "__main__":
    main()
