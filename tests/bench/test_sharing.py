"""Trajectory sharing: runs whose trajectories are identical by construction train once, and the
store holds, for each, exactly the metrics its own run gives (checked against the same grid run
with sharing off: every run trained separately, bit for bit on the CPU), also across an
interrupt and resume of a group, a member's failure or divergence, the worker pool, two benches
sharing a store and Ray."""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  (the pool catches cf.process.BrokenProcessPool)
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from polyak.averaging import EMA, FinalPhase, NonFiniteWeights
from polyak.bench import runner, sharing, train
from polyak.bench.executors import local
from polyak.bench.resume import CheckpointError, ResumePolicy, RunCheckpoint
from polyak.bench.runner import plan_grid, run_grid
from polyak.bench.store import METRICS, Store

GROUPED = ["sgdm@pwa", "pwa-end-only", "sgdm+ema:schedule=step",
           "sgdm+uniform:avg_start=3,schedule=step", "adam-const@pwa", "pwa-adam@pwa"]


def contents(store: Store) -> dict:
    """Every run's status, error, resume epochs and metric rows (without wall-clock times)."""
    out = {}
    for run in store.runs():
        rows = [{m: r[m] for m in ("epoch", *METRICS) if m != "time"}
                for r in store.metrics(run["id"])]
        out[(run["method"], run["seed"])] = (run["status"], run["error"], run["resumed"], rows)
    return out


def counting(monkeypatch) -> list:
    """Count the trainings (``train_run`` calls) the bench makes."""
    calls, real = [], train.train_run

    def train_run(task, spec, *args, **kwargs):
        calls.append(spec)
        return real(task, spec, *args, **kwargs)

    monkeypatch.setattr(train, "train_run", train_run)
    return calls


def bench(tmp_path, name, jobs, workers=1, **kwargs):
    with Store(tmp_path / f"{name}.sqlite") as store:
        summary = run_grid(store, jobs, workers=workers, show_progress=False, **kwargs)
        return summary, contents(store)


def groups(jobs):
    return [[j.spec for j in u.members] for u in sharing.units(jobs) if len(u.members) > 1]


def test_default_grid_shares_the_pwa_papers_pairs(tiny_task):
    """The default grid: four pairs per seed train once (12 trainings of 93 at 3 seeds)."""
    jobs = plan_grid([tiny_task], None, seeds=2, epochs=4)
    pairs = [["sgdm@pwa", "pwa-end-only"], ["adam-const@pwa", "pwa-adam@pwa"],
             ["amsgrad-const@pwa", "pwa-amsgrad@pwa"], ["adabound-const@pwa", "pwa-adabound@pwa"]]
    assert groups(jobs) == pairs * 2
    assert len(jobs) - len(sharing.units(jobs)) == 4 * 2
    assert groups(plan_grid([tiny_task], GROUPED, seeds=1, epochs=4, share=False)) == []


def test_the_key_comes_from_the_resolved_recipe(tiny_task, tmp_path):
    jobs = plan_grid([tiny_task], [*GROUPED, "sgdm+uniform", "sgdm@pwa:lr=0.05", "pwa",
                                   "lookahead@pwa", "tso-alra", "gadam-auto", "gadam-lookahead",
                                   "sgdm+phasewise:schedule=step"], seeds=1, epochs=6)
    assert groups(jobs) == [GROUPED[:4], GROUPED[4:]]
    keys = {j.spec: j.trajectory for j in jobs}
    for feeding in ("pwa", "lookahead@pwa", "tso-alra", "gadam-auto", "gadam-lookahead",
                    "sgdm+phasewise:schedule=step"):  # injects, evaluation point, switches...
        assert keys[feeding] is None, feeding
    assert keys["sgdm+uniform"] not in (None, keys["sgdm@pwa"])  # SWA's schedule reads avg_start
    assert keys["sgdm@pwa:lr=0.05"] != keys["sgdm@pwa"]
    # a tuned value the task applies to one arm only separates it
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"tuned": {"pwa-end-only": {"lr": 0.05}}}))
    jobs = plan_grid([tiny_task.replace(tuned_path=tuned)], GROUPED[:2], seeds=1, epochs=6)
    assert groups(jobs) == []


