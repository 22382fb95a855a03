r"""The training loop of the experiments: seeded, resumable, with solver statistics and curves.

One loop for every method, so that a comparison differs only in the model: the same batches (a
seeded :class:`torch.utils.data.DataLoader`), the same noise draws (the physics' noise generator)
and the same transformations (the EI loss's generator), the same optimiser, learning rate,
gradient clipping and number of steps.

A checkpoint (``last.pt``, and ``best.pt`` by validation PSNR) is written at the end of every
epoch. It holds the model, the optimiser, the training history, the accumulated training time
and the state of *every* random generator of the run (loader, noise, transformations, torch's
global one), so that a run resumed after an interruption reaches the same parameters as an
uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .._validation import check_choice


class SolveCounter:
    r"""Counts the forward and backward solves of a :class:`deepinv_deq.DEQ`, by phase.

    Attached through :meth:`deepinv_deq.DEQ.register_stats_hook`; :attr:`phase` (``"train"``,
    ``"val"`` or ``"test"``) says where a solve belongs. Per phase and kind (``forward`` /
    ``backward``) it keeps the number of solves, of (sample, solve) pairs and of those that
    converged, and the sum and maximum of the iterations.

    :param deepinv_deq.DEQ model: the model to watch (``None``: counts nothing).
    """

    PHASES = ("train", "val", "test")

    def __init__(self, model=None):
        self.phase = "train"
        self.counts = {
            p: {
                k: dict(solves=0, samples=0, converged=0, nfe_sum=0, nfe_max=0)
                for k in ("forward", "backward")
            }
            for p in self.PHASES
        }
        self._handle = None
        from ..deq import DEQ

        if isinstance(model, DEQ):
            self._handle = model.register_stats_hook(self._record)

    def set_phase(self, phase: str) -> None:
        r"""Attribute the following solves to ``phase``."""
        self.phase = check_choice("SolveCounter", "phase", phase, self.PHASES)

    def _record(self, kind: str, stats) -> None:
        if stats is None:
            return
        c = self.counts[self.phase][kind]
        c["solves"] += 1
        c["samples"] += int(stats.status.numel())
        c["converged"] += int(stats.converged.sum())
        c["nfe_sum"] += int(stats.nfe)
        c["nfe_max"] = max(c["nfe_max"], int(stats.nfe))

    def summary(self, phase: str) -> dict:
        r"""``fwd_converged``, ``bwd_converged`` (fractions of (sample, solve) pairs, ``None``
        without solves), ``fwd_iters``, ``bwd_iters`` (mean iterations per solve), their maxima
        and the numbers of solves, for ``phase``."""
        out = {}
        for kind, short in (("forward", "fwd"), ("backward", "bwd")):
            c = self.counts[phase][kind]
            out[f"{short}_converged"] = c["converged"] / c["samples"] if c["samples"] else None
            out[f"{short}_iters"] = c["nfe_sum"] / c["solves"] if c["solves"] else None
            out[f"{short}_iters_max"] = c["nfe_max"] if c["solves"] else None
            out[f"{short}_solves"] = c["solves"]
        return out

    def state_dict(self) -> dict:
        return {"counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"]

    def remove(self) -> None:
        r"""Stop counting."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def batch_loss(losses, model, x, y, physics) -> torch.Tensor:
    r"""Sum of the batch means of ``losses`` (deepinv losses) for one batch, as :class:`deepinv.Trainer`."""
    x_net = model(y, physics)
    total = 0.0
    for loss in losses:
        total = total + loss(x_net=x_net, x=x, y=y, physics=physics, model=model).mean()
    return total


def validation_psnr(model, physics, batches, to_image) -> float:
    r"""Mean PSNR (peak 1) of ``model`` on precomputed ``(x, y)`` batches."""
    import deepinv as dinv

    psnr = dinv.metric.PSNR(max_pixel=1.0)
    was_training = model.training
    model.eval()
    values = []
    with torch.no_grad():
        for x, y in batches:
            values += psnr(to_image(model(y, physics)).clamp(0, 1), to_image(x)).flatten().tolist()
    model.train(was_training)
    return sum(values) / len(values)


