"""Post-hoc averages from raw snapshots against polyak's online averages, closed forms and
explicit means of the recorded iterates; streaming memory measured with a dispatch mode."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from posthoc_helpers import EPOCHS, STEPS, assert_lists_close, loss_of, net, train
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import polyak
from polyak.averaging import (
    EMA,
    FAMILIES,
    PhaseWise,
    SnapshotDir,
    SnapshotInfo,
    Snapshots,
    Uniform,
    applied,
    copy_to,
    ema_weights,
    end_only_weights,
    latest_weights,
    pwa_weights,
    reconstruct,
    reconstruct_many,
    uniform_weights,
)

# float64: reconstruction and online average differ by summation order only.
F64 = dict(rtol=0, atol=1e-12)
# float32: the online average rounds at every lerp, the reconstruction at every add; over the
# <= 20 collections here the two differ by at most 9e-8 (measured) at |theta| ~ 1.
F32 = dict(rtol=0, atol=1e-6)


def entries(n: int, per_epoch: int = 1) -> list[SnapshotInfo]:
    return [SnapshotInfo(i, (i + 1) * 10, i // per_epoch) for i in range(n)]


# ---------------------------------------------------------------------- families: closed forms
def test_ema_weights_are_the_closed_forms():
    d, n = 0.7, 6
    plain = ema_weights(entries(n), d)
    want = [d ** (n - 1)] + [(1 - d) * d ** (n - k) for k in range(2, n + 1)]
    assert plain == pytest.approx(want, abs=1e-15)
    corrected = ema_weights(entries(n), d, bias_correction=True)
    want = [(1 - d) * d ** (n - k) / (1 - d ** n) for k in range(1, n + 1)]
    assert corrected == pytest.approx(want, abs=1e-15)
    assert ema_weights(entries(n), half_life=2) == pytest.approx(
        ema_weights(entries(n), math.sqrt(0.5)), abs=1e-15)
    windowed = ema_weights(entries(n), d, start=2, end=4)
    assert windowed[:2] == [0, 0] and windowed[5] == 0
    assert windowed[2:5] == pytest.approx([d * d, (1 - d) * d, 1 - d], abs=1e-15)


def test_uniform_latest_pwa_weights_and_windows():
    es = entries(12, per_epoch=3)   # epochs 0,0,0,1,1,1,...
    assert uniform_weights(es, 1, 2) == [0.0] * 3 + [1 / 6] * 6 + [0.0] * 3
    assert uniform_weights(es, 40, 60, by="step") == [0.0] * 3 + [1 / 3] * 3 + [0.0] * 6
    assert uniform_weights(es, 10, by="index") == [0.0] * 10 + [0.5, 0.5]
    assert end_only_weights(es, 3) == [0.0] * 9 + [1 / 3] * 3
    assert latest_weights(es, 4) == [0.0] * 8 + [0.25] * 4
    gamma, T = 0.9 ** (80 / 6), 6
    want = [(1 - gamma) * gamma ** (T - t) / (1 - gamma ** T) for t in range(1, T + 1)]
    assert pwa_weights(es, 2, 3) == pytest.approx([0.0] * 6 + want, abs=1e-15)
    assert sum(pwa_weights(es, 0, 3, gamma=0.5)) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("call, message", [
    (lambda es: uniform_weights(es, 7, 9), "no snapshot has epoch in [7, 9]"),
    (lambda es: uniform_weights(es, by="time"), "Invalid by: 'time'"),
    (lambda es: ema_weights(es), "exactly one of decay and half_life"),
    (lambda es: ema_weights(es, 1.0), "Invalid decay: 1.0"),
    (lambda es: ema_weights(es, half_life=0), "Invalid half_life: 0"),
    (lambda es: latest_weights(es, 5), "Invalid k: 5"),
    (lambda es: pwa_weights(es, gamma=1.5), "Invalid gamma: 1.5"),
])
def test_families_name_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(entries(4))


# ---------------------------------------------------------------------- against online averages
CASES = {   # name: (online average, snapshots' every, weights from the snapshot directory)
    "ema": (lambda m: EMA(m, 0.8), 1, lambda s: ema_weights(s, 0.8)),
    "ema-bias-corrected": (lambda m: EMA(m, 0.6, bias_correction=True), 1,
                           lambda s: ema_weights(s, 0.6, bias_correction=True)),
    "ema-warmup": (lambda m: EMA(m, 0.95, warmup=True), 1,
                   lambda s: ema_weights(s, 0.95, warmup=True)),
    "ema-half-life": (lambda m: EMA(m, 0.5 ** (1 / 3)), 1, lambda s: ema_weights(s, half_life=3)),
    "ema-every-3-from-epoch-1": (lambda m: EMA(m, 0.7, every=3, start_epoch=1), 3,
                                 lambda s: ema_weights(s, 0.7, start=1)),
    "ema-per-epoch": (lambda m: EMA(m, 0.5, every="epoch", start_epoch=2), "epoch",
                      lambda s: ema_weights(s, 0.5, start=2)),
    "uniform-per-epoch": (lambda m: Uniform(m, start_epoch=2), "epoch",
                          lambda s: uniform_weights(s, start=2)),
    "uniform-every-2": (lambda m: Uniform(m, start_epoch=1, every=2), 2,
                        lambda s: uniform_weights(s, start=1)),
    "end-only": (lambda m: Uniform(m, start_epoch=3), "epoch", lambda s: end_only_weights(s, 3)),
}


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["f64", "f32"])
def one_run(request, tmp_path_factory):
    """ONE training run with every online average of CASES and snapshots at each ``every``."""
    root = tmp_path_factory.mktemp("online")
    model = net(request.param)
    online = {case: make(model) for case, (make, _, _) in CASES.items()}
    everies = {every for _, every, _ in CASES.values()}
    train(model, [*online.values(), *(Snapshots(model, root / str(e), every=e) for e in everies)])
    return request.param, online, {e: SnapshotDir(root / str(e)) for e in everies}


@pytest.mark.parametrize("case", list(CASES))
def test_reconstruction_equals_the_online_average(one_run, case):
    dtype, online, dirs = one_run
    _, every, family = CASES[case]
    snaps = dirs[every]
    state = reconstruct(snaps, family(snaps))
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert {t.dtype for t in state.values()} == {dtype}
    assert_lists_close(state.values(), online[case].averaged(),
                       **(F64 if dtype == torch.float64 else F32))


def test_windows_and_latest_equal_explicit_means_of_the_iterates(tmp_path):
    model = net()
    iterates = train(model, [Snapshots(model, tmp_path, every=1)])
    snaps = SnapshotDir(tmp_path)
    got = reconstruct(snaps, uniform_weights(snaps, 7, 13, by="step")).values()
    want = [sum(it[i] for it in iterates[6:13]) / 7 for i in range(4)]
    assert_lists_close(got, want, **F64)
    got = reconstruct(snaps, latest_weights(snaps, 5)).values()
    assert_lists_close(got, [sum(it[i] for it in iterates[-5:]) / 5 for i in range(4)], **F64)
    # a per-epoch window [1, 3] of per-step snapshots is Uniform(every=1, ...) up to epoch 3
    every_step = Uniform(net(), start_epoch=1, every=1)
    train(every_step.model, [every_step], epochs=4)
    got = reconstruct(snaps, uniform_weights(snaps, 1, 3)).values()
    assert_lists_close(got, every_step.averaged(), **F64)


def test_pwa_weights_equal_phasewise_aggregates(tmp_path):
    """PhaseWise writes each phase's aggregate into the model; the snapshots (taken before it,
    at the epoch end) reconstruct the same aggregate, and the next phase's."""
    model = net()
    pwa = PhaseWise(model, phases=[3, 2], gamma0=0.8, ref_epochs=3)
    snaps = Snapshots(model, tmp_path)
    method = polyak.Method(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                           averaging=pwa, observers=[snaps])
    aggregates = []
    for epoch in range(5):
        for i in range(STEPS):
            method.step(lambda s=epoch * STEPS + i: loss_of(model, s))
        method.end_epoch(epoch)
        if epoch in (2, 4):
            aggregates.append([p.detach().clone() for p in model.parameters()])
    d = SnapshotDir(tmp_path)
    first = reconstruct(d, pwa_weights(d, 0, 2, gamma0=0.8, ref_epochs=3)).values()
    second = reconstruct(d, pwa_weights(d, 3, 4, gamma0=0.8, ref_epochs=3)).values()
    assert_lists_close(first, aggregates[0], **F64)
    assert_lists_close(second, aggregates[1], **F64)