def test_shared_bench_stores_exactly_what_separate_runs_store(tiny_task, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    shared, got = bench(tmp_path, "shared", plan_grid([tiny_task], GROUPED, seeds=2, epochs=12))
    assert calls and all(not isinstance(c, str) for c in calls) and len(calls) == 4
    calls.clear()
    alone, want = bench(tmp_path, "alone", plan_grid([tiny_task], GROUPED, seeds=2, epochs=12,
                                                     share=False))
    assert len(calls) == 12 and (shared.complete, alone.complete) == (12, 12)
    assert got == want
    # and the members differ where their averages differ: not one result copied six times
    finals = {m: rows[-1]["test_loss"] for (m, s), (_, _, _, rows) in got.items() if s == 0}
    assert len(set(finals.values())) == len(GROUPED)


def test_a_group_resumes_bit_for_bit_after_an_interrupt(tiny_task, tmp_path, monkeypatch):
    methods = GROUPED[:4]
    resume = ResumePolicy(tmp_path / "ck", every=1)
    jobs = plan_grid([tiny_task], methods, seeds=1, epochs=8, resume=resume)
    (group,) = sharing.units(jobs)
    real, saves = RunCheckpoint.save, []

    def save(self, state):
        real(self, state)
        saves.append(state["epoch"])
        if len(saves) == 4:  # after epoch 3's checkpoint: the bench is interrupted
            raise KeyboardInterrupt

    monkeypatch.setattr(RunCheckpoint, "save", save)
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_grid(store, jobs, workers=1, show_progress=False)
        assert summary.interrupted and saves == [0, 1, 2, 3]
        assert {r["status"] for r in store.runs()} == {"pending"}  # released, all four
    saved = torch.load(group.checkpoint.path, weights_only=True)  # one file for the group
    states = saved["method"]["observers"]
    assert [s["method"] for s in states] == methods  # every member's Method and records
    assert [s["state"]["averaging"] is None for s in states] == [True, False, False, False]
    assert all(len(s["records"]) == 4 for s in states)
    monkeypatch.setattr(RunCheckpoint, "save", real)
    again, got = bench(tmp_path, "s", jobs)
    assert again.complete == 4 and not group.checkpoint.path.exists()
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], methods, seeds=1, epochs=8,
                                                 share=False))
    assert {k: v[3] for k, v in got.items()} == {k: v[3] for k, v in want.items()}
    assert {v[2] for v in got.values()} == {"4"}  # each member resumed after epoch 3


def _fail_at(epoch):
    real = FinalPhase.end_epoch

    def end_epoch(self, e, *args, **kwargs):
        if e == epoch:
            raise RuntimeError("boom")
        return real(self, e, *args, **kwargs)
    return end_epoch


def test_a_members_failure_ends_that_member_alone(tiny_task, tmp_path, monkeypatch):
    methods = GROUPED[:2]
    jobs = plan_grid([tiny_task], methods, seeds=1, epochs=8)
    monkeypatch.setattr(FinalPhase, "end_epoch", _fail_at(5))
    shared, got = bench(tmp_path, "shared", jobs)
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], methods, seeds=1, epochs=8,
                                                 share=False))
    assert (shared.complete, shared.failed) == (1, 1)
    assert got[("sgdm@pwa", 0)] == want[("sgdm@pwa", 0)]
    status, error, _, rows = got[("pwa-end-only", 0)]
    assert status == "failed" and error.startswith("RuntimeError: boom") and "Traceback" in error
    assert want[("pwa-end-only", 0)][0] == "failed"
    # the next bench retries the failed member alone, and it completes as its own run does
    monkeypatch.undo()
    calls = counting(monkeypatch)
    again, got = bench(tmp_path, "shared", jobs)
    assert (again.complete, again.skipped, calls) == (1, 1, ["pwa-end-only"])
    _, want = bench(tmp_path, "clean", plan_grid([tiny_task], methods, seeds=1, epochs=8,
                                                 share=False))
    assert got == want


