"""Experiment building blocks: configs, tasks, methods, resumable runs, tables and figures."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import deepinv as dinv

from deepinv_deq import DEQ
from deepinv_deq.experiments import ExperimentConfig, build_losses, build_model, run
from deepinv_deq.experiments.configs import METHODS, check_run, parse_list
from deepinv_deq.experiments.methods import PseudoInverseNet, Unrolled, build_denoiser
from deepinv_deq.experiments.results import figure, markdown, rst, write_tables
from deepinv_deq.experiments.runner import evaluate, magnitude, run_dir, held_out_measurements
from deepinv_deq.experiments.tasks import build_physics, pseudo_inverse
from deepinv_deq.maps import PGDMap


def tiny(**kw):
    return ExperimentConfig.from_preset("tiny", **kw)


def test_config_validation():
    assert tiny().img_size == 16
    assert tiny(img_size=24).img_size == 24
    with pytest.raises(ValueError, match="epoch"):
        tiny(epoch=3)  # misspelled option, with a hint
    with pytest.raises(ValueError, match="img_size"):
        tiny(img_size=4)
    with pytest.raises(ValueError, match="size"):
        ExperimentConfig.from_preset("huge")
    with pytest.raises(ValueError, match="transform"):
        tiny(transform="flip")
    with pytest.raises(ValueError, match="device"):
        tiny(device="tpu")


def test_check_run():
    assert check_run("CT", "deq", "EI") == ("ct", "deq", "ei")
    assert check_run("mri", "pinv", None) == ("mri", "pinv", "none")
    with pytest.raises(ValueError, match="method"):
        check_run("ct", "deqq", "ei")
    with pytest.raises(ValueError, match="task"):
        check_run("pet", "deq", "ei")
    with pytest.raises(ValueError, match="regime"):
        check_run("ct", "deq", "self")
    with pytest.raises(ValueError, match="no regime"):
        check_run("ct", "pnp", "sup")
    assert parse_list("methods", "deq,unet", METHODS) == ["deq", "unet"]
    with pytest.raises(ValueError, match="methods"):
        parse_list("methods", "deq,foo", METHODS)


@pytest.mark.parametrize("task", ["ct", "mri"])
def test_physics_is_normalised(task):
    cfg = tiny(img_size=16)
    physics = build_physics(task, cfg)
    x = torch.rand(1, 1 if task == "ct" else 2, 16, 16)
    norm = physics.compute_norm(x, max_iter=50, tol=1e-5, verbose=False)
    assert abs(float(norm) - 1.0) < 0.05  # so the PGD step size 1 is <= 1/||A||^2
    if task == "mri":
        mask = physics.mask
        assert abs(float(mask.mean()) - 1 / cfg.acceleration) < 0.1
        assert torch.equal(mask, build_physics(task, cfg).mask)  # seeded mask


def test_unrolled_is_k_iterations_of_the_map():
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    denoiser = build_denoiser("ct", tiny())
    torch.nn.init.normal_(denoiser.out_conv.weight, std=0.1)
    fmap = PGDMap(denoiser, stepsize=0.9, sigma_denoiser=0.05)
    model = Unrolled(fmap, n_iter=3)
    y = physics(torch.rand(2, 1, 8, 8))
    x = physics.A_adjoint(y)
    for _ in range(3):
        x = fmap(x, y, physics)
    out = model(y, physics)
    assert torch.allclose(out, x)
    out.sum().backward()
    assert denoiser.in_conv.weight.grad.abs().sum() > 0  # backprop through all iterations
    with pytest.raises(ValueError, match="n_iter"):
        Unrolled(fmap, n_iter=0)


def test_denoiser_starts_as_identity():
    d = build_denoiser("mri", tiny())
    x = torch.rand(2, 2, 16, 16)
    assert torch.allclose(d(x, 0.05), x)


def test_pseudo_inverse_net_uses_fbp():
    cfg = tiny(views=24)
    physics = build_physics("ct", cfg)
    x = torch.rand(1, 1, 16, 16)
    y = physics.A(x)
    model = PseudoInverseNet(None, init=pseudo_inverse("ct"))
    assert torch.allclose(model(y, physics), physics.A_dagger(y, fbp=True))
    # FBP is a far better linear reconstruction than the adjoint here
    assert torch.norm(model(y, physics) - x) < torch.norm(physics.A_adjoint(y) - x)


@pytest.mark.parametrize("task", ["ct", "mri"])
def test_every_method_reconstructs(task):
    cfg = tiny()
    physics = build_physics(task, cfg)
    c = 1 if task == "ct" else 2
    y = physics(torch.rand(2, c, 16, 16))
    for method in METHODS:
        model = build_model(task, method, cfg)
        with torch.no_grad():
            out = model(y, physics)
        assert out.shape == (2, c, 16, 16), method
        assert torch.isfinite(out).all(), method
    deq = build_model(task, "deq", cfg)
    jfb = build_model(task, "deq-jfb", cfg)
    assert isinstance(deq, DEQ) and deq.backward.mode == "implicit" and jfb.backward.mode == "jfb"


def test_losses_per_regime():
    cfg = tiny()
    deq, unet = build_model("ct", "deq", cfg), build_model("ct", "unet", cfg)
    assert [type(l).__name__ for l in build_losses("sup", cfg, deq)] == ["SupLoss"]
    assert [type(l).__name__ for l in build_losses("mc", cfg, deq)] == ["MCLoss"]
    ei = build_losses("ei", cfg, deq)
    assert type(ei[0]).__name__ == "MCLoss" and isinstance(ei[1], dinv.loss.EILoss)
    assert type(ei[1]).__name__ == "DEQEILoss"
    assert type(build_losses("ei", cfg, unet)[1]) is dinv.loss.EILoss
    with pytest.raises(ValueError, match="regime"):
        build_losses("selfsup", cfg, deq)


def test_held_out_measurements_are_shared_and_evaluate_scores(tmp_path):
    cfg = tiny()
    physics = build_physics("ct", cfg)
    a = held_out_measurements("ct", cfg, physics)
    torch.manual_seed(99)  # the caller's RNG does not change the test noise
    b = held_out_measurements("ct", cfg, physics)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))
    model = build_model("ct", "pinv", cfg)
    res = evaluate(model, "ct", cfg, physics, batches=a)
    x, y = a[0]
    ref = dinv.metric.PSNR(max_pixel=1.0)(model(y, physics).clamp(0, 1), x)
    assert res["psnr"][: len(ref)] == pytest.approx(ref.tolist(), abs=1e-4)
    assert res["psnr_mean"] == pytest.approx(sum(res["psnr"]) / len(res["psnr"]))
    assert len(res["psnr"]) == cfg.n_test and len(res["samples"]) == 2


def test_magnitude():
    x = torch.zeros(1, 2, 2, 2)
    x[:, 0], x[:, 1] = 3.0, 4.0
    assert torch.allclose(magnitude(x), torch.full((1, 1, 2, 2), 5.0))


def test_run_is_resumable(tmp_path):
    cfg = tiny()
    first = run("ct", "deq", "sup", cfg, tmp_path, progress=False, log=lambda *a: None)
    folder = run_dir(tmp_path, "ct", "deq", "sup")
    assert not first["skipped"] and (folder / "model.pt").exists()
    ckpts = list((folder / "ckpt").rglob("ckp_*.pth.tar"))
    assert len(ckpts) == 1
    again = run("ct", "deq", "sup", cfg, tmp_path, progress=False, log=lambda *a: None)
    assert again["skipped"] and again["psnr_mean"] == first["psnr_mean"]
    # interrupted after its last checkpoint: continues from it (no further training)
    (folder / "result.json").unlink()
    (folder / "model.pt").unlink()
    resumed = run("ct", "deq", "sup", cfg, tmp_path, progress=False, log=lambda *a: None)
    assert not resumed["skipped"]
    assert list((folder / "ckpt").rglob("ckp_*.pth.tar")) == ckpts  # nothing trained again
    assert resumed["psnr"] == pytest.approx(first["psnr"], abs=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        run("ct", "deq", "sup", tiny(epochs=2), tmp_path, progress=False, log=lambda *a: None)


def _fake_results():
    return [
        dict(task="ct", method="unet", regime="sup", psnr=[30.0, 32.0], psnr_mean=31.0, psnr_std=1.0,
             ssim_mean=0.9, ssim_std=0.01, nfe=None, train_s=12.0),
        dict(task="ct", method="deq", regime="ei", psnr=[28.0, 29.0], psnr_mean=28.5, psnr_std=0.5,
             ssim_mean=0.8, ssim_std=0.02, nfe=11.5, train_s=40.0),
    ]


def test_tables_and_figure(tmp_path):
    results = _fake_results()
    md = markdown(results)
    lines = md.strip().splitlines()
    assert lines[2].startswith("| CT | deq | EI (MC + EI) | 28.50 ± 0.50")  # table order: deq first
    table = rst(results)
    assert table.startswith(".. list-table::") and table.count("   * - CT") == 2
    assert table.index("     - deq") < table.index("     - unet")
    assert "     - 28.50 ± 0.50" in table and "     - 11.5" in table
    paths = write_tables(results, tmp_path, name="t", config={"seed": 0})
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["deq", "unet"] and float(rows[1]["psnr_mean"]) == 31.0
    data = json.loads(paths["json"].read_text())
    assert data["config"] == {"seed": 0} and data["runs"][0]["psnr"] == [28.0, 29.0]
    for r in results:
        folder = run_dir(tmp_path, "ct", r["method"], r["regime"])
        folder.mkdir(parents=True)
        torch.save([torch.rand(1, 8, 8)] * 2, folder / "samples.pt")
    path = figure(results, tmp_path, "ct", tmp_path / "fig.png", reference=torch.rand(1, 8, 8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
