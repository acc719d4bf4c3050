"""The grid runner: planning, skipping finished runs, resuming after a kill, worker processes."""

import concurrent.futures as cf
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

from polyak.bench import runner, train
from polyak.bench.executors import local
from polyak.bench.runner import plan_grid, run_grid
from polyak.bench.store import Store
from polyak.bench.train import train_run


def finished(store):
    return {(r["method"], r["seed"]): (r["id"], r["finished"])
            for r in store.runs() if r["status"] == "complete"}


def test_plan_is_seed_major_and_validated(tiny_task):
    jobs = plan_grid([tiny_task], ["sgd", "sgdm"], seeds=2, epochs=1)
    assert [(j.spec, j.seed, j.epochs) for j in jobs] == [
        ("sgd", 0, 1), ("sgdm", 0, 1), ("sgd", 1, 1), ("sgdm", 1, 1)]
    assert len(plan_grid([tiny_task], ["sgd"])) == tiny_task.seeds


def test_plan_puts_the_two_pass_runs_first_within_each_seed(tiny_task):
    """SAM's runs cost two forward-backward passes a step: first in each seed, the rest in the
    order given, so the grid's tail is short runs."""
    jobs = plan_grid([tiny_task], ["sgd", "sam", "sgdm", "sam-avg"], seeds=2, epochs=1)
    assert [(j.spec, j.seed) for j in jobs] == [
        ("sam", 0), ("sam-avg", 0), ("sgd", 0), ("sgdm", 0),
        ("sam", 1), ("sam-avg", 1), ("sgd", 1), ("sgdm", 1)]


@pytest.mark.parametrize("methods,seeds,epochs,match", [
    (["no-such-method"], 1, 1, "no-such-method"),
    (["sgdm:no_such_key=1"], 1, 1, "no_such_key"),
    (["sgd"], 0, 1, "Invalid seeds"),
    (["sgd"], 1, -2, "Invalid epochs"),
])
def test_bad_plans_raise_value_errors(tiny_task, methods, seeds, epochs, match):
    with pytest.raises(ValueError, match=match):
        plan_grid([tiny_task], methods, seeds=seeds, epochs=epochs)


def test_default_methods_are_the_available_arms_of_the_papers_protocols():
    from polyak.bench import protocols

    ok, missing = runner.default_methods()
    everything = protocols.default_methods()
    assert ok + [m for m, _ in missing] == sorted(everything,
                                                 key=(ok + [m for m, _ in missing]).index)
    assert set(ok) | {m for m, _ in missing} == set(everything)
    assert all(protocols.parse(m).available()[0] for m in ok)
    # every claim's two arms run by default
    assert {side for c in protocols.CLAIMS for side in (c.a, c.b)} <= set(everything)


def test_finished_runs_are_not_run_again(tiny_task, tmp_path):
    jobs = plan_grid([tiny_task], ["sgd", "sgdm"], seeds=2, epochs=1)
    with Store(tmp_path / "s.sqlite") as store:
        first = run_grid(store, jobs, workers=1, show_progress=False)
        assert (first.complete, first.skipped, first.executed) == (4, 0, 4)
        before = finished(store)
        again = run_grid(store, jobs, workers=1, show_progress=False)
        assert (again.executed, again.skipped) == (0, 4)
        assert finished(store) == before


def test_a_failing_run_is_recorded_and_retried(tiny_task, tmp_path, monkeypatch):
    jobs = plan_grid([tiny_task], ["sgd", "sgdm"], seeds=1, epochs=1)
    real = train.train_run

    def flaky(task, spec, seed, epochs, **kwargs):
        if spec == "sgd":
            raise RuntimeError("simulated crash")
        return real(task, spec, seed, epochs, **kwargs)

    monkeypatch.setattr(train, "train_run", flaky)
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_grid(store, jobs, workers=1, show_progress=False)
        assert (summary.failed, summary.complete) == (1, 1)
        failed = [r for r in store.runs() if r["status"] == "failed"]
        assert [r["method"] for r in failed] == ["sgd"]
        assert "simulated crash" in failed[0]["error"]
        monkeypatch.setattr(train, "train_run", real)
        retry = run_grid(store, jobs, workers=1, show_progress=False)
        assert (retry.complete, retry.skipped) == (1, 1)
        assert all(r["status"] == "complete" for r in store.runs())