def test_a_member_diverges_alone(tiny_task, tmp_path, monkeypatch):
    """An average meeting non-finite weights ends its run as diverged, in the epoch its own
    run would, with the same records; the others go on."""
    real = EMA.step

    def step(self):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 9:  # the 5th step of epoch 2 (4 steps an epoch)
            raise NonFiniteWeights("fake NaN")
        return real(self)

    monkeypatch.setattr(EMA, "step", step)
    methods = GROUPED[:3]
    shared, got = bench(tmp_path, "shared", plan_grid([tiny_task], methods, seeds=1, epochs=6))
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], methods, seeds=1, epochs=6,
                                                 share=False))
    assert (shared.complete, shared.diverged) == (2, 1)
    assert got == want
    status, error, _, rows = got[("sgdm+ema:schedule=step", 0)]
    assert status == "diverged" and "epoch 2: fake NaN" in error and len(rows) == 2


def test_a_diverging_trajectory_ends_every_member_as_its_own_run(tiny_task, tmp_path):
    methods = ["sgdm@pwa:lr=1e30", "pwa-end-only:lr=1e30", "sgdm+ema:schedule=step,lr=1e30"]
    jobs = plan_grid([tiny_task], methods, seeds=1, epochs=6)
    assert len(sharing.units(jobs)) == 1
    shared, got = bench(tmp_path, "shared", jobs)
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], methods, seeds=1, epochs=6,
                                                 share=False))
    assert shared.diverged == 3 and got == want


def test_groups_through_the_pool(tiny_task, tmp_path, monkeypatch):
    """The pool's scheduling with a thread standing in for the spawned processes."""
    jobs = plan_grid([tiny_task], ["sgd", *GROUPED[:2]], seeds=2, epochs=2)
    monkeypatch.setattr(local, "_new_pool", lambda workers: cf.ThreadPoolExecutor(2))
    summary, got = bench(tmp_path, "pool", jobs, workers=2)
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], ["sgd", *GROUPED[:2]], seeds=2,
                                                 epochs=2, share=False))
    assert summary.complete == 6 and got == want


def test_a_worker_that_cannot_write_its_checkpoint_releases_every_run_it_held(
        tiny_task, tmp_path, monkeypatch):
    """A CheckpointError (a full disk) raised in a worker stops the bench: the runs of the unit
    whose result raised are put back too, not left 'running' until their lease expires (the
    pool popped that unit before reading its result)."""
    jobs = plan_grid([tiny_task], ["sgd", *GROUPED[:2]], seeds=1, epochs=2)
    monkeypatch.setattr(local, "_new_pool", lambda workers: cf.ThreadPoolExecutor(2))
    real = local.execute_job

    def work(job):
        if len(job.members) > 1:
            raise CheckpointError("cannot write checkpoint x: the disk is full")
        time.sleep(0.5)  # the other unit still runs when the error comes back
        return real(job)

    monkeypatch.setattr(local, "execute_job", work)
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(CheckpointError, match="disk is full"):
            run_grid(store, jobs, workers=2, show_progress=False)
        statuses = {r["method"]: r["status"] for r in store.runs()}
    assert statuses == {"sgd": "pending", "sgdm@pwa": "pending", "pwa-end-only": "pending"}


def test_a_group_takes_the_members_another_bench_does_not_hold(tiny_task, tmp_path):
    jobs = plan_grid([tiny_task], GROUPED[:3], seeds=1, epochs=2)
    with Store(tmp_path / "s.sqlite") as mine, Store(tmp_path / "s.sqlite") as other:
        mine.plan([j.key for j in jobs])
        assert other.claim(jobs[1].key) is not None  # the other bench runs pwa-end-only
        claims = runner._Claims(mine, jobs, lambda job: None, poll=0.01)
        unit = claims.take()
        assert [j.spec for j in unit.members] == [GROUPED[0], GROUPED[2]]
        assert [[j.spec for j in u.members] for u in claims.queue] == [[GROUPED[1]]]
        assert claims.take() is None  # still held


