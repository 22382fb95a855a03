"""The ``deepinv-deq`` command line at a tiny size: outputs, resumption and option errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

import deepinv_deq

from deepinv_deq.experiments import cli, commands
from deepinv_deq.experiments.configs import METHODS

TINY = ["--size", "tiny", "--no-progress", "--threads", "1", "--jobs", "1"]


def _main(args, capsys):
    status = cli.main(args)
    return status, capsys.readouterr().out


def test_demo_writes_tables_and_figure(tmp_path, capsys, monkeypatch):
    # the demo's code path with three of its runs (the full list is the slow test below)
    monkeypatch.setattr(commands, "DEMO_RUNS", (("pinv", "none"), ("deq", "ei"), ("unet", "sup")))
    status, out = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0
    for name in ("demo.md", "demo.csv", "demo.json", "figure_ct.png", "experiment.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (
        "| CT | deq | EI (MC + EI) |" in out
        and "| CT | deq | EI (MC + EI) |" in (tmp_path / "demo.md").read_text()
    )
    with open(tmp_path / "demo.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["regime"]) for r in rows] == [
        ("deq", "ei"),
        ("unet", "sup"),
        ("pinv", "none"),
    ]
    runs = json.loads((tmp_path / "demo.json").read_text())["runs"]
    assert all(len(r["psnr"]) == 2 for r in runs)  # tiny: 2 test images
    assert (tmp_path / "figure_ct.png").read_bytes()[:4] == b"\x89PNG"
    # every figure written is listed, the training curves too
    written = next(line for line in out.splitlines() if line.startswith("written: "))
    assert str(tmp_path / "curves_ct.png") in written and (tmp_path / "curves_ct.png").exists()
    meta = json.loads((tmp_path / "experiment.json").read_text())
    assert meta["config"]["img_size"] == 16 and meta["command"].startswith("deepinv-deq demo")

    # rerun: every run is skipped and the table is identical
    status, out2 = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0 and out2.count("skipped") == 3
    assert json.loads((tmp_path / "demo.json").read_text())["runs"] == runs


def test_train_table_eval(tmp_path, capsys):
    args = [*TINY, "--out", str(tmp_path)]
    status, out = _main(
        ["train", "--task", "mri", "--method", "unrolled", "--regime", "mc", *args], capsys
    )
    assert status == 0 and (tmp_path / "mri" / "unrolled-mc" / "result.json").exists()
    # each train writes its own table: a second run into the same folder does not overwrite it
    assert (tmp_path / "results_train_mri_unrolled_mc.md").exists()
    status, out = _main(
        ["table", "--tasks", "mri", "--methods", "unrolled,pinv", "--regimes", "mc", *args], capsys
    )
    assert status == 0 and "skipped" in out  # the run trained above is reused
    assert (tmp_path / "results.md").exists() and (tmp_path / "figure_mri.png").exists()
    trained = json.loads((tmp_path / "mri" / "unrolled-mc" / "result.json").read_text())
    status, out = _main(["eval", "--out", str(tmp_path), "--threads", "1"], capsys)
    assert status == 0
    runs = json.loads((tmp_path / "eval.json").read_text())["runs"]
    again = next(r for r in runs if r["method"] == "unrolled")
    assert again["psnr"] == pytest.approx(trained["psnr"], abs=1e-4)  # same weights, same test data


@pytest.mark.slow
def test_eval_after_every_presets_table(tmp_path, capsys):
    # the folders a table writes for PnP and RED (denoiser_<sigma>) are not runs: on 0.2 eval
    # crashed on them with a traceback, as docs/results.rst told users to run it
    methods = ",".join(METHODS)
    args = [*TINY, "--tasks", "ct", "--methods", methods, "--regimes", "ei", "--out", str(tmp_path)]
    status, _ = _main(["table", *args], capsys)
    assert status == 0 and list((tmp_path / "ct").glob("denoiser_*"))
    status, out = _main(["eval", "--out", str(tmp_path), "--threads", "1"], capsys)
    assert status == 0 and "Traceback" not in out
    runs = json.loads((tmp_path / "eval.json").read_text())["runs"]
    assert {r["method"] for r in runs} == set(METHODS)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--task", "ct", "--method", "deqq", "--regime", "ei"],
            "argument --method: invalid choice",
        ),
        (
            ["train", "--task", "pet", "--method", "deq", "--regime", "ei"],
            "argument --task: invalid choice",
        ),
        (
            ["train", "--task", "ct", "--method", "deq", "--regime", "self"],
            "argument --regime: invalid choice",
        ),
        (["train", "--task", "ct", "--method", "deq"], "--regime is required"),
        (
            ["train", "--task", "ct", "--method", "pinv", "--regime", "sup"],
            "--regime: method 'pinv'",
        ),
        (["table", "--methods", "deq,foo"], "--methods must be one of"),
        (["demo", "--size", "huge"], "argument --size: invalid choice"),
        (["demo", "--img-size", "4"], "--img-size must be >= 8, got 4"),
        (["demo", "--threads", "0"], "argument --threads: must be >= 1"),
        (["demo", "-q", "-v"], "not allowed with argument"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_clearly(args, message, capsys, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--out", str(out)] if args[0] != "bogus" else args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    # one error line after the command's one-line usage (the subcommand's, not the top level's)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("deepinv-deq") and "error: " in lines[1], err
    if args[0] != "bogus":
        assert lines[0].startswith(f"usage: deepinv-deq {args[0]} ")
    assert "ExperimentConfig" not in err and "img_size" not in err  # the option as typed
    assert not out.exists()  # nothing was created


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_unavailable_is_an_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--device", "cuda", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--out", str(tmp_path)])
    assert e.value.code == 2 and "no trained run found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["--epochs", "5"], ["--lr=5"], ["--seed", "7"], ["--size", "tiny"]]
)
def test_eval_refuses_training_options(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--out", str(tmp_path), *option])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert (
        f"{option[0].split('=')[0]} is not an eval option" in err
        and "usage: deepinv-deq eval" in err
    )


@pytest.mark.parametrize("task, missing", [("ct", "metadata.csv"), ("mri", "*.h5")])
def test_data_folder_without_data_is_refused_before_anything_is_created(
    task, missing, tmp_path, capsys
):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    args = ["train", "--task", task, "--method", "deq", "--regime", "ei", *TINY]
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--data", str(empty), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--data: not usable for {task}" in err and missing in err, err
    assert not out.exists()


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in (
        (blocker, "exists and is not a folder"),
        (blocker / "sub", "cannot create"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", "--size", "tiny", "--out", str(out)])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    seen = {}

    def interrupted(cfg, out, runs, progress, log, args):
        seen.update(progress=progress, log=log)
        log("this message is hidden by -q")
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "train_runs", interrupted)
    status = cli.main(["demo", *TINY, "-q", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 130 and seen["progress"] is False
    assert captured.out == ""  # -q: no progress messages
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "resume" in lines[0], captured.err
    meta = json.loads((tmp_path / "experiment.json").read_text())  # the run can be resumed
    assert {"deepinv-deq", "deepinv", "torch", "device"} <= set(meta["versions"])


@pytest.mark.slow
def test_real_ctrl_c_leaves_a_resumable_run(tmp_path):
    """SIGINT during training: one line on stderr, exit 130, a checkpoint; the same command finishes."""
    import os
    import signal
    import subprocess
    import time

    args = ["train", "--task", "ct", "--method", "deq", "--regime", "ei", *TINY, "--epochs", "40"]
    args += ["--out", str(tmp_path)]
    # Ctrl-C as in a terminal, even when the test runner was started in the background (SIGINT ignored)
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from deepinv_deq.experiments import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(tmp_path.rglob("last*.pt")):  # a checkpoint exists: interrupt the training
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err
    assert not (tmp_path / "ct" / "deq-ei" / "result.json").exists()
    assert cli.main(args) == 0  # the same command resumes and finishes
    assert (tmp_path / "ct" / "deq-ei" / "result.json").exists()


def test_preset_table_lists_every_preset():
    from deepinv_deq.experiments.configs import PRESETS

    text, rst = cli.preset_table(), cli.preset_table("rst")
    for name, preset in PRESETS.items():
        assert any(
            line.split()[:2] == [name, str(preset["img_size"])] for line in text.splitlines()
        )
        assert f"   * - {name}\n" in rst
    with pytest.raises(ValueError, match="fmt"):
        cli.preset_table("html")


def test_every_option_has_help(capsys):
    for command in ("demo", "train", "eval", "table"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "size presets" in text or command == "eval"
    parser, parsers = cli._parser()
    for name, sub in parsers.items():
        for action in sub._actions:
            assert action.help, (name, action.option_strings)


# The launcher (the console script's entry point) must answer --help, --version and usage errors
# without importing torch or deepinv.
_LAUNCH = """
import json, sys
sys.path.append({launcher!r})  # a checkout without an install: the launcher's source
import _deepinv_deq_cli
try:
    status = _deepinv_deq_cli.main({argv!r})