def random_generators(physics, losses) -> dict:
    r"""Every random generator a training step draws from, by name: the physics' noise generator
    (``physics.noise_model.rng``) and physics generator (``physics_generator.rng``), and for each
    loss its transformation's (``loss.T.rng``), its own (``loss.rng``, e.g. the choice of operator
    of :class:`deepinv.loss.MOEILoss`), its physics generator's, and the noise generators of the
    operators it holds (``loss.physics``).

    deepinv may replace a generator object (e.g. when a noise model is moved to a device), so they
    are looked up on the objects that use them rather than kept from their construction.
    """
    out = {}

    def add(name, obj, *path):
        for attr in path:
            obj = getattr(obj, attr, None)
        if isinstance(obj, torch.Generator) and all(obj is not g for g in out.values()):
            out[name] = obj

    add("noise", physics, "noise_model", "rng")
    add("physics_generator", physics, "physics_generator", "rng")
    for i, loss in enumerate(losses):
        add(f"transform_{i}", loss, "T", "rng")
        add(f"loss_{i}", loss, "rng")
        add(f"loss_{i}_physics_generator", loss, "physics_generator", "rng")
        operators = getattr(loss, "physics", None)
        if isinstance(operators, (list, tuple)):
            for j, op in enumerate(operators):
                add(f"loss_{i}_physics_{j}_noise", op, "noise_model", "rng")
    return out


def _load_checkpoint(path: Path) -> dict:
    # on the CPU: random generators' states must be CPU byte tensors (set_state refuses others);
    # the model's and optimiser's tensors are moved to their parameters' devices by load_state_dict
    return torch.load(path, map_location="cpu", weights_only=False)


