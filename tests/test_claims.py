"""The paper's claims across configurations: verdicts, the judged table, and ``deepinv-deq claims``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deepinv_deq.experiments import claims, cli
from deepinv_deq.experiments.claims import CLAIMS, Claim, judge, validation_gap
from deepinv_deq.experiments.configurations import CONFIGURATIONS


def _run(method, regime, psnr_seeds, equivariance=None, fwd=1.0):
    seeds = list(range(len(psnr_seeds)))
    per_seed = [
        dict(seed=s, equivariance=e) for s, e in zip(seeds, equivariance or [], strict=False)
    ]
    return dict(
        task="ct",
        method=method,
        regime=regime,
        seeds=seeds,
        psnr_seeds=list(psnr_seeds),
        per_seed=per_seed,
        fwd_converged=fwd,
    )


def test_verdict_follows_the_interval_and_the_threshold():
    above = Claim("c", "a beats b", ("a", "ei"), ("b", "ei"))
    d = lambda mean, lo, hi: dict(mean=mean, lo=lo, hi=hi, n=3, diffs=[])  # noqa: E731
    assert above.verdict(d(0.5, 0.2, 0.8)) == "holds"
    assert above.verdict(d(-0.5, -0.8, -0.2)) == "fails"
    assert above.verdict(d(0.1, -0.2, 0.4)) == "unresolved"
    within = Claim("w", "within 1 dB", ("a", "ei"), ("b", "sup"), threshold=-1.0)
    assert within.verdict(d(-0.5, -0.9, -0.1)) == "holds"
    assert within.verdict(d(-2.0, -2.5, -1.5)) == "fails"
    assert within.verdict(d(-1.0, -1.4, -0.6)) == "unresolved"
    below = Claim("e", "a less than b", ("a", "ei"), ("b", "sup"), key="equivariance", sign=-1)
    assert below.verdict(d(-0.01, -0.02, -0.005)) == "holds"
    assert below.verdict(d(0.01, 0.005, 0.02)) == "fails"
    # one seed or no shared seed: nothing can be concluded
    assert above.verdict(dict(mean=3.0, lo=math.nan, hi=math.nan, n=1, diffs=[3.0])) == "unresolved"
    assert above.verdict(None) == "unresolved"


def test_judge_pairs_seeds_and_reports_converged_fractions():
    runs = [
        _run("deq", "ei", [28.0, 28.2, 28.1], equivariance=[0.010, 0.012, 0.011]),
        _run("deq-jfb", "ei", [27.0, 27.3, 27.0]),
        _run("deq", "sup", [30.0, 30.5, 30.2], equivariance=[0.020, 0.021, 0.025], fwd=0.9),
        _run("pinv", "none", [25.0]),
    ]
    rows = {r["claim"]: r for r in judge({"cfg": runs})}
    # only the claims whose two runs exist
    assert set(rows) == {"id_vs_jfb", "ei_vs_sup", "equivariance"}
    jfb = rows["id_vs_jfb"]
    assert jfb["diffs"] == pytest.approx([1.0, 0.9, 1.1])
    assert jfb["mean"] == pytest.approx(1.0) and jfb["verdict"] == "holds"
    # t(2) = 4.303, sd = 0.1: half-width 4.303 * 0.1 / sqrt(3)
    assert jfb["hi"] - jfb["mean"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    sup = rows["ei_vs_sup"]
    assert sup["mean"] == pytest.approx(-2.1333333) and sup["verdict"] == "fails"
    assert (sup["fwd_a"], sup["fwd_b"]) == (1.0, 0.9)
    # the supervised run has 10 % unconverged solves: its comparisons are marked, the others not
    assert sup["unconverged"] and not jfb["unconverged"]
    assert rows["equivariance"]["verdict"] == "holds"
    tables = claims.rst(judge({"cfg": runs}))
    assert tables.count(".. list-table::") == 1 + 3  # the verdicts, then one table per claim
    assert "   * - EI-DEQ within 1 dB of the supervised DEQ\n     - fails (†)" in tables
    text = claims.markdown(judge({"cfg": runs}))
    assert "| EI-DEQ within 1 dB of the supervised DEQ | fails (†) |" in text
    assert "| EI-DEQ: implicit differentiation beats JFB | holds |" in text
    assert "| cfg | EI-DEQ: implicit differentiation beats JFB |" in text and "90.0%" in text


def test_validation_gap_averages_the_seeds_at_shared_steps(tmp_path):
    for run, values in (("deq-ei", [[20, 22, 24], [21, 23, 25]]), ("deq-mc", [[20, 21], [21, 21]])):
        for s, v in enumerate(values):
            folder = tmp_path / "ct" / run / f"seed_{s}"
            folder.mkdir(parents=True)
            steps = [8, 16, 24][: len(v)]
            (folder / "history.json").write_text(json.dumps(dict(val_step=steps, val_psnr=v)))
    gap = validation_gap(tmp_path, "ct")
    assert gap["step"] == [8, 16] and gap["gap"] == pytest.approx([0.0, 1.5])
    assert validation_gap(tmp_path, "mri") is None


def test_configurations_cover_the_tasks_the_issue_asks_for():
    tasks = {task for task, _, _ in CONFIGURATIONS.values()}
    assert tasks == {"ct", "mri", "deblur"} and len(CONFIGURATIONS) >= 5
    task, cfg = claims.configuration_settings("mri64-8x", "tiny")
    # the tiny check keeps the acceleration, drops the real data and the plateau budget
    assert (task, cfg.acceleration, cfg.mri_data, cfg.budget) == ("mri", 8, "phantoms", "fixed")
    with pytest.raises(ValueError, match="size"):
        claims.configuration_settings("mri64-8x", "huge")


def test_facts_of_deblurring_use_its_tikhonov_inverse():
    _, cfg = claims.configuration_settings("deblur32-s1", "tiny")
    f = claims.facts("deblur32-s1", cfg)
    assert f["task"] == "deblur" and "blur sigma 1.0" in f["settings"]
    assert 0.0 < f["null_space_mean"] < 1.0


def test_claims_command_tiny_writes_tables_figures_and_resumes(tmp_path, capsys):
    args = ["claims", "--size", "tiny", "--configurations", "ct32-6v,deblur32-s1"]
    args += ["--out", str(tmp_path), "--no-progress", "--jobs", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    written = ("claims.md", "claims.csv", "claims.json", "claims.rst", "claims.png")
    for name in (*written, "claims_null_space.png"):
        assert (tmp_path / name).stat().st_size > 0, name
        assert name in out  # listed as written
    for name in ("ct32-6v", "deblur32-s1"):
        for written in ("results.md", "figure_training.png", "figure_methods.png"):
            assert (tmp_path / name / written).stat().st_size > 0, written
    # the CT configuration's models on real CT slices, when the [realdata] extra is installed
    try:
        import pydicom  # noqa: F401

        assert (tmp_path / "ct32-6v" / "figure_real_ct.png").stat().st_size > 0
    except ImportError:
        assert "ct32-6v: no real-CT figure" in out
    assert not (tmp_path / "deblur32-s1" / "figure_real_ct.png").exists()
    stored = json.loads((tmp_path / "claims.json").read_text())
    assert {r["configuration"] for r in stored["rows"]} == {"ct32-6v", "deblur32-s1"}
    assert len(stored["rows"]) == 2 * len(CLAIMS)
    assert stored["facts"]["deblur32-s1"]["task"] == "deblur"
    before = (tmp_path / "ct32-6v" / "ct" / "deq-ei" / "result.json").read_text()
    assert cli.main(args) == 0  # resumes: every run is found done
    assert "done before, skipped" in capsys.readouterr().out
    assert (tmp_path / "ct32-6v" / "ct" / "deq-ei" / "result.json").read_text() == before
    # --partial trains nothing and judges the claims on the seeds finished so far
    jfb = tmp_path / "ct32-6v" / "ct" / "deq-jfb-ei"
    (jfb / "result.json").unlink()
    (jfb / "seed_0" / "result.json").unlink()
    assert cli.main([*args, "--partial"]) == 0
    out = capsys.readouterr().out
    assert "epochs on" not in out and not (jfb / "seed_0" / "result.json").exists()
    assert "deq ei 1/1" in out
    partial = json.loads((tmp_path / "claims_partial.json").read_text())
    judged = {(r["configuration"], r["claim"]) for r in partial["rows"]}
    assert ("ct32-6v", "id_vs_jfb") not in judged and ("deblur32-s1", "id_vs_jfb") in judged
    assert ("ct32-6v", "ei_vs_sup") in judged
    assert (tmp_path / "ct32-6v" / "results_partial.md").stat().st_size > 0
    assert (tmp_path / "ct32-6v" / "curves_partial.png").stat().st_size > 0
    assert (tmp_path / "claims_partial.png").stat().st_size > 0
    assert (
        "--partial"
        in json.loads((tmp_path / "claims_partial_experiment.json").read_text())["command"]
    )


def test_claims_command_refuses_an_unknown_configuration(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["claims", "--configurations", "ct32-6v,ct999", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--configurations" in err and "ct999" in err


def test_null_space_fraction_is_zero_for_the_identity():
    import deepinv as dinv

    from deepinv_deq.experiments.configurations import null_space_fraction

    x = torch.rand(2, 1, 4, 4) + 0.1
    assert null_space_fraction(dinv.physics.Denoising(), x) == pytest.approx(
        torch.zeros(2), abs=1e-6
    )


def test_gain_correlation_follows_the_null_space():
    ei = dict(method="deq", regime="ei", psnr=[20.0, 21.0, 23.0, 26.0])
    mc = dict(method="deq", regime="mc", psnr=[20.0, 20.0, 20.0, 20.0])
    fact = dict(null_space=[0.1, 0.2, 0.4, 0.7])  # gains 0, 1, 3, 6: exactly linear
    assert claims.gain_correlation([ei, mc], fact) == pytest.approx(1.0)
    flipped = dict(null_space=[0.7, 0.6, 0.4, 0.1])  # 0.7 - gain / 10
    assert claims.gain_correlation([ei, mc], flipped) == pytest.approx(-1.0)
    assert claims.gain_correlation([ei], fact) is None


def test_pooled_counts_seeds_on_each_claims_side_of_its_threshold():
    rows = [
        dict(claim="ei_vs_sup", diffs=[-0.5, -1.5, -0.9]),  # above -1 dB: 2 of 3
        dict(claim="ei_vs_sup", diffs=[-0.2]),
        dict(claim="equivariance", diffs=[-0.01, 0.02]),  # below 0: 1 of 2
    ]
    pool = claims.pooled(rows)
    assert (pool["ei_vs_sup"]["k"], pool["ei_vs_sup"]["n"]) == (3, 4)
    assert pool["ei_vs_sup"]["p"] == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2)
    assert (pool["equivariance"]["k"], pool["equivariance"]["n"]) == (1, 2)
    assert "id_vs_jfb" not in pool