except SystemExit as e:
    status = e.code
heavy = sorted(m for m in ("torch", "deepinv", "numpy") if m in sys.modules)
print(json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""


def _launch(run_python, argv):
    root = Path(__file__).parents[1]
    proc = run_python(_LAUNCH.format(launcher=str(root / "launcher"), argv=argv), check=False)
    *err, result = proc.stderr.strip().splitlines()
    return json.loads(result), proc.stdout, "\n".join(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["--version"],
        ["train", "--task", "ct", "--method", "deq"],
        ["demo", "--img-size", "4"],
        ["eval", "--epochs", "5"],
    ],
)
def test_launcher_parses_without_torch(run_python, argv):
    result, out, err = _launch(run_python, argv)
    assert result["heavy"] == [], result
    assert result["status"] == (0 if argv[-1] in ("--help", "--version") else 2)
    if argv == ["--version"]:
        assert out.startswith(f"deepinv-deq {deepinv_deq.__version__} (deepinv ")


def test_missing_data_folder_is_one_line_error_and_creates_nothing(run_python, tmp_path):
    out = tmp_path / "results"
    result, stdout, err = _launch(
        run_python, ["demo", "--data", "/nonexistent/folder", "--out", str(out)]
    )
    assert result == {"status": 2, "heavy": []}
    assert err.splitlines()[-1] == (
        "deepinv-deq demo: error: --data: no such folder: "
        "'/nonexistent/folder' (use 'phantoms' or a folder of real data)"
    )
    assert len(err.splitlines()) == 2 and stdout == ""
    assert not out.exists()