KILLER = textwrap.dedent("""
    import os, pickle, signal, sys
    from polyak.bench import runner
    from polyak.bench.executors import local
    from polyak.bench.store import Store
    task = pickle.loads(open(sys.argv[1], "rb").read())
    jobs = runner.plan_grid([task], ["sgd", "sgdm", "swa"], seeds=2, epochs=2)
    real, calls = local.execute_job, []
    def work(job):
        calls.append(job)
        if len(calls) == 3:  # killed in the middle of the third run
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job)
    local.execute_job = work
    runner.run_grid(Store(sys.argv[2]), jobs, workers=1, show_progress=False)
""")


def test_killed_bench_resumes_with_only_the_missing_runs(tiny_task, tmp_path):
    task_file, store_path = tmp_path / "task.pkl", tmp_path / "s.sqlite"
    task_file.write_bytes(pickle.dumps(tiny_task))
    out = subprocess.run([sys.executable, "-c", KILLER, str(task_file), str(store_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    jobs = plan_grid([tiny_task], ["sgd", "sgdm", "swa"], seeds=2, epochs=2)
    with Store(store_path) as store:
        statuses = sorted(r["status"] for r in store.runs())
        assert statuses == ["complete", "complete", "pending", "pending", "pending", "running"]
        before = finished(store)
        executed = []
        summary = run_grid(store, jobs, workers=1, show_progress=False,
                           on_result=lambda job, result: executed.append((job.spec, job.seed)))
        assert (summary.skipped, summary.executed, summary.complete) == (2, 4, 4)
        assert sorted(executed) == sorted({(j.spec, j.seed) for j in jobs} - set(before))
        after = finished(store)
        assert len(after) == 6 and {k: after[k] for k in before} == before
        # the runs the killed process finished are bit-for-bit those of this process
        for run in store.runs():
            if (run["method"], run["seed"]) in before:
                here = train_run(tiny_task, run["method"], run["seed"], 2).records
                there = store.metrics(run["id"])
                assert strip_time(there) == strip_time(here)


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_pool_path_bounds_the_runs_in_flight(tiny_task, tmp_path, monkeypatch):
    """The scheduling of the worker pool, with a one-thread executor standing in for the
    spawned processes (their start-up costs seconds; the slow test below uses them)."""
    jobs = plan_grid([tiny_task], ["sgd", "sgdm", "swa"], seeds=1, epochs=1)
    in_flight = []
    real_claim = Store.claim

    def claim(self, key):
        run_id = real_claim(self, key)
        in_flight.append(sum(r["status"] == "running" for r in self.runs()))
        return run_id

    monkeypatch.setattr(Store, "claim", claim)
    monkeypatch.setattr(local, "_new_pool", lambda workers: cf.ThreadPoolExecutor(1))
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_grid(store, jobs, workers=2, show_progress=False)
        assert (summary.complete, summary.executed) == (3, 3)
        assert max(in_flight) == 2 and in_flight[:2] == [1, 2]
        assert all(r["status"] == "complete" for r in store.runs())


@pytest.mark.slow
def test_worker_processes_reproduce_the_inline_results(tiny_task, tmp_path):
    jobs = plan_grid([tiny_task], ["sgdm", "swa"], seeds=1, epochs=3)

    def curves(store):
        return {(r["method"], r["seed"]): [{k: v for k, v in m.items() if k != "time"}
                                           for m in store.metrics(r["id"])]
                for r in store.runs()}

    with Store(tmp_path / "inline.sqlite") as inline, Store(tmp_path / "pool.sqlite") as pool:
        run_grid(inline, jobs, workers=1, show_progress=False)
        summary = run_grid(pool, jobs, workers=2, show_progress=False)
        assert summary.complete == 2
        assert curves(pool) == curves(inline)  # bit for bit across processes


def test_interrupt_keeps_finished_runs(tiny_task, tmp_path, monkeypatch):
    jobs = plan_grid([tiny_task], ["sgd", "sgdm", "swa"], seeds=1, epochs=1)
    real, calls = local.execute_job, []

    def work(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(local, "execute_job", work)
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_grid(store, jobs, workers=1, show_progress=False)
        assert summary.interrupted and summary.complete == 1
        assert sorted(r["status"] for r in store.runs()) == ["complete", "pending", "pending"]
    assert os.path.exists(tmp_path / "s.sqlite")
