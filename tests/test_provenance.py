"""Each run's summary.json records what produced it: package versions, Python, CPU and threads."""

import importlib.metadata
import json

import torch

from train.loop import write_summary
from train.provenance import package_versions


def test_summary_records_the_package_versions_and_machine(tmp_path):
    write_summary(tmp_path, {"steps": 3})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3
    env = summary["environment"]
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["python"].count(".") == 2 and env["processor"]


def test_a_missing_package_is_named_not_an_error():
    assert package_versions(("torch", "no-such-package-here")) == {
        "torch": importlib.metadata.version("torch"),
        "no-such-package-here": "not installed",
    }
