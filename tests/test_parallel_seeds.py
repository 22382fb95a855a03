"""--jobs: the seeds of the trained runs in parallel processes give the results of --jobs 1."""

import json

import pytest

from deepinv_deq.experiments import cli

TINY = ["--size", "tiny", "--seeds", "2", "--threads", "1", "--no-progress"]


def _runs(folder):
    return {
        (r["method"], r["regime"]): r
        for r in json.loads((folder / "demo.json").read_text())["runs"]
    }


@pytest.mark.slow
def test_parallel_seeds_give_the_sequential_results(tmp_path, capsys):
    assert cli.main(["demo", *TINY, "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["demo", *TINY, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = _runs(tmp_path / "one"), _runs(tmp_path / "two")
    assert one.keys() == two.keys()
    for key, run in one.items():
        assert run["psnr_mean"] == pytest.approx(two[key]["psnr_mean"], abs=1e-4), key
        assert run.get("fwd_converged") == two[key].get("fwd_converged"), key
    # every seed of each trained run was written by its own process, then aggregated
    for method, regime in (("deq", "ei"), ("deq-jfb", "ei"), ("deq", "sup")):
        folder = tmp_path / "two" / "ct" / f"{method}-{regime}"
        assert sorted(p.name for p in folder.glob("seed_*")) == ["seed_0", "seed_1"]
    # a second call finds everything done
    capsys.readouterr()
    assert cli.main(["demo", *TINY, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert "processes" not in capsys.readouterr().out


def test_jobs_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["demo", "--jobs", "0", "--out", str(tmp_path / "out")])
    assert error.value.code == 2
    assert "--jobs" in capsys.readouterr().err
