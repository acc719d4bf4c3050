"""`polyak bench` killed with SIGKILL (the whole process group) at random moments, mid-epoch and
inside a checkpoint write, then rerun until it finishes: the store must equal an uninterrupted
bench's, every run once, and the reruns must have continued runs mid-way from their
checkpoints instead of redoing finished epochs."""

import fnmatch
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from polyak.bench.store import Store

DRIVER = textwrap.dedent("""
    import pickle, sys
    from polyak.bench.tasks import TASKS
    TASKS["kill-tiny"] = pickle.loads(open(sys.argv[1], "rb").read())
    from polyak.cli import main
    main(sys.argv[2:])
""")
METHODS = "sgdm,swa,pwa"
SEEDS, EPOCHS = 2, 5


def command(tmp, store, ckpt):
    return [sys.executable, "-c", DRIVER, str(tmp / "task.pkl"), "bench", "--tasks", "kill-tiny",
            "--methods", METHODS, "--seeds", str(SEEDS), "--epochs", str(EPOCHS),
            "--workers", "1", "--store", str(store), "--checkpoint-dir", str(ckpt),
            "--out", str(tmp / "report"), "--no-progress", "--device", "cpu"]


def start(cmd, **env):
    return subprocess.Popen(cmd, env={**os.environ, **env}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_group(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def wait_for(predicate, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"bench ended before the kill: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def files(root, pattern):
    """The files under ``root`` named like ``pattern``, while the bench may be creating and
    removing directories there: ``os.walk`` skips a directory that vanishes mid-scan (``rglob``
    raised FileNotFoundError when the bench removed a finished run's directories, up to the
    root, during the scan: the flaky failure of issue 21)."""
    return sorted(Path(d) / name for d, _, names in os.walk(root)
                  for name in fnmatch.filter(names, pattern))


def resume_files(ckpt):
    return files(ckpt, "resume-*.pt")


def tmp_files(ckpt):
    return files(ckpt, ".resume-*.tmp*")


def checkpoint_state(ckpt):
    """Each resume checkpoint's (inode, mtime): a rename over it or its removal changes it."""
    state = {}
    for path in resume_files(ckpt):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed since the scan
            continue
        state[path] = (stat.st_ino, stat.st_mtime_ns)
    return state


def wait_for_a_fresh_run(ckpt, proc):
    """Wait until the bench has written the checkpoints of epochs 0 and 1 of one run (a run it
    started from scratch: a resumed run writes no epoch 0); returns the seconds between the two
    writes: one epoch at the machine's present speed. The run then has epochs 2.. to go, so a
    kill within the next epoch finds its epoch-1 checkpoint on disk however loaded the machine
    is (a clock-timed kill could fall between two runs, when no checkpoint exists)."""
    seen, first, found = {}, {}, []

    def epoch_1_written():
        for path, state in checkpoint_state(ckpt).items():
            if seen.get(path) == state:
                continue
            seen[path] = state
            try:
                data = torch.load(path, weights_only=True)
            except FileNotFoundError:  # removed since: its run finished
                continue
            key = (data["identity"]["method"], data["identity"]["seed"])
            if data["epoch"] == 0:
                first[key] = time.monotonic()
            elif data["epoch"] == 1 and key in first:
                found.append(time.monotonic() - first[key])
                return True
        return False

    wait_for(epoch_1_written, proc)
    return found[0]


def saved_epochs(ckpt):
    """(method, seed) -> epoch of each resume checkpoint on disk."""
    out = {}
    for path in resume_files(ckpt):
        data = torch.load(path, weights_only=True)
        out[(data["identity"]["method"], data["identity"]["seed"])] = data["epoch"]
    return out


def contents(path):
    with Store(path) as store:
        runs = store.runs()
        return {(r["method"], r["seed"]): (r["status"], r["resumed"],
                                            [{k: v for k, v in m.items() if k != "time"}
                                             for m in store.metrics(r["id"])])
                for r in runs}, len(runs)


@pytest.mark.slow
def test_sigkilled_bench_resumes_to_the_uninterrupted_store(tiny_task, tmp_path):
    task = tiny_task.replace(name="kill-tiny", data_kwargs={**tiny_task.data_kwargs,
                                                            "n_train": 1000})
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(task))
    reference = subprocess.run(command(tmp_path, tmp_path / "ref.sqlite", tmp_path / "ref-ck"),
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr

    store, ckpt = tmp_path / "runs.sqlite", tmp_path / "ck"
    cmd, rng, log = command(tmp_path, store, ckpt), random.Random(20261130), []
    resumable = {}  # (method, seed) -> epoch of the checkpoint a later invocation must use
    # kills 1 and 2: at a random moment of the third epoch of a run this invocation started
    # (timed by what the bench did, not by the clock, so a loaded machine slows both sides
    # alike): mid-epoch, or inside the write at its end
    for _ in range(2):
        stale = set(tmp_files(ckpt))
        proc = start(cmd)
        epoch = wait_for_a_fresh_run(ckpt, proc)
        time.sleep(rng.uniform(0.0, 1.0) * epoch)
        writing = bool(set(tmp_files(ckpt)) - stale)
        kill_group(proc)
        log.append("inside a checkpoint write" if writing else "between checkpoint writes")
        resumable.update(saved_epochs(ckpt))
    # kill 3: inside a checkpoint write of this invocation (the test hook sleeps between the
    # write and the rename; a temporary file a kill above left behind does not count)
    before, stale = saved_epochs(ckpt), set(tmp_files(ckpt))
    proc = start(cmd, POLYAK_TEST_CHECKPOINT_SLEEP="30")
    wait_for(lambda: set(tmp_files(ckpt)) - stale, proc, timeout=300)
    kill_group(proc)
    log.append("inside a checkpoint write")
    assert set(tmp_files(ckpt)) - stale  # the half-done write is left behind as a temporary file...
    after = saved_epochs(ckpt)  # ...and every checkpoint is still a readable, older state
    finished, _ = contents(store)
    for key, epoch in before.items():
        if key in after:
            assert after[key] == epoch, (key, epoch, after[key])
        else:  # the run resumed and finished before the kill: its checkpoint was removed
            assert finished[key][0] == "complete", (key, finished.get(key))
    resumable.update(after)
    # rerun until it finishes
    runs = 0
    while True:
        runs += 1
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            break
        assert runs < 3, done.stderr

    got, n_got = contents(store)
    want, n_want = contents(tmp_path / "ref.sqlite")
    assert n_got == n_want == SEEDS * len(METHODS.split(","))  # no run lost or counted twice
    assert {k: (s, m) for k, (s, _, m) in got.items()} == \
        {k: (s, m) for k, (s, _, m) in want.items()}  # bit-for-bit the same metrics
    assert all(s == "complete" for s, _, _ in got.values())
    # the reruns continued the runs they found checkpoints of, after the saved epoch
    assert resumable, "no run was checkpointed before a kill"
    resumed = {k: [int(e) for e in r.split(",")] for k, (_, r, _) in got.items() if r}
    for key, epoch in resumable.items():
        assert epoch + 1 in resumed.get(key, []), (key, epoch, resumed)
    assert not resume_files(ckpt) and not tmp_files(ckpt)  # finished runs leave no checkpoint
    print(f"kills: {log}; checkpoints resumed: {resumable}; store resumed: {resumed}")
