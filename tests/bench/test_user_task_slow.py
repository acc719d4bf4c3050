"""The example task in worker processes: the local spawn pool with 2 workers and a local Ray
cluster (2 CPUs) store what the in-process runs store, bit for bit, with the task file deleted
before the grid runs (the workers get its text with the job); a SIGKILLed bench on a user task
resumes to the uninterrupted store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from _user_files import EXAMPLE

from polyak.bench.executors.ray import RayExecutor
from polyak.bench.runner import plan_grid, run_grid
from polyak.bench.store import METRICS, Store
from polyak.bench.user_tasks import load_task

METHODS = ["sgdm", "swa", "gadamx"]


def contents(path) -> dict:
    """Every run's identity, status and metric rows, without wall-clock times."""
    out = {}
    with Store(path) as store:
        for run in store.runs():
            key = (run["task"], run["method"], run["seed"], run["epochs"], run["config_hash"])
            rows = [{m: r[m] for m in ("epoch", *METRICS) if m != "time"}
                    for r in store.metrics(run["id"])]
            out[key] = (run["status"], run["error"], rows)
    return out


@pytest.mark.slow
def test_example_in_the_pool_and_on_ray_stores_what_one_process_stores(tmp_path, fresh):
    copy = tmp_path / "own_task.py"
    shutil.copy(EXAMPLE, copy)
    task = load_task(f"{copy}:digits_cnn")
    jobs = plan_grid([task], METHODS, seeds=2, epochs=3)
    with Store(tmp_path / "inline.sqlite") as store:
        assert run_grid(store, jobs, workers=1, show_progress=False).complete == 6
    want = contents(tmp_path / "inline.sqlite")
    copy.unlink()  # the workers must not need the file
    with Store(tmp_path / "pool.sqlite") as store:
        summary = run_grid(store, jobs, workers=2, show_progress=False)
        assert (summary.complete, summary.failed) == (6, 0), summary.errors
    assert contents(tmp_path / "pool.sqlite") == want
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with Store(tmp_path / "ray.sqlite") as store:
            summary = run_grid(store, jobs, show_progress=False, executor=RayExecutor())
            assert (summary.complete, summary.failed) == (6, 0), summary.errors
    finally:
        ray.shutdown()
    assert contents(tmp_path / "ray.sqlite") == want


def _command(tmp_path, store, ckpt):
    return [sys.executable, "-m", "polyak", "bench", "--tasks", f"{tmp_path}/task.py:digits_cnn",
            "--methods", "sgdm,swa", "--seeds", "1", "--epochs", "12", "--workers", "1",
            "--store", str(store), "--checkpoint-dir", str(ckpt), "--out",
            str(tmp_path / "report"), "--no-progress", "--device", "cpu"]


@pytest.mark.slow
def test_a_killed_bench_on_a_user_task_resumes_exactly(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "task.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(_command(tmp_path, tmp_path / "ref.sqlite", tmp_path / "ref-ck"),
                               capture_output=True, text=True, timeout=300, env=env)
    assert reference.returncode == 0, reference.stderr
    store, ckpt = tmp_path / "runs.sqlite", tmp_path / "ck"
    proc = subprocess.Popen(_command(tmp_path, store, ckpt), start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(ckpt.rglob("resume-*.pt")):  # a run has saved its state: kill mid-run
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    saved = list(ckpt.rglob("resume-*.pt"))
    assert saved, "the run finished before the kill"
    rerun = subprocess.run(_command(tmp_path, store, ckpt), capture_output=True, text=True,
                           timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    got, want = contents(store), contents(tmp_path / "ref.sqlite")
    assert got == want and len(got) == 2  # bit for bit the uninterrupted runs, each once
    with Store(store) as s:
        assert any(r["resumed"] for r in s.runs())  # a run continued from its checkpoint
    assert not list(ckpt.rglob("resume-*.pt"))
