"""The ``deepinv-deq`` command line at a tiny size: outputs, resumption and option errors."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from deepinv_deq.experiments import cli

TINY = ["--size", "tiny", "--no-progress", "--threads", "1"]


def _main(args, capsys):
    status = cli.main(args)
    return status, capsys.readouterr().out


def test_demo_writes_tables_and_figure(tmp_path, capsys, monkeypatch):
    # the demo's code path with three of its runs (the full list is the slow test below)
    monkeypatch.setattr(cli, "DEMO_RUNS", (("pinv", "none"), ("deq", "ei"), ("unet", "sup")))
    status, out = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0
    for name in ("demo.md", "demo.csv", "demo.json", "figure_ct.png", "experiment.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| CT | deq | EI (MC + EI) |" in out and "| CT | deq | EI (MC + EI) |" in (tmp_path / "demo.md").read_text()
    with open(tmp_path / "demo.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["regime"]) for r in rows] == [("deq", "ei"), ("unet", "sup"), ("pinv", "none")]
    runs = json.loads((tmp_path / "demo.json").read_text())["runs"]
    assert all(len(r["psnr"]) == 2 for r in runs)  # tiny: 2 test images
    assert (tmp_path / "figure_ct.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((tmp_path / "experiment.json").read_text())
    assert meta["config"]["img_size"] == 16 and meta["command"].startswith("deepinv-deq demo")

    # rerun: every run is skipped and the table is identical
    status, out2 = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0 and out2.count("skipped") == 3
    assert json.loads((tmp_path / "demo.json").read_text())["runs"] == runs


def test_train_table_eval(tmp_path, capsys):
    args = [*TINY, "--out", str(tmp_path)]
    status, out = _main(["train", "--task", "mri", "--method", "unrolled", "--regime", "mc", *args], capsys)
    assert status == 0 and (tmp_path / "mri" / "unrolled-mc" / "result.json").exists()
    status, out = _main(["table", "--tasks", "mri", "--methods", "unrolled,pinv", "--regimes", "mc", *args], capsys)
    assert status == 0 and "skipped" in out  # the run trained above is reused
    assert (tmp_path / "results.md").exists() and (tmp_path / "figure_mri.png").exists()
    trained = json.loads((tmp_path / "mri" / "unrolled-mc" / "result.json").read_text())
    status, out = _main(["eval", "--out", str(tmp_path), "--threads", "1"], capsys)
    assert status == 0
    runs = json.loads((tmp_path / "eval.json").read_text())["runs"]
    again = next(r for r in runs if r["method"] == "unrolled")
    assert again["psnr"] == pytest.approx(trained["psnr"], abs=1e-4)  # same weights, same test data


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "ct", "--method", "deqq", "--regime", "ei"], "method"),
        (["train", "--task", "pet", "--method", "deq", "--regime", "ei"], "task"),
        (["train", "--task", "ct", "--method", "deq", "--regime", "self"], "regime"),
        (["train", "--task", "ct", "--method", "pinv", "--regime", "sup"], "no regime"),
        (["table", "--methods", "deq,foo"], "methods"),
        (["demo", "--size", "huge"], "invalid choice"),
        (["demo", "--img-size", "4"], "img_size"),
        (["demo", "--threads", "0"], "threads"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_clearly(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--out", str(tmp_path)] if args[0] != "bogus" else args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ct").exists()  # nothing ran


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA present")
def test_cuda_unavailable_is_an_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--device", "cuda", "--out", str(tmp_path)])
    assert "CUDA is not available" in capsys.readouterr().err


def test_eval_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no run found"):
        cli.main(["eval", "--out", str(tmp_path)])


def test_python_m_entry_point(run_python):
    proc = run_python("import runpy, sys; sys.argv=['deepinv_deq', '--help']; "
                      "runpy.run_module('deepinv_deq', run_name='__main__')", check=False,
                      cwd=__import__("pathlib").Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "{demo,train,eval,table}" in proc.stdout


@pytest.mark.slow
def test_full_tiny_demo(tmp_path, capsys):
    status, out = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0
    rows = list(csv.DictReader(open(tmp_path / "demo.csv")))
    assert len(rows) == len(cli.DEMO_RUNS)
