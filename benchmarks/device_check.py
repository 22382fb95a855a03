r"""The GPU path in one command: tests, benchmarks, a resumed training and host synchronisations.

Run on a machine with a GPU (about 8 minutes on one H100/H200)::

    python benchmarks/device_check.py --device cuda --out device_check

and, to know the script works before a GPU is at hand (CI runs it; under a minute on 2 cores)::

    python benchmarks/device_check.py --device cpu --smoke --out /tmp/device_check

Parts (each records ``ok``, its figures and its error, and never stops the others):

1. ``tests``: the test suite (``pytest``; on ``cuda`` every test with the ``device`` fixture runs
   there too); ``--smoke`` runs a few fast files.
2. ``benchmarks``: ``bench_forward.py``, ``bench_backward.py`` and ``bench_training.py`` on the
   device, side by side with deepinv's DEQ (wall clock around ``torch.cuda.synchronize`` and
   peak memory on CUDA); their tables are kept.
3. ``resume``: a short ``deepinv-deq train`` (``--size gpu``, fewer images and epochs; ``tiny``
   with ``--smoke``) interrupted by SIGINT after its first checkpoint and run again, against an
   uninterrupted run: the final weights must agree (largest difference reported).
4. ``syncs``: host synchronisations per solver iteration, counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` during an Anderson forward solve and an implicit
   backward (not applicable on the CPU).

Writes ``device_check.json`` and ``device_check.md`` to ``--out``; the exit status is 1 if a part
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMOKE_TESTS = ["tests/test_solvers.py", "tests/test_preconditioners.py", "-k", "not slow"]


def _run(cmd: list[str], timeout: float, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _env(device: str) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if device == "cpu" else env.get("OMP_NUM_THREADS", "4"))
    return env


def part_tests(device: str, smoke: bool, timeout: float) -> dict:
    r"""The test suite (``pytest -q``): on a CUDA machine the ``device`` fixture adds ``cuda``."""
    args = SMOKE_TESTS if smoke else ["-m", "not slow"]
    done = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        timeout,
        _env(device),
    )
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    return {"ok": done.returncode == 0, "summary": tail[0], "returncode": done.returncode}


def part_benchmarks(device: str, smoke: bool, timeout: float) -> dict:
    r"""The forward, backward, training-step and step-cost benchmarks on ``device``."""
    size = ["--img-size", "32", "--repeats", "1"] if smoke else ["--repeats", "3"]
    runs = {
        "forward": ["bench_forward.py", "--device", device, *size],
        "backward": ["bench_backward.py", "--device", device, *size],
        "training": ["bench_training.py", "--device", device, *size],
    }
    out, ok = {}, True
    for name, cmd in runs.items():
        start = time.time()
        try:
            done = _run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], timeout, _env(device))
            tables = [
                line for line in done.stdout.splitlines() if line.startswith(("|", "time ratio"))
            ]
            out[name] = {
                "ok": done.returncode == 0,
                "seconds": round(time.time() - start, 1),
                "table": tables,
                "error": done.stderr.strip().splitlines()[-1:] if done.returncode else [],
            }
        except subprocess.TimeoutExpired:
            out[name] = {"ok": False, "error": [f"timed out after {timeout} s"]}
        ok = ok and out[name]["ok"]
    return {"ok": ok, **out}


def _train_cmd(device: str, smoke: bool, folder: Path) -> list[str]:
    size = (
        ["--size", "tiny", "--epochs", "3"]
        if smoke
        else ["--size", "gpu", "--n-train", "128", "--epochs", "3", "--seeds", "1"]
    )
    return [
        sys.executable,
        "-m",
        "deepinv_deq",
        "train",
        "--task",
        "ct",
        "--method",
        "deq",
        "--regime",
        "ei",
        *size,
        "--device",
        device,
        "--no-progress",
        "--out",
        str(folder),
    ]


def part_resume(device: str, smoke: bool, out: Path, timeout: float) -> dict:
    r"""An interrupted-and-resumed training against an uninterrupted one (final weights)."""
    import torch

    env = _env(device)
    full, cut = out / "resume_full", out / "resume_cut"
    start = time.time()
    done = _run(_train_cmd(device, smoke, full), timeout, env)
    if done.returncode != 0:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-3:]}
    seconds_full = time.time() - start
    seed = cut / "ct" / "deq-ei" / "seed_0"
    proc = subprocess.Popen(
        _train_cmd(device, smoke, cut),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + timeout
    while not (seed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=timeout)
    again = _run(_train_cmd(device, smoke, cut), timeout, env)
    if again.returncode != 0:
        return {"ok": False, "error": again.stderr.strip().splitlines()[-3:]}
    a = torch.load(full / "ct" / "deq-ei" / "seed_0" / "model.pt", map_location="cpu")
    b = torch.load(seed / "model.pt", map_location="cpu")
    tensors = [k for k, v in a.items() if torch.is_tensor(v)]
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in tensors)
    exact = all(torch.equal(a[k], b[k]) for k in tensors)
    return {
        "ok": diff <= 1e-6,
        "interrupted_before_the_end": interrupted,
        "bit_exact": exact,
        "max_weight_difference": diff,
        "uninterrupted_run_s": round(seconds_full, 1),
    }


def part_syncs(device: str, smoke: bool) -> dict:
    r"""Host synchronisations per iteration of a forward Anderson solve and an implicit backward."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return {"ok": True, "applicable": False, "note": "host synchronisations exist on CUDA only"}
    import deepinv as dinv
    from deepinv_deq import DEQ, ContractiveDenoiser

    n = 32 if smoke else 64
    physics = dinv.physics.Tomography(angles=n // 2, img_width=n, normalize=True, device=device)
    x = torch.rand(4, 1, n, n, device=device)
    y = physics(x)
    model = DEQ(denoiser=ContractiveDenoiser(), max_iter=60, tol=1e-4).to(device)
    model(y, physics)  # warm-up (kernels, caches)
    counts = {}
    for phase in ("forward", "backward"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = model(y, physics)
                if phase == "backward":
                    before = len(caught)
                    out.pow(2).sum().backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        if phase == "forward":
            counts["forward_syncs"] = len(syncs)
            counts["forward_iterations"] = model.forward_stats.nfe
        else:
            counts["backward_syncs"] = len(
                [w for w in caught[before:] if "synchroniz" in str(w.message).lower()]
            )
            counts["backward_products"] = model.backward_stats.nfe
    counts["forward_syncs_per_iteration"] = counts["forward_syncs"] / counts["forward_iterations"]
    counts["backward_syncs_per_product"] = counts["backward_syncs"] / max(
        counts["backward_products"], 1
    )
    return {"ok": True, "applicable": True, **counts}


def _guarded(fn, *args) -> dict:
    start = time.time()
    try:
        result = fn(*args)
    except Exception as e:  # a part's failure is recorded, the others still run
        result = {
            "ok": False,
            "error": [f"{type(e).__name__}: {e}"],
            "traceback": traceback.format_exc(),
        }
    result["seconds"] = round(time.time() - start, 1)
    return result


def markdown(summary: dict) -> str:
    r"""The markdown summary of a device check."""
    lines = [
        f"# Device check ({summary['device']}{', smoke' if summary['smoke'] else ''})",
        "",
        f"{summary['machine']}; torch {summary['torch']}; {summary['date']}",
        "",
        "| part | ok | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, part in summary["parts"].items():
        figures = {
            k: v
            for k, v in part.items()
            if k not in ("ok", "seconds", "traceback") and not isinstance(v, dict)
        }
        lines.append(
            f"| {name} | {part['ok']} | {part.get('seconds', '')} | {json.dumps(figures)[:300]} |"
        )
    bench = summary["parts"].get("benchmarks", {})
    for name, result in bench.items():
        if isinstance(result, dict) and result.get("table"):
            lines += ["", f"## {name}", "", *result["table"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument(
        "--smoke", action="store_true", help="small and fast: checks that the script works"
    )
    p.add_argument("--out", type=Path, default=Path("device_check"))
    p.add_argument(
        "--timeout", type=float, default=480.0, help="seconds allowed to each subprocess"
    )
    p.add_argument(
        "--parts",
        default="tests,benchmarks,resume,syncs",
        help="comma-separated parts to run (default: all)",
    )
    args = p.parse_args(argv)
    import platform

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    machine = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    )
    summary = {
        "device": args.device,
        "smoke": args.smoke,
        "machine": f"{machine}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parts": {},
    }
    runners = {
        "tests": lambda: part_tests(args.device, args.smoke, args.timeout),
        "benchmarks": lambda: part_benchmarks(args.device, args.smoke, args.timeout),
        "resume": lambda: part_resume(args.device, args.smoke, args.out, args.timeout),
        "syncs": lambda: part_syncs(args.device, args.smoke),
    }
    for name in [s.strip() for s in args.parts.split(",") if s.strip()]:
        if name not in runners:
            print(
                f"device_check: unknown part {name!r}; choose among {sorted(runners)}",
                file=sys.stderr,
            )
            return 2
        summary["parts"][name] = _guarded(runners[name])
        print(
            f"{name}: {'ok' if summary['parts'][name]['ok'] else 'FAILED'} ({summary['parts'][name]['seconds']} s)",
            flush=True,
        )
    (args.out / "device_check.json").write_text(json.dumps(summary, indent=1))
    (args.out / "device_check.md").write_text(markdown(summary))
    print(f"written: {args.out / 'device_check.json'}, {args.out / 'device_check.md'}")
    return 0 if all(part["ok"] for part in summary["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
