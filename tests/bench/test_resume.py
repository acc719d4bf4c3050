"""Exact resume of a benchmark run from its mid-run checkpoints.

Reference: the same run trained without interruption. The run under test is stopped right
after every checkpoint it writes (one epoch per process-like call of ``train_run``, every state
rebuilt from scratch each time) and continued from the file; on the CPU with one thread its
per-epoch metrics and its final weights must equal the reference's bit for bit, since both
execute the same kernels in the same order from the same state.
"""

import dataclasses

import pytest
import torch

import polyak
from polyak.bench.checkpoints import CheckpointPolicy, KeepEpochs, load_checkpoint
from polyak.bench.resume import CheckpointError, ResumePolicy, RunCheckpoint, parse_every
from polyak.bench.train import run_identity, train_run

EPOCHS = 6


class Stop(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class DiesAfterSave(RunCheckpoint):
    """A run checkpoint whose process 'dies' right after each save."""

    def save(self, state):
        super().save(state)
        raise Stop


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def run_chopped(task, spec, seed, epochs, root):
    """Train ``spec`` one epoch per call, each call resuming from the previous one's file.
    Returns the final result, the number of calls and the method state saved after each epoch."""
    identity = run_identity(task, spec, seed, epochs)
    ckpt = ResumePolicy(root / "resume").for_run(identity)
    dying = DiesAfterSave(ckpt.path, ckpt.identity, every=1)
    keep = CheckpointPolicy(root / "final", KeepEpochs(epochs=frozenset({epochs - 1})))
    states, calls = [], 0
    while True:
        calls += 1
        try:
            result = train_run(task, spec, seed, epochs, checkpoints=keep, resume=dying)
            return result, calls, states
        except Stop:
            states.append(torch.load(ckpt.path, weights_only=True)["method"])


def final_weights(root, task, spec, seed, epochs):
    from polyak.bench.checkpoints import checkpoint_dir

    return load_checkpoint(checkpoint_dir(root, task.name, spec, seed)
                           / f"epoch{epochs - 1}.pt")["model"]


# cut around every event kind in the default run; every paper method in the slow run
EVENTS = ["pwa", "swa", "gadam-lookahead", "tso-alra:inv_every=3", "gadam-auto:patience=1",
          "sam", "schedule-free-adamw", "lookahead"]
CASES = [*EVENTS, *(pytest.param(spec, marks=pytest.mark.slow) for spec in
                    [*polyak.recipes.PAPER_METHODS, "sgdm+ema", "sgd+phasewise"]
                    if spec not in EVENTS)]


@pytest.mark.parametrize("spec", CASES)
def test_resumed_run_is_the_uninterrupted_run_bit_for_bit(spec, tiny_task, tmp_path):
    torch.set_num_threads(1)
    keep = CheckpointPolicy(tmp_path / "ref", KeepEpochs(epochs=frozenset({EPOCHS - 1})))
    reference = train_run(tiny_task, spec, 7, EPOCHS, checkpoints=keep)
    chopped, calls, states = run_chopped(tiny_task, spec, 7, EPOCHS, tmp_path / "cut")
    assert reference.status == chopped.status == "complete"
    assert calls == EPOCHS  # one epoch per call: resumed at every epoch boundary
    assert chopped.resumed_from == list(range(1, EPOCHS))
    assert strip_time(chopped.records) == strip_time(reference.records)
    want = final_weights(tmp_path / "ref", tiny_task, spec, 7, EPOCHS)
    got = final_weights(tmp_path / "cut" / "final", tiny_task, spec, 7, EPOCHS)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    _check_events(spec, states)


def _check_events(spec, states):
    """The cuts fell around the events the recipe has (so resume was tested across them)."""
    name = spec.split(":")[0]
    if name in ("swa", "gadam", "gadamx", "asgd", "sam-avg"):  # averaging from epoch 3 on
        counts = [s["averaging"]["n_averaged"] for s in states]
        assert counts[2] == 0 < counts[3], counts
    if name == "pwa":  # phases [3, 1, 2]: cuts inside phases 1 and 3
        assert [s["averaging"]["n_averaged"] for s in states] == [1, 2, 0, 0, 1]
    if name == "gadam-lookahead":  # Lookahead until the averaging starts, then its AdamW
        done = [s["switches"][0]["done_epoch"] for s in states]
        assert done[:2] == [None, None] and done[-1] is not None, done
    if name == "tso-alra":  # switches to SGD after epoch 0
        switched = [s["optimizer"]["tso_alra"]["switched"] for s in states]
        assert switched[0] is True and all(switched)
    if spec == "gadam-auto:patience=1":
        started = [s["averaging_started"] for s in states]
        assert started[0] is False and started[-1] is True, started


@pytest.mark.slow
def test_resume_of_an_augmented_task_restores_the_augmentation_generator(tmp_path, monkeypatch):
    """CIFAR-form crops and flips draw from their own generator: the cut restores it too
    (ResNet-20 on a few fixture images, 3 epochs)."""
    from _real_data import write_cifar10
    from test_tasks_real import tiny

    monkeypatch.setenv("POLYAK_CACHE", str(tmp_path / "cache"))
    write_cifar10(tmp_path / "data")
    task = tiny("cifar10-resnet20", tmp_path / "data")
    assert task.crop and task.flip
    reference = train_run(task, "sgdm", 1, 3)
    chopped, calls, _ = run_chopped(task, "sgdm", 1, 3, tmp_path)
    assert calls == 3 and strip_time(chopped.records) == strip_time(reference.records)


@pytest.mark.parametrize("spec", ["sgdm", pytest.param("sam-avg", marks=pytest.mark.slow),
                                  pytest.param("tso-alra", marks=pytest.mark.slow)])
def test_lm_run_resumes_bit_for_bit(spec, tmp_path, monkeypatch):
    """The character LM (truncated BPTT, no batch-order generator) resumes exactly too."""
    from _real_data import write_corpus
    from test_train_lm import tiny_lm

    monkeypatch.delenv("POLYAK_TEXT", raising=False)
    write_corpus(tmp_path)
    task = tiny_lm(tmp_path)
    reference = train_run(task, spec, 2, 3)
    chopped, calls, _ = run_chopped(task, spec, 2, 3, tmp_path)
    assert calls == 3 and strip_time(chopped.records) == strip_time(reference.records)


def test_checkpoint_of_another_run_is_refused(tiny_task, tmp_path):
    identity = run_identity(tiny_task, "sgd", 0, 3)
    ckpt = ResumePolicy(tmp_path).for_run(identity)
    ckpt.save({"epoch": 0})
    other = RunCheckpoint(ckpt.path, {**identity, "polyak_version": "99.0"})
    with pytest.raises(CheckpointError, match="belongs to another run.*polyak_version"):
        other.load()
    ckpt.path.write_bytes(ckpt.path.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*delete it"):
        ckpt.load()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint_error_is_one_line_of_whole_sentences(tiny_task, tmp_path, damage):
    """Issue 21: the error cut torch's message at 200 characters ("...your checkpoint file is);
    delete it ..."). It keeps the first sentence of torch's own message, whole, on one line."""
    ckpt = ResumePolicy(tmp_path).for_run(run_identity(tiny_task, "sgd", 0, 3))
    ckpt.save({"epoch": 0})
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a ckpt" * 20,
                           "empty": b""}[damage])
    with pytest.raises(Exception) as torch_error:  # what torch itself says about the file
        torch.load(ckpt.path, map_location="cpu", weights_only=True)
    words = str(torch_error.value).split()
    first = " ".join(words[:next((i + 1 for i, w in enumerate(words) if w.endswith(".")),
                                 len(words))])
    with pytest.raises(CheckpointError) as info:
        ckpt.load()
    message = str(info.value)
    reason = f"{type(torch_error.value).__name__}: {first}" if first else \
        type(torch_error.value).__name__
    assert "\n" not in message
    assert message == f"cannot read checkpoint {ckpt.path} ({reason}); delete it to restart the " \
        "run from epoch 0"
    assert not first or first.endswith(".")


