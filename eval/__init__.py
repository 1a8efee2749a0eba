"""Evaluation: one script per benchmark over shared scoring (finetuning, zero-shot and in-context regimes)."""
