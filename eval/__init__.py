"""Evaluation: a library (``eval.evaluators``: one evaluator per task kind, instruction following, the bundled
world) over shared scoring, in-context prompting, calibration and metrics, and one thin script per benchmark."""
