"""Executors: the grid through a real local Ray cluster (2 CPUs) against the local pool.

Compared: the store contents (every run's status and every metric of every epoch, bit for bit:
both run single-threaded on the same CPU), and a run whose Ray worker process is SIGKILLed in the
middle of training, which Ray retries and which ends with the uninterrupted run's metrics.
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from polyak.bench.executors import make_executor
from polyak.bench.executors.ray import RayExecutor
from polyak.bench.resume import ResumePolicy
from polyak.bench.runner import plan_grid, run_grid
from polyak.bench.store import METRICS, Store
from polyak.bench.tasks import TASKS
from polyak.cli import main


def contents(store: Store) -> dict:
    """Every run (identity, status, error) and its metric rows, without the wall-clock times."""
    out = {}
    for run in store.runs():
        key = (run["task"], run["method"], run["seed"], run["epochs"], run["config_hash"])
        rows = [{m: r[m] for m in ("epoch", *METRICS) if m != "time"}
                for r in store.metrics(run["id"])]
        out[key] = (run["status"], run["error"], rows)
    return out


@pytest.mark.parametrize("kwargs,needle", [
    ({"name": "dask"}, "Invalid executor"),
    ({"name": "ray", "cpus_per_run": 0}, "Invalid cpus-per-run"),
    ({"name": "ray", "gpus_per_run": -0.5}, "Invalid gpus-per-run"),
    ({"name": "ray", "max_retries": -1}, "Invalid max-retries"),
    ({"name": "local", "address": "auto"}, "Invalid ray-address"),
])
def test_bad_executor_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        make_executor(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize("command", [["bench", "--tasks", "tiny"], ["tune", "--task", "tiny"]])
@pytest.mark.parametrize("args,needle", [
    (["--executor", "ray", "--workers", "2"], "Invalid workers"),
    (["--cpus-per-run", "2"], "go with --executor ray"),
    (["--executor", "spark"], "Invalid executor"),
    (["--executor", "ray", "--gpus-per-run", "-1"], "Invalid gpus-per-run"),
])
def test_bad_executor_flags_are_one_line(capsys, tmp_path, tiny_task, monkeypatch, command,
                                         args, needle):
    monkeypatch.setitem(TASKS, "tiny", tiny_task.replace(name="tiny"))
    store = tmp_path / "runs.sqlite"
    with pytest.raises(SystemExit) as info:
        main([*command, "--methods", "sgd", "--store", str(store), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not store.exists()


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_grid_through_ray_stores_what_the_local_pool_stores(ray_cluster, tiny_mlp_task,
                                                            tmp_path):
    jobs = plan_grid([tiny_mlp_task], ["sgdm", "swa", "tso-alra"], seeds=2, epochs=2)
    with Store(tmp_path / "local.sqlite") as local:
        assert run_grid(local, jobs, workers=1, show_progress=False).complete == 6
        want = contents(local)
    with Store(tmp_path / "ray.sqlite") as store:
        summary = run_grid(store, jobs, show_progress=False, executor=RayExecutor())
        assert (summary.complete, summary.failed) == (6, 0)
        assert contents(store) == want


def _ray_workers_running(function: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith(f"ray::{function}"):
            found.append(proc)
    return found


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_gives_the_uninterrupted_result(
        ray_cluster, tiny_mlp_task, tmp_path):
    task = tiny_mlp_task.replace(epochs=25)
    resume = ResumePolicy(tmp_path / "ckpt", every=1)
    (job,) = plan_grid([task], ["swa"], seeds=1, resume=resume)
    killed: list[int] = []

    def kill_mid_run() -> None:  # once a resume checkpoint exists, SIGKILL the worker
        deadline = time.time() + 120
        while time.time() < deadline and not job.checkpoint.path.exists():
            time.sleep(0.005)
        for proc in _ray_workers_running("_ray_work"):
            proc.kill()
            killed.append(proc.pid)

    results = []
    killer = threading.Thread(target=kill_mid_run)
    killer.start()
    with Store(tmp_path / "ray.sqlite") as store:
        summary = run_grid(store, [job], show_progress=False, executor=RayExecutor(max_retries=2),
                           on_result=lambda job, result: results.append(result))
        killer.join()
        assert killed, "no Ray worker was running the job"
        assert (summary.complete, summary.failed) == (1, 0), summary.errors
        (result,) = results
        assert result.resumed_from and 0 < result.resumed_from[0] < 25  # continued mid-run
        got = contents(store)
    with Store(tmp_path / "local.sqlite") as local:  # uninterrupted, no checkpoints
        run_grid(local, plan_grid([task], ["swa"], seeds=1), workers=1, show_progress=False)
        assert got == contents(local)


@pytest.mark.slow
def test_tuning_through_ray_picks_what_the_local_pool_picks(ray_cluster, tiny_task, tmp_path):
    from polyak.bench.tune import tune

    found = {}
    for name, executor in (("local", None), ("ray", RayExecutor())):
        with Store(tmp_path / f"{name}.sqlite") as store:
            result = tune(store, tiny_task, ["sgd"], epochs=1, seeds=1, trials=2,
                          workers=1 if executor is None else None, show_progress=False,
                          executor=executor)
            scores = {t.spec: (t.val_acc, t.val_loss) for t in result.trials["sgd"]}
            found[name] = (result.tuned, scores, contents(store))
    assert len(found["local"][1]) == 2  # both trials ran and were scored
    assert found["ray"] == found["local"]


@pytest.mark.slow
def test_a_run_that_raises_on_ray_is_recorded_failed_with_its_traceback(ray_cluster,
                                                                        tiny_task, tmp_path):
    from polyak.bench.runner import Job

    def broken_data(**kwargs):  # a closure: Ray ships it by value to the worker
        raise RuntimeError("simulated data failure")

    jobs = [Job(tiny_task.replace(data=broken_data), "sgd", 0, 1),
            Job(tiny_task, "sgd", 0, 1)]
    with Store(tmp_path / "ray.sqlite") as store:
        summary = run_grid(store, jobs, show_progress=False, executor=RayExecutor(max_retries=2))
        assert (summary.failed, summary.complete) == (1, 1)
        (failed,) = [r for r in store.runs() if r["status"] == "failed"]
        assert "RuntimeError: simulated data failure" in failed["error"]
        assert "Traceback" in failed["error"] and "broken_data" in failed["error"]


def _imported_modules(path) -> set[str]:
    """Every module an ``import`` anywhere in the file at ``path`` names (nested ones too)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_executors_do_not_import_the_runner():
    """The runner depends on the executors, never the other way round (no import cycle)."""
    from pathlib import Path

    import polyak.bench.executors as package

    files = sorted(Path(package.__file__).parent.glob("*.py"))
    assert len(files) >= 3
    for path in files:
        assert "polyak.bench.runner" not in _imported_modules(path), path.name
