"""Real anatomy shipped in Python packages (the [realdata] extra); skipped without it."""

from __future__ import annotations

import pytest
import torch

from deepinv_deq.data import load_dataset, mni_slices, real_ct_test_images


def test_mni_slices_are_disjoint_slabs_with_gaps():
    pytest.importorskip("nilearn")
    pytest.importorskip("nibabel")
    train, val, test = mni_slices((20, 4, 6), size=32, gap=5)
    assert [len(train), len(val), len(test)] == [20, 4, 6]
    assert train[0].shape == (2, 32, 32) and torch.count_nonzero(train[0][1]) == 0
    assert 0 <= float(train[0].min()) and float(train[0].max()) <= 1
    slices = [set(d.slices) for d in (train, val, test)]
    for a in range(3):
        for b in range(a + 1, 3):
            # at least 5 slices between any two images of different sets
            assert min(abs(i - j) for i in slices[a] for j in slices[b]) > 5


def test_mni_through_the_experiments_config():
    pytest.importorskip("nilearn")
    pytest.importorskip("nibabel")
    from deepinv_deq.experiments.configs import ExperimentConfig

    cfg = ExperimentConfig.from_preset("tiny", mri_data="mni")
    assert cfg.data_of("mri") == "mni" and cfg.data_of("ct") == "phantoms"
    counts = (cfg.n_train, cfg.n_test, cfg.n_val)
    train = load_dataset("mni", "mri", cfg.n_train, 16, split=0, counts=counts)
    test = load_dataset("mni", "mri", cfg.n_test, 16, split=1, counts=counts)
    assert len(train) == cfg.n_train and len(test) == cfg.n_test
    assert not set(train.slices) & set(test.slices)
    with pytest.raises(ValueError, match="slices"):
        load_dataset("mni", "mri", 200, 16, split=0, counts=(200, 10, 10))


def test_real_ct_test_images():
    pytest.importorskip("pydicom")
    pytest.importorskip("data_store")  # pydicom-data
    x = real_ct_test_images(32)
    assert x.shape == (4, 1, 32, 32)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # attenuation-like: air near 0, soft tissue around water (0.5), not min-max normalised
    assert float(x.amax((1, 2, 3)).min()) > 0.5
    assert all(0.05 < float(m) < 0.6 for m in x.mean((1, 2, 3)))


def test_tiny_mri_run_on_the_template(tmp_path):
    pytest.importorskip("nilearn")
    pytest.importorskip("nibabel")
    from deepinv_deq.experiments.configs import ExperimentConfig
    from deepinv_deq.experiments.runner import run

    cfg = ExperimentConfig.from_preset("tiny", mri_data="mni")
    quiet = dict(progress=False, log=lambda *a: None)
    mni = run("mri", "pinv", None, cfg, tmp_path / "mni", **quiet)
    phantoms = run(
        "mri", "pinv", None, ExperimentConfig.from_preset("tiny"), tmp_path / "p", **quiet
    )
    assert len(mni["psnr"]) == cfg.n_test and mni["psnr"] != phantoms["psnr"]


def test_real_ct_reconstructions_of_finished_runs(tmp_path):
    pytest.importorskip("pydicom")
    pytest.importorskip("data_store")  # pydicom-data
    import math

    from deepinv_deq.experiments.configs import ExperimentConfig
    from deepinv_deq.experiments.evaluation import real_ct_reconstructions
    from deepinv_deq.experiments.runner import run

    cfg = ExperimentConfig.from_preset("tiny")
    for method, regime in (("deq", "ei"), ("pinv", "none")):
        run("ct", method, regime, cfg, tmp_path, progress=False, log=lambda *a: None)
    runs = (("deq", "ei"), ("deq", "sup"), ("pinv", "none"))  # deq sup never ran: left out
    x, panels = real_ct_reconstructions(tmp_path, cfg, runs)
    assert x.shape == (4, 1, 16, 16)
    assert [(m, r) for m, r, _, _ in panels] == [("deq", "ei"), ("pinv", "none")]
    for _, _, x_hat, psnr in panels:
        assert x_hat.shape == x.shape and len(psnr) == 4
        assert all(math.isfinite(p) and p > 5 for p in psnr)