def train(
    model,
    physics,
    losses,
    dataset,
    cfg,
    folder,
    seed: int,
    epochs: int,
    generators: dict | None = None,
    val_batches=None,
    to_image=None,
    counter=None,
    label: str = "",
    progress: bool = False,
    log=print,
    extending: bool = False,
) -> dict:
    r"""Train ``model`` with Adam (learning rate ``cfg.lr``, decayed to a tenth along a cosine
    when ``cfg.lr_schedule == "cosine"``; gradient norm clipped at 1), resuming from
    ``folder/last.pt`` if it exists.

    Extension: when ``folder/last.pt`` was written by a training with fewer ``epochs``, training
    continues from it up to ``epochs`` in total. With the cosine schedule, the remaining steps
    follow the cosine of the *new* total number of steps: at the first step of the extension the
    learning rate is set to the value that schedule has at that step (so it rises again from the
    ``lr / 10`` the shorter schedule ended at), and it decays to ``lr / 10`` at the new last step.
    The first segment is not replayed: an extended run is not identical to one trained for the
    new total from the start. The steps at which it was extended are listed in the history's
    ``extended_at``.

    :param torch.nn.Module model: the reconstructor ``model(y, physics)``.
    :param deepinv.physics.Physics physics: forward operator (measurements are simulated online).
    :param list losses: deepinv losses, summed.
    :param torch.utils.data.Dataset dataset: training images.
    :param ExperimentConfig cfg: settings (batch size, learning rate, validation interval).
    :param str folder: where checkpoints and the history go.
    :param int seed: seed of the batch order.
    :param int epochs: training epochs (with ``cfg.budget == "plateau"``: the first stage of
        :func:`deepinv_deq.experiments.plateau.train_to_plateau`, which then extends the run).
    :param dict generators: further random generators by name, saved and restored with the
        checkpoints besides those of :func:`random_generators` (noise, transformations).
    :param list val_batches: precomputed ``(x, y)`` validation batches (training curve).
    :param Callable to_image: image scored by the validation PSNR (e.g. the magnitude).
    :param SolveCounter counter: counter of DEQ solves (its phase is set here).
    :param str label: name shown in the progress messages.
    :param bool progress: print a line at each validation.
    :param bool extending: this call extends a finished stage of the plateau budget (the message
        says so, instead of announcing the resumption of an interrupted run).
    :param Callable log: where progress messages go.
    :return: the history: ``step``, ``loss`` (mean training loss since the previous validation),
        ``val_step``, ``val_psnr``, ``train_s`` (training time summed over resumes), ``steps``.
    """
    if getattr(cfg, "budget", "fixed") == "plateau":  # epochs until the validation PSNR plateaus
        from .plateau import train_to_plateau

        options = dict(generators=generators, val_batches=val_batches, to_image=to_image)
        options.update(counter=counter, label=label, progress=progress, log=log)
        return train_to_plateau(
            train, model, physics, losses, dataset, cfg, folder, seed, **options
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generators = {**random_generators(physics, losses), **dict(generators or {})}
    to_image = to_image or (lambda t: t)
    loader_gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, generator=loader_gen, drop_last=False
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = len(loader)
    total_steps = per_epoch * epochs
    schedule = getattr(cfg, "lr_schedule", "constant")
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=0.1 * cfg.lr
        )
        if schedule == "cosine"
        else None
    )
    eval_every = cfg.eval_every or per_epoch
    history = dict(
        loss_step=[],
        loss=[],
        val_step=[],
        val_psnr=[],
        train_s=0.0,
        steps=total_steps,
        epochs_done=0,
    )
    best = -float("inf")
    torch.manual_seed(seed)
    last = folder / "last.pt"
    window = []
    if last.exists():
        state = _load_checkpoint(last)
        done = state["history"]["epochs_done"]
        if extending:
            log(f"{label}: plateau budget: training on from epoch {done} to {epochs}")
        else:
            log(f"{label}: resuming from its checkpoint after epoch {done} of {epochs}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        best = state["best"]
        loader_gen.set_state(state["rng"]["loader"])
        for name, g in generators.items():
            if name in state["rng"]:  # (a checkpoint of an earlier version may lack some)
                g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        window = list(state.get("window", []))  # training losses since the last validation
        if counter is not None and "counter" in state:
            counter.load_state_dict(state["counter"])
        if history["steps"] != total_steps:  # extended to more epochs
            history.setdefault("extended_at", []).append(history["epochs_done"] * per_epoch)
            history["steps"] = total_steps
            if scheduler is not None:
                _stretch_cosine(scheduler, optimizer, total_steps)
    device = torch.device(cfg.device)
    model.train()
    for epoch in range(history["epochs_done"], epochs):
        t0 = time.process_time()
        for i, x in enumerate(loader):
            step = epoch * per_epoch + i + 1
            x = x.to(device)
            if counter is not None:
                counter.set_phase("train")
            y = physics(x)
            loss = batch_loss(losses, model, x, y, physics)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{label}: the training loss is {float(loss)} at step {step}."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            window.append(float(loss.detach()))
            if val_batches is not None and (step % eval_every == 0 or step == total_steps):
                if counter is not None:
                    counter.set_phase("val")
                value = validation_psnr(model, physics, val_batches, to_image)
                history["loss_step"].append(step)
                history["loss"].append(sum(window) / len(window))
                history["val_step"].append(step)
                history["val_psnr"].append(value)
                window = []
                if progress:
                    log(
                        f"  {label} step {step}/{total_steps}: loss {history['loss'][-1]:.3e}, "
                        f"validation PSNR {value:.2f} dB"
                    )
        history["train_s"] += time.process_time() - t0
        history["epochs_done"] = epoch + 1
        # look the generators up again: deepinv may have swapped the objects (keeping their state)
        generators = {**generators, **random_generators(physics, losses)}
        rng = {
            "loader": loader_gen.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{name: g.get_state() for name, g in generators.items()},
        }
        state = dict(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            history=history,
            best=best,
            rng=rng,
            window=list(window),
            counter=counter.state_dict() if counter is not None else None,
        )
        current = history["val_psnr"][-1] if history["val_psnr"] else None
        if current is not None and current > best:
            state["best"] = best = current
            torch.save(state, folder / "best.pt.tmp")
            (folder / "best.pt.tmp").replace(folder / "best.pt")
        torch.save(state, folder / "last.pt.tmp")
        (folder / "last.pt.tmp").replace(last)
    return history


def _stretch_cosine(scheduler, optimizer, total_steps: int) -> None:
    # continue a CosineAnnealingLR on a longer horizon: the closed form of the new schedule at the
    # current step (the scheduler's recursive update is exact from a learning rate on the curve)
    scheduler.T_max = total_steps
    t = scheduler.last_epoch
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        eta = scheduler.eta_min
        group["lr"] = eta + (base - eta) * (1 + math.cos(math.pi * t / total_steps)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