@pytest.mark.parametrize("text, parsed", [("1", (1, None)), ("3", (3, None)),
                                          ("90s", (None, 90.0)), ("10m", (None, 600.0)),
                                          ("1h", (None, 3600.0)), ("off", (None, None))])
def test_parse_every(text, parsed):
    assert parse_every(text) == parsed


@pytest.mark.parametrize("text", ["-1", "x", "0s", "1.5", "m"])
def test_parse_every_rejects(text):
    with pytest.raises(ValueError, match="checkpoint-every"):
        parse_every(text)


def test_a_save_survives_another_run_removing_the_empty_directories(tmp_path, monkeypatch):
    """Two workers share the checkpoint root: the driver removes a finished run's checkpoint
    and the directories it leaves empty, up to the root, while a worker is about to write its
    own there (the race that stopped a 2-worker default bench with "cannot write checkpoint
    ...: No such file or directory"). The save recreates them and writes."""
    from polyak.bench import resume as resume_module

    mine = ResumePolicy(tmp_path / "ck").for_run({"task": "t", "method": "a", "seed": 0,
                                                  "epochs": 2, "config_hash": "h"})
    theirs = ResumePolicy(tmp_path / "ck").for_run({"task": "t", "method": "b", "seed": 0,
                                                    "epochs": 2, "config_hash": "h"})
    theirs.save({"epoch": 0})
    real, calls = resume_module.atomic_save, []

    def racing(obj, path):  # the driver removes the other run's checkpoint right now
        calls.append(path)
        if len(calls) == 1:
            theirs.remove()
            mine.remove()  # nothing of mine yet: the empty directories up to the root go
        return real(obj, path)

    monkeypatch.setattr(resume_module, "atomic_save", racing)
    mine.save({"epoch": 1})
    assert mine.load()["epoch"] == 1 and not (tmp_path / "ck" / "t" / "b").exists()