def test_shared_job_units_keep_order_and_identity(tiny_task, tmp_path):
    resume = ResumePolicy(tmp_path / "ck")
    jobs = plan_grid([tiny_task], ["sgd", *GROUPED[:2], "swa"], seeds=1, epochs=4,
                     resume=resume)
    found = sharing.units(jobs)
    assert [[j.spec for j in u.members] for u in found] == [["sgd"], GROUPED[:2], ["swa"]]
    group = found[1]
    assert group.keys == (jobs[1].key, jobs[2].key)
    assert group.checkpoint.identity["method"] == "sgdm@pwa+pwa-end-only"
    assert group.checkpoint.path != jobs[1].checkpoint.path
    assert pickle.loads(pickle.dumps(group)).keys == group.keys  # travels to workers


DRIVER = textwrap.dedent("""
    import pickle, sys
    from polyak.bench.tasks import TASKS
    TASKS["kill-tiny"] = pickle.loads(open(sys.argv[1], "rb").read())
    from polyak.cli import main
    main(sys.argv[2:])
""")


@pytest.mark.slow
def test_sigkilled_group_resumes_to_the_separate_runs_store(tiny_task, tmp_path):
    task = tiny_task.replace(name="kill-tiny", data_kwargs={**tiny_task.data_kwargs,
                                                            "n_train": 2000})
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(task))

    def command(store, *extra):
        return [sys.executable, "-c", DRIVER, str(tmp_path / "task.pkl"), "bench", "--tasks",
                "kill-tiny", "--methods", ",".join(GROUPED[:4]), "--seeds", "1", "--epochs",
                "10", "--workers", "1", "--store", str(tmp_path / store), "--checkpoint-dir",
                str(tmp_path / "ck"), "--out", str(tmp_path / "report"), "--no-progress",
                "--device", "cpu", *extra]

    proc = subprocess.Popen(command("runs.sqlite"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:  # kill once the group's checkpoint holds epoch 3 or later
        found = [p for p in (tmp_path / "ck").rglob("resume-*.pt")]
        try:
            if found and torch.load(found[0], weights_only=True)["epoch"] >= 3:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = subprocess.run(command("runs.sqlite"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Store(tmp_path / "runs.sqlite") as store:
        got = contents(store)
    jobs = plan_grid([task], GROUPED[:4], seeds=1, epochs=10, share=False)
    _, want = bench(tmp_path, "alone", jobs)
    assert {k: (v[0], v[3]) for k, v in got.items()} == {k: (v[0], v[3]) for k, v in want.items()}
    resumed = {v[2] for v in got.values()}
    assert len(resumed) == 1 and resumed.pop() is not None  # all four continued, together
    assert not list((tmp_path / "ck").rglob("resume-*.pt"))


@pytest.mark.slow
def test_groups_through_ray_store_what_separate_local_runs_store(tiny_task, tmp_path):
    import ray

    from polyak.bench.executors.ray import RayExecutor

    jobs = plan_grid([tiny_task], ["sgd", *GROUPED[:2]], seeds=2, epochs=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with Store(tmp_path / "ray.sqlite") as store:
            summary = run_grid(store, jobs, show_progress=False, executor=RayExecutor())
            assert (summary.complete, summary.failed) == (6, 0), summary.errors
            got = contents(store)
    finally:
        ray.shutdown()
    _, want = bench(tmp_path, "alone", plan_grid([tiny_task], ["sgd", *GROUPED[:2]], seeds=2,
                                                 epochs=3, share=False))
    assert got == want


def test_a_group_checkpoint_is_checked_then_dropped_once_a_member_is_finished(tiny_task,
                                                                              tmp_path):
    from polyak.bench.train import RunResult

    jobs = plan_grid([tiny_task], GROUPED[:2], seeds=1, epochs=2,
                     resume=ResumePolicy(tmp_path / "ck"))
    (group,) = sharing.units(jobs)
    with Store(tmp_path / "s.sqlite") as store:
        group.checkpoint.path.parent.mkdir(parents=True)
        group.checkpoint.path.write_bytes(b"garbage")
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            runner.check_checkpoints(store, jobs)  # before anything runs, naming the file
        group.checkpoint.save({"epoch": 0})
        runner.check_checkpoints(store, jobs)
        assert group.checkpoint.path.exists()  # the group's, unfinished: kept
        store.claim(jobs[0].key)
        store.finish(jobs[0].key, RunResult("complete", []))
        runner.check_checkpoints(store, jobs)  # the rest trains without it
        assert not group.checkpoint.path.exists()
