"""Snapshots under torch.distributed, 2 gloo processes on the CPU: FSDP2 shards (each rank its
own file) reconstruct what one process does; under DDP only rank 0 writes."""

from __future__ import annotations

import functools

import _ddp_checks as ck
import _posthoc_ranks as ranks
import pytest
import torch

from polyak.averaging import EMA, SnapshotDir, Snapshots, ema_weights, power_ema_fit, reconstruct


def assert_lists_close(got, want, **tol):
    got, want = list(got), list(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    root = tmp_path_factory.mktemp("posthoc")
    out = root / "out"
    out.mkdir()
    return root, ck.spawn(functools.partial(ranks.run, str(root / "runs")), out)


@pytest.mark.slow   # starts 2 processes (~10 s)
def test_fsdp2_shards_reconstruct_the_one_process_average(spawned, tmp_path):
    root, results = spawned
    d = SnapshotDir(root / "runs" / "fsdp")
    assert d.sharded and d.world_size == 2 and len(d) == ranks.STEPS
    assert sorted(p.name for p in d.directory.glob("snapshot-000005-*")) == [
        "snapshot-000005-rank0.pt", "snapshot-000005-rank1.pt"]
    sizes = {p["name"]: p["shard_sizes"] for p in d.manifest["parameters"]}
    assert sizes == {"0.weight": [4, 4], "0.bias": [4, 4], "2.weight": [2, 1], "2.bias": [2, 1]}
    # one process reads every rank's file and assembles full tensors
    assembled = reconstruct(d, ema_weights(d, ranks.DECAY)).values()
    assembled_fit = reconstruct(d, power_ema_fit(d, ranks.SIGMA_REL)).values()
    for r in (0, 1):
        got = results[r]["fsdp"]
        assert [s[0] for s in got["ema_local_shapes"]] == [4, 4, [2, 1][r], [2, 1][r]]
        assert_lists_close(got["ema"], assembled, rtol=0, atol=0)       # the same sums
        assert_lists_close(got["fit"], assembled_fit, rtol=0, atol=0)
        assert_lists_close(got["ema"], got["online"], rtol=0, atol=1e-6)  # FSDP's online EMA
    # the one-process run (same global batches) and its own snapshots
    model = ck.mlp()
    online = EMA(model, ranks.DECAY)
    snaps = Snapshots(model, tmp_path / "one", every=1, profiles=ranks.PROFILES)
    ranks.train(model, model, [online, snaps])
    one = SnapshotDir(tmp_path / "one")
    assert one.entries == d.entries
    assert_lists_close(assembled, reconstruct(one, ema_weights(one, ranks.DECAY)).values(),
                       rtol=1e-5, atol=1e-6)
    assert_lists_close(assembled, online.averaged(), rtol=1e-5, atol=1e-6)
    assert_lists_close(assembled_fit, reconstruct(one, power_ema_fit(one, ranks.SIGMA_REL))
                       .values(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow   # starts 2 processes (~10 s)
def test_ddp_only_rank_0_writes_also_when_built_before_the_process_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(ranks.ddp_late_group, args=(str(tmp_path), ck.free_port()), nprocs=2, join=True)
    d = SnapshotDir(tmp_path / "ddp")
    assert not d.sharded and d.world_size == 2
    assert sorted(p.name for p in d.directory.glob("snapshot-*")) == [
        f"snapshot-{i:06d}.pt" for i in range(3)]
    assert [e.step for e in d.entries] == [2, 4, 6]
    for r in (0, 1):
        got = torch.load(tmp_path / f"ddp-rank{r}.pt", weights_only=True)
        assert got == {"steps": 6, "written": 3, "run_id": d.manifest["run_id"]}
    reconstruct(d, ema_weights(d, 0.5))          # every file is rank 0's run's