def test_method_observer_reconstructs_its_ema_across_a_resume(tmp_path):
    """Method(averaging=EMA, observers=[Snapshots]) checkpointed after epoch 1; the run goes on
    to epoch 4 (then "crashes"); a new process resumes from the checkpoint into the same
    directory: the later files are dropped, numbering continues, and the reconstruction equals
    the resumed run's online EMA and the snapshots equal an uninterrupted run's."""
    def build(seed):
        model = net(seed=seed)
        snaps = Snapshots(model, tmp_path / "run", every=2, profiles=(0.05, 0.2))
        method = polyak.Method(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                               averaging=EMA(model, 0.75, every=2), observers=[snaps])
        return model, method, snaps

    def run(model, method, epochs, first=0, at=None):
        for epoch in range(first, epochs):
            for i in range(STEPS):
                method.step(lambda s=epoch * STEPS + i: loss_of(model, s))
            method.end_epoch(epoch)
            if epoch == at:
                saved = copy.deepcopy((model.state_dict(), method.state_dict()))
        return saved if at is not None else None

    model, method, snaps = build(0)
    checkpoint = run(model, method, EPOCHS, at=1)
    uninterrupted = SnapshotDir(tmp_path / "run")
    full = [uninterrupted.load(i) for i in range(len(uninterrupted))]
    assert len(full) == EPOCHS * STEPS // 2

    model, method, snaps = build(1)            # other initial weights: all comes from the state
    model.load_state_dict(checkpoint[0])
    method.load_state_dict(checkpoint[1])
    written = sorted(p.name for p in (tmp_path / "run").glob("snapshot-*.pt"))
    assert written == [f"snapshot-{i:06d}.pt" for i in range(4)]   # steps 2, 4, 6, 8
    assert len(SnapshotDir(tmp_path / "run")) == 4
    run(model, method, EPOCHS, first=2)
    resumed = SnapshotDir(tmp_path / "run")
    assert resumed.entries == uninterrupted.entries
    for i, want in enumerate(full):
        got = resumed.load(i)
        assert got["run_id"] == want["run_id"] and got["step"] == want["step"] == 2 * (i + 1)
        for a, b in zip(got["iterate"] + sum(got["profiles"], []),
                        want["iterate"] + sum(want["profiles"], [])):
            assert torch.equal(a, b)
    state = reconstruct(resumed, ema_weights(resumed, 0.75, by="step"))
    assert_lists_close(state.values(), method.averaging.averaged(), **F64)


