"""benchmarks/device_check.py: its pieces, cheaply (CI also runs its --smoke mode whole)."""

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_part_is_recorded_and_the_others_run(device_check):
    def broken():
        raise RuntimeError("no kernel image")

    part = device_check._guarded(broken)
    assert part["ok"] is False and part["error"] == ["RuntimeError: no kernel image"]
    assert "seconds" in part and "Traceback" in part["traceback"]


def test_host_synchronisations_are_not_applicable_on_cpu(device_check):
    part = device_check.part_syncs("cpu", smoke=True)
    assert part == {"ok": True, "applicable": False, "note": part["note"]}


def test_markdown_summary_lists_every_part_and_the_tables(device_check):
    summary = {
        "device": "cuda",
        "smoke": False,
        "machine": "H100",
        "torch": "2.14",
        "date": "today",
        "parts": {
            "tests": {"ok": True, "seconds": 3.0, "summary": "12 passed"},
            "benchmarks": {
                "ok": False,
                "seconds": 1.0,
                "forward": {"ok": True, "table": ["| a |"]},
            },
        },
    }
    text = device_check.markdown(summary)
    assert "| tests | True | 3.0 |" in text and "| benchmarks | False |" in text
    assert "## forward" in text and "| a |" in text
    json.dumps(summary)  # the JSON summary is plain data


def test_bad_arguments(device_check, tmp_path, capsys):
    assert device_check.main(["--device", "cpu", "--parts", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown part" in capsys.readouterr().err
    assert device_check.main(["--device", "cpu", "--parts", "syncs", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "device_check.json").read_text())
    assert list(summary["parts"]) == ["syncs"] and (tmp_path / "device_check.md").exists()