def test_console_script_is_installed_and_fast():
    # the installed `deepinv-deq` script goes through the launcher
    script = Path(sys.executable).parent / "deepinv-deq"
    if not script.exists():
        pytest.skip("no console script next to this interpreter (package not installed)")
    assert "_deepinv_deq_cli" in script.read_text()


def test_python_m_entry_point(run_python):
    proc = run_python(
        "import runpy, sys; sys.argv=['deepinv_deq', '--help']; "
        "runpy.run_module('deepinv_deq', run_name='__main__')",
        check=False,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert "{demo,train,eval,table,claims}" in proc.stdout


@pytest.mark.slow
def test_full_tiny_demo(tmp_path, capsys):
    status, out = _main(["demo", *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0
    rows = list(csv.DictReader(open(tmp_path / "demo.csv")))
    assert len(rows) == len(commands.DEMO_RUNS)


def _selected_runs(argv):
    parser, parsers = cli._parser()
    args, _ = parser.parse_known_args(argv)

    def error(message):
        raise AssertionError(message)

    return commands.selected_runs(args, error)


def test_gpu_preset_selects_id_vs_jfb_vs_supervised_on_ct():
    # issue 11: `table --size gpu` alone runs CT, deq / deq-jfb, sup / ei
    runs = _selected_runs(["table", "--size", "gpu"])
    assert sorted(runs) == sorted(("ct", m, r) for m in ("deq", "deq-jfb") for r in ("sup", "ei"))
    cfg = cli.ExperimentConfig.from_preset("gpu")
    assert (cfg.img_size, cfg.views) == (128, 50)
    # explicit options override the preset's choice, one by one
    runs = _selected_runs(["table", "--size", "gpu", "--methods", "deq,pinv"])
    assert sorted(runs) == [("ct", "deq", "ei"), ("ct", "deq", "sup"), ("ct", "pinv", "none")]
    assert {t for t, _, _ in _selected_runs(["table", "--size", "gpu", "--tasks", "all"])} == {
        "ct",
        "mri",
    }
    # other presets still select everything
    assert len(_selected_runs(["table", "--size", "cpu"])) > len(runs)
    # the help and the preset table say what it runs and that its time is not measured
    text = " ".join(cli.preset_table().split())
    gpu_note = text[text.index(" gpu: ") : text.index(" paper: ")]
    assert "deq-jfb" in gpu_note and "not measured" in gpu_note


def test_paper_preset_is_paper_like():
    from deepinv_deq.experiments.methods import build_denoiser

    cfg = cli.ExperimentConfig.from_preset("paper")
    assert cfg.tol <= 1e-4 and cfg.backward_tol <= 1e-4 and cfg.max_iter >= 100
    assert (cfg.img_size, cfg.views, cfg.seeds) == (128, 50, 3) and cfg.n_train >= 1000
    # a contractive start, not an identity: D = (1 - epsilon) x at initialisation
    small = cli.ExperimentConfig(**{**cfg.to_dict(), "img_size": 16, "width": 4, "depth": 2})
    denoiser = build_denoiser("ct", small)
    x = torch.rand(1, 1, 16, 16)
    assert cfg.epsilon > 0
    assert (denoiser(x, 0.05) - (1 - cfg.epsilon) * x).abs().max() < 1e-6


def test_extend_trains_a_finished_run_further(tmp_path, capsys):
    args = ["train", "--task", "ct", "--method", "deq", "--regime", "ei", *TINY]
    args += ["--out", str(tmp_path)]
    assert _main(args, capsys)[0] == 0
    seed = tmp_path / "ct" / "deq-ei" / "seed_0"
    first = json.loads((seed / "result.json").read_text())
    # a longer --epochs alone is refused, and the message says how to extend
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--epochs", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "epochs differ" in err and "--extend" in err
    with pytest.raises(SystemExit):
        cli.main([*args, "--epochs", "3", "--extend", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err
    status, out = _main([*args, "--epochs", "3", "--extend"], capsys)
    assert status == 0 and "extending from 1 to 3 epochs" in out
    result = json.loads((seed / "result.json").read_text())
    assert result["epochs"] == 3 and result["extended_from_epochs"] == [1]
    assert (seed / "result_epochs1.json").exists()
    history = json.loads((seed / "history.json").read_text())
    assert history["epochs_done"] == 3 and history["extended_at"] == [2]
    assert history["val_step"] == [2, 4, 6]
    # the training time counts both segments
    assert result["train_s"] > first["train_s"]
    stored = json.loads((tmp_path / "ct" / "deq-ei" / "config.json").read_text())
    assert stored["epochs"] == 3
    # fewer epochs cannot be an extension; the same number again is a finished run
    with pytest.raises(SystemExit):
        cli.main([*args, "--epochs", "2", "--extend"])
    assert "--epochs must be at least the stored run's 3" in capsys.readouterr().err
    status, out = _main([*args, "--epochs", "3", "--extend"], capsys)
    assert status == 0 and "skipped" in out


def test_runs_are_named_and_deepinv_chatter_is_quiet(tmp_path, capsys):
    args = ["table", "--tasks", "ct", "--methods", "deq,pinv", "--regimes", "sup"]
    status, out = _main([*args, *TINY[:2], "--threads", "1", "--out", str(tmp_path)], capsys)
    captured = out + capsys.readouterr().err
    assert status == 0
    assert "run 1/2: ct deq sup" in captured and "run 2/2: ct pinv" in captured
    for chatter in ("Update progress bar frequency", "trainable parameters"):
        assert chatter not in captured
    # folder and file names portable: no colons (timestamps) anywhere in the output
    assert all(":" not in p.name for p in tmp_path.rglob("*"))