def test_an_online_average_is_an_observer_too():
    """Non-feeding averages of one trajectory (observers of one Method) equal those of separate
    runs bit for bit: what a benchmark sharing one training run between methods relies on."""
    def run(averaging, observers=()):
        model = net()
        method = polyak.Method(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                               averaging=averaging(model), observers=[o(model) for o in observers])
        for epoch in range(EPOCHS):
            for i in range(STEPS):
                method.step(lambda s=epoch * STEPS + i: loss_of(model, s))
            method.end_epoch(epoch)
        return method

    shared = run(lambda m: EMA(m, 0.9), [lambda m: Uniform(m, start_epoch=2),
                                         lambda m: EMA(m, 0.5, every="epoch")])
    for average, alone in zip(shared.observers, (run(lambda m: Uniform(m, start_epoch=2)),
                                                 run(lambda m: EMA(m, 0.5, every="epoch")))):
        for a, b in zip(average.averaged(), alone.averaging.averaged()):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------- into a model
def test_copy_to_and_applied_write_the_average_and_recalibrate_bn(tmp_path):
    from avg_helpers import bn_net, image_batches, random_iterate

    model = bn_net()
    snaps = Snapshots(model, tmp_path, every=1)
    iterates = []
    for seed in range(3):   # snapshot three random iterates
        iterates.append(random_iterate(model, seed))
        snaps.step()
    d = SnapshotDir(tmp_path)
    assert d.batchnorm == ["1", "5"]
    state = reconstruct(d, uniform_weights(d, by="index"))
    mean = [sum(it[i] for it in iterates) / 3 for i in range(len(iterates[0]))]
    live = [p.detach().clone() for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    loader = image_batches()
    with applied(model, state, bn_loader=loader):
        assert_lists_close(model.parameters(), mean, rtol=0, atol=1e-6)
        inside = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert_lists_close(model.parameters(), live, rtol=0, atol=0)
    for k, v in buffers.items():
        assert torch.equal(model.state_dict()[k], v)
    reference = copy.deepcopy(model)   # torch's update_bn on the same weights
    with torch.no_grad():
        for p, m in zip(reference.parameters(), mean):
            p.copy_(m)
    torch.optim.swa_utils.update_bn(loader, reference)
    for k, v in inside.items():
        torch.testing.assert_close(v, reference.state_dict()[k], rtol=1e-5, atol=1e-6)
    copy_to(model, state)
    assert_lists_close(model.parameters(), mean, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="do not fit the model"):
        copy_to(net(torch.float32), state)


def test_reconstruct_many_reads_each_file_once_and_equals_separate_calls(tmp_path, monkeypatch):
    model = net()
    train(model, [Snapshots(model, tmp_path, every=1, profiles=(0.05, 0.2))])
    d = SnapshotDir(tmp_path)
    families = [FAMILIES["ema"](d, 0.9), FAMILIES["uniform"](d, 2), FAMILIES["latest"](d, 3),
                FAMILIES["pwa"](d, 3, 4), FAMILIES["end-only"](d, 1),
                FAMILIES["power-ema"](d, 0.1)]
    separate = [reconstruct(d, w) for w in families]
    reads = []
    original = SnapshotDir.load
    monkeypatch.setattr(SnapshotDir, "load",
                        lambda self, i, r=None: reads.append(i) or original(self, i, r))
    together = reconstruct_many(d, families)
    assert sorted(reads) == list(range(len(d)))
    for a, b in zip(together, separate):
        assert_lists_close(a.values(), b.values(), rtol=0, atol=0)
    reads.clear()
    reconstruct(d, latest_weights(d, 3))
    assert reads == [len(d) - 3, len(d) - 2, len(d) - 1]   # zero weights: files not read


# ---------------------------------------------------------------------- streaming memory
class LiveBytes(TorchDispatchMode):
    """The peak, over every aten op run inside it, of the bytes of the CPU storages that ops
    produced (a loaded file's tensors included: torch.load sets them up with aten.set_) and that
    are still alive; storages in ``exclude`` (e.g. the model's) are not counted."""

    def __init__(self, exclude=()) -> None:
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                s = t.untyped_storage()
                if s.data_ptr() not in self.exclude:
                    self.live[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


@pytest.mark.slow   # writes 200 snapshot files (fsync each)
def test_reconstruction_from_200_snapshots_holds_two_models_at_most(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    snaps = Snapshots(model, tmp_path, every=1)
    for _ in range(200):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        snaps.step()
    d = SnapshotDir(tmp_path)
    with LiveBytes() as probe:              # sanity: the probe sees a loaded file
        kept = [d.load(i) for i in range(3)]
    assert probe.peak >= 3 * model_bytes
    del kept
    with LiveBytes(exclude=model.parameters()) as probe:
        copy_to(model, reconstruct(d, ema_weights(d, 0.98), model=model))
    assert model_bytes <= probe.peak <= 2 * model_bytes + 4096, (probe.peak, model_bytes)
    with LiveBytes() as probe:
        reconstruct_many(d, [uniform_weights(d, by="index"), latest_weights(d, 10)])
    assert probe.peak <= 3 * model_bytes + 4096, (probe.peak, model_bytes)
