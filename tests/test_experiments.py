"""Experiment building blocks: configs, tasks, methods, resumable runs, tables and figures."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import deepinv as dinv

from deepinv_deq import DEQ
from deepinv_deq.data import load_dataset
from deepinv_deq.experiments import ExperimentConfig, build_losses, build_model, run
from deepinv_deq.experiments.configs import METHODS, check_run, parse_list
from deepinv_deq.experiments.methods import PseudoInverseNet, Unrolled, build_denoiser
from deepinv_deq.experiments.figures import figure
from deepinv_deq.experiments.results import markdown, rst, write_tables
from deepinv_deq.experiments.evaluation import evaluate, held_out_measurements, magnitude
from deepinv_deq.experiments.layout import run_dir
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
    torch.nn.init.normal_(denoiser.residual[-1].weight, std=0.1)
    fmap = PGDMap(denoiser, stepsize=0.9, sigma_denoiser=0.05)
    model = Unrolled(fmap, n_iter=3)
    y = physics(torch.rand(2, 1, 8, 8))
    x = physics.A_adjoint(y)
    for _ in range(3):
        x = fmap(x, y, physics)
    out = model(y, physics)
    assert torch.allclose(out, x)
    out.sum().backward()
    assert denoiser.residual[0].weight.grad.abs().sum() > 0  # backprop through all iterations
    with pytest.raises(ValueError, match="n_iter"):
        Unrolled(fmap, n_iter=0)


def test_denoiser_starts_as_a_contraction():
    cfg = tiny()
    d = build_denoiser("mri", cfg)
    x = torch.rand(2, 2, 16, 16)
    assert torch.allclose(d(x, 0.05), (1 - cfg.epsilon) * x)
    # the capacity-matched U-Net has about as many weights as the DEQ's denoiser
    from deepinv_deq.experiments.methods import matched_unet, n_parameters

    demo = ExperimentConfig.from_preset("demo")
    a, b = n_parameters(matched_unet("ct", demo)), n_parameters(build_denoiser("ct", demo))
    assert abs(a - b) / b < 0.1


def test_deqs_solve_to_tolerance_with_anderson():
    cfg = ExperimentConfig.from_preset("demo")
    model = build_model("ct", "deq", cfg)
    assert model.solver.tol <= 1e-4 and model.backward.solver.tol <= 1e-4
    assert type(model.solver).__name__ == "AndersonAcceleration"
    physics = build_physics("ct", tiny())
    model = build_model("ct", "deq", tiny())
    y = physics(torch.rand(2, 1, 16, 16))
    x = model(y, physics)
    ((x - 0.5) ** 2).sum().backward()
    assert bool(model.forward_stats.converged.all()) and bool(model.backward_stats.converged.all())
    assert model.forward_stats.nfe < tiny().max_iter  # the cap is not what stops it


def test_pseudo_inverse_net_uses_fbp():
    cfg = tiny(views=24)
    physics = build_physics("ct", cfg)
    x = torch.rand(1, 1, 16, 16)
    y = physics.A(x)
    model = PseudoInverseNet(None, init=pseudo_inverse("ct"))
    assert torch.allclose(model(y, physics), physics.A_dagger(y, fbp=True))
    # FBP is a far better linear reconstruction than the adjoint here
    assert torch.linalg.vector_norm(model(y, physics) - x) < torch.linalg.vector_norm(
        physics.A_adjoint(y) - x
    )


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
    assert [type(l).__name__ for l in build_losses("sup", cfg)] == ["SupLoss"]
    assert [type(l).__name__ for l in build_losses("mc", cfg)] == ["MCLoss"]
    ei = build_losses("ei", cfg, rng=torch.Generator().manual_seed(3))
    # deepinv's own (cold-started) EILoss, for every method
    assert type(ei[0]) is dinv.loss.MCLoss and type(ei[1]) is dinv.loss.EILoss
    other = build_losses("ei", cfg, rng=torch.Generator().manual_seed(3))
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(ei[1].T(x), other[1].T(x))  # same generator state, same transformations
    with pytest.raises(ValueError, match="regime"):
        build_losses("selfsup", cfg)


def test_held_out_measurements_are_shared_and_evaluate_scores(tmp_path):
    cfg = tiny()
    physics = build_physics("ct", cfg)
    a = held_out_measurements("ct", cfg)
    torch.manual_seed(99)  # the caller's RNG does not change the test noise
    b = held_out_measurements("ct", cfg)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b, strict=True))
    val = held_out_measurements("ct", cfg, split="val")
    assert not torch.equal(val[0][0], a[0][0])  # validation and test images differ
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


def test_run_is_resumable_and_counts_solves(tmp_path):
    cfg = tiny()
    quiet = dict(progress=False, log=lambda *a: None)
    first = run("ct", "deq", "sup", cfg, tmp_path, **quiet)
    folder = run_dir(tmp_path, "ct", "deq", "sup")
    assert not first["skipped"] and (folder / "seed_0" / "model.pt").exists()
    assert sorted(p.name for p in (folder / "seed_0").glob("*.pt")) == [
        "best.pt",
        "last.pt",
        "model.pt",
        "samples.pt",
    ]
    # every solve is counted: training (forward + backward), validation and test
    assert first["fwd_converged"] == 1.0 and first["bwd_converged"] == 1.0
    counts = first["per_seed"][0]["train"]
    assert counts["fwd_solves"] == 2 and counts["bwd_solves"] == 2  # 4 images, batches of 2
    assert 1 <= first["fwd_iters"] < cfg.max_iter
    again = run("ct", "deq", "sup", cfg, tmp_path, **quiet)
    assert again["skipped"] and again["psnr_mean"] == first["psnr_mean"]
    # interrupted after its last checkpoint: continues from it (no further training)
    (folder / "result.json").unlink()
    (folder / "seed_0" / "result.json").unlink()
    mtime = (folder / "seed_0" / "last.pt").stat().st_mtime_ns
    resumed = run("ct", "deq", "sup", cfg, tmp_path, **quiet)
    assert not resumed["skipped"] and (folder / "seed_0" / "last.pt").stat().st_mtime_ns == mtime
    assert resumed["psnr"] == pytest.approx(first["psnr"], abs=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        run("ct", "deq", "sup", tiny(epochs=2), tmp_path, **quiet)


def test_non_convergence_is_counted_not_hidden(tmp_path):
    cfg = tiny(max_iter=2, tol=1e-12)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = run("ct", "deq-init", None, cfg, tmp_path, progress=False, log=lambda *a: None)
    assert res["fwd_converged"] == 0.0 and res["fwd_iters_max"] == 2


def test_resumed_ei_run_equals_an_uninterrupted_one(tmp_path):
    # the transformations' and the noise's random states are checkpointed with the run
    from deepinv_deq.experiments.training import train

    cfg = tiny(n_train=4, batch_size=2)
    data = load_dataset("phantoms", "ct", 4, 16, 0)

    def fresh(init_seed):
        torch.manual_seed(init_seed)
        model = build_model("ct", "unrolled", cfg)
        noise, transforms = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        physics = build_physics("ct", cfg, rng=noise)
        return model, physics, build_losses("ei", cfg, rng=transforms), {}

    model, physics, losses, gens = fresh(0)
    train(model, physics, losses, data, cfg, tmp_path / "a", seed=5, epochs=3, generators=gens)

    class Interrupt(Exception):
        pass

    class Interrupting(dinv.loss.Loss):  # a crash in the middle of the second epoch
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x_net, **kwargs):
            self.calls += 1
            if self.calls == 3:
                raise Interrupt
            return x_net.sum() * 0

    model_b, physics, losses, gens = fresh(0)
    with pytest.raises(Interrupt):
        train(
            model_b, physics, [*losses, Interrupting()], data, cfg, tmp_path / "b", seed=5, epochs=3
        )
    model_c, physics, losses, gens = fresh(7)  # a new process: other weights, fresh generators
    history = train(
        model_c, physics, losses, data, cfg, tmp_path / "b", seed=5, epochs=3, generators=gens
    )
    assert history["epochs_done"] == 3 and history["train_s"] > 0
    for p, q in zip(model.parameters(), model_c.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_methods_share_batches_noise_and_transforms(tmp_path, monkeypatch):
    from deepinv_deq.experiments import training

    seen = {}
    original = training.batch_loss

    def spy(losses, model, x, y, physics):
        key = type(model).__name__
        states = [l.T.rng.get_state().clone() for l in losses if hasattr(l, "T")]
        seen.setdefault(key, []).append((x.clone(), y.clone(), states))
        return original(losses, model, x, y, physics)

    monkeypatch.setattr(training, "batch_loss", spy)
    cfg = tiny()
    for method in ("deq", "unrolled"):
        run("ct", method, "ei", cfg, tmp_path, progress=False, log=lambda *a: None)
    a, b = seen["DEQ"], seen["Unrolled"]
    assert len(a) == len(b) == 2
    for (xa, ya, ta), (xb, yb, tb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert all(torch.equal(s, t) for s, t in zip(ta, tb, strict=True))


def test_paired_difference_and_flattening():
    from deepinv_deq.experiments.results import paired_difference
    from deepinv_deq.experiments.plateau import flattened

    a = dict(seeds=[0, 1, 2], psnr_seeds=[30.0, 31.0, 32.0])
    b = dict(seeds=[0, 1, 2], psnr_seeds=[29.0, 29.0, 29.0])
    d = paired_difference(a, b)
    assert d["diffs"] == [1.0, 2.0, 3.0] and d["mean"] == pytest.approx(2.0)
    assert d["hi"] - d["mean"] == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    pinv = dict(method="pinv", seeds=[0], psnr_seeds=[25.0])  # runs once: paired with every seed
    assert paired_difference(a, pinv)["diffs"] == [5.0, 6.0, 7.0]
    # a trained run with one finished seed (claims --partial) is paired with that seed only
    one = dict(method="deq", seeds=[1], psnr_seeds=[33.0])
    assert paired_difference(one, b)["diffs"] == [4.0] and paired_difference(b, one)["n"] == 1
    a["per_seed"] = [
        dict(seed=s, equivariance=e) for s, e in zip([0, 1, 2], [0.1, 0.2, 0.3], strict=True)
    ]
    b["per_seed"] = [
        dict(seed=s, equivariance=e) for s, e in zip([0, 1, 2], [0.3, 0.3, 0.3], strict=True)
    ]
    assert paired_difference(a, b, "equivariance")["diffs"] == pytest.approx([-0.2, -0.1, 0.0])
    h = dict(val_step=[10, 20, 30, 40, 50], val_psnr=[20.0, 25.0, 27.0, 27.5, 27.6])
    assert flattened(h) == pytest.approx(0.1)  # from step 40 (80 %) to 50


def _fake_results():
    unet = dict(
        task="ct",
        method="unet",
        regime="sup",
        psnr=[30.0, 32.0],
        psnr_mean=31.0,
        psnr_std=1.0,
        ssim_mean=0.9,
        ssim_std=0.01,
        nfe=None,
        train_s=12.0,
        seeds=[0, 1],
        psnr_seeds=[30.5, 31.5],
    )
    deq = dict(
        unet,
        method="deq",
        regime="ei",
        psnr=[28.0, 29.0],
        psnr_mean=28.5,
        psnr_std=0.5,
        ssim_mean=0.8,
        ssim_std=0.02,
        nfe=11.5,
        train_s=40.0,
        psnr_seeds=[28.0, 29.0],
        fwd_converged=1.0,
        fwd_iters=11.5,
        bwd_converged=0.98,
        bwd_iters=9.0,
    )
    jfb = dict(
        deq,
        method="deq-jfb",
        psnr=[27.0, 28.0],
        psnr_mean=27.5,
        psnr_seeds=[27.0, 28.5],
        bwd_converged=None,
        bwd_iters=None,
    )
    return [unet, deq, jfb]


def test_tables_and_figure(tmp_path):
    results = _fake_results()
    md = markdown(results)
    lines = md.strip().splitlines()
    assert lines[2].startswith("| CT | deq | EI (MC + EI) | 28.50 ± 0.50")  # table order: deq first
    assert "| 100.0% (11.5) | 98.0% (9.0) |" in lines[2]
    assert "| CT | EI-DEQ implicit - EI-DEQ JFB | +0.75 |" in md
    table = rst(results)
    assert table.startswith(".. list-table::") and table.count("   * - CT") == 3 + 1
    assert table.index("     - deq") < table.index("     - unet")
    assert "     - 28.50 ± 0.50" in table and "     - 100.0% (11.5)" in table
    paths = write_tables(results, tmp_path, name="t", config={"seed": 0})
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["deq", "deq-jfb", "unet"] and float(
        rows[2]["psnr_mean"]
    ) == 31.0
    data = json.loads(paths["json"].read_text())
    assert data["config"] == {"seed": 0} and data["runs"][0]["psnr"] == [28.0, 29.0]
    assert data["comparisons"][0]["diffs"] == [1.0, 0.5]
    for r in results:
        folder = run_dir(tmp_path, "ct", r["method"], r["regime"])
        (folder / "seed_0").mkdir(parents=True)
        torch.save([torch.rand(1, 8, 8)] * 2, folder / "samples.pt")
        hist = dict(val_step=[1, 2], val_psnr=[20.0, 21.0], loss_step=[1, 2], loss=[1.0, 0.5])
        (folder / "seed_0" / "history.json").write_text(json.dumps(hist))
    path = figure(results, tmp_path, "ct", tmp_path / "fig.png", reference=torch.rand(1, 8, 8))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curves_ct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_extension_follows_the_cosine_of_the_new_total():
    # --extend: after 4 of 4 steps, stretched to 12 steps, the learning rate follows the closed
    # form of a 12-step cosine (from lr to lr / 10) for the remaining steps
    import math

    from deepinv_deq.experiments.training import _stretch_cosine

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # end of the short schedule

    def closed(t, total=12):
        return 1e-4 + 0.9e-3 * (1 + math.cos(math.pi * t / total)) / 2

    _stretch_cosine(sched, opt, 12)
    assert opt.param_groups[0]["lr"] == pytest.approx(closed(4), rel=1e-9)
    for t in range(5, 13):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(closed(t), rel=1e-9), t
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_psnr_and_equivariance_differences_get_a_table_each():
    # one header, one unit: equivariance-error differences are not listed under "PSNR in dB"
    def run(method, regime, psnr, eq):
        per_seed = [dict(seed=s, equivariance=e) for s, e in enumerate(eq)]
        return dict(
            task="ct",
            method=method,
            regime=regime,
            seeds=[0, 1],
            psnr_seeds=psnr,
            per_seed=per_seed,
            psnr_mean=sum(psnr) / 2,
            psnr_std=0.1,
            ssim_mean=0.5,
            ssim_std=0.01,
            std_over="seeds",
        )

    results = [
        run("deq", "ei", [28.0, 28.4], [0.01, 0.02]),
        run("deq", "sup", [29.0, 29.1], [0.03, 0.05]),
    ]
    text = markdown(results)
    psnr_table, eq_table = text.split("| task | paired difference (")[1:]
    assert psnr_table.startswith("PSNR in dB)") and "equivariance error:" not in psnr_table
    assert eq_table.startswith("equivariance error)") and "| -0.0250 |" in eq_table
    assert rst(results).count("paired difference (") == 2
