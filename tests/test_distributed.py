"""polyak under torch.distributed: 2 gloo processes on the CPU against one-process references.

One 2-process run (``_ddp_checks.run_all``, ~15 s, slow-marked) computes every check on both ranks;
each test compares its part with a reference computed here in one process: torch's own
BatchNorm and explicit mean/variance of the concatenated inputs, K-FAC / SAM / SGD on the whole
global batch, the triggers fed rank 0's metrics.
"""

from __future__ import annotations

import _ddp_checks as ck
import pytest
import torch
from torch import nn

from polyak import distributed
from polyak.averaging import Uniform, recalibrate_bn


def run_all(rank: int) -> dict:
    return {name: getattr(ck, f"check_{name}")(rank)
            for name in ("bn", "kfac", "triggers", "sam", "averages", "fsdp")}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return ck.spawn(run_all, tmp_path_factory.mktemp("ddp"))


def assert_close_lists(got, want, **tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


def test_helpers_are_noops_without_a_process_group():
    t = torch.tensor([1.0, 2.0])
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank()) == (1, 0)
    assert distributed.all_reduce_sum_([t])[0] is t and t.tolist() == [1.0, 2.0]
    assert distributed.broadcast_value(0.25) == 0.25
    assert distributed.rank_slice(7) == slice(0, 7)
    distributed.barrier()


def test_rank_slices_split_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.rank_slice(11))
    assert [list(range(11))[s] for s in parts] == [list(t) for t in
                                                  torch.arange(11).tensor_split(3)]


@pytest.mark.slow
def test_bn_recalibration_uses_the_statistics_of_every_ranks_data(ranks):
    model = ck.deep_bn()
    batches = ck.recal_batches(0) + ck.recal_batches(1)
    inputs = {1: [], 4: []}  # each BatchNorm's inputs over every batch of both ranks
    hooks = [model[i].register_forward_pre_hook(
        lambda m, a, i=i: inputs[i].append(a[0].detach())) for i in inputs]
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    for i in (1, 4):
        x = torch.cat(inputs[i]).double()
        for r in (0, 1):
            stats = ranks[r]["bn"]
            torch.testing.assert_close(stats[f"{i}.running_mean"].double(), x.mean(0),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stats[f"{i}.running_var"].double(), x.var(0),
                                       rtol=1e-5, atol=1e-6)
            assert int(stats[f"{i}.num_batches_tracked"]) == 3
    # the first BatchNorm sees per-example inputs: == one-process recalibration on the
    # concatenated data in one batch (torch's BatchNorm computes the reference)
    one = ck.deep_bn()
    recalibrate_bn(one, [torch.cat(batches)])
    for key in ("1.running_mean", "1.running_var"):
        for r in (0, 1):
            torch.testing.assert_close(ranks[r]["bn"][key], one.state_dict()[key],
                                       rtol=1e-5, atol=1e-6)
    for key, value in ranks[0]["bn"].items():
        assert torch.equal(value, ranks[1]["bn"][key])


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, 11])
def test_kfac_factors_are_those_of_the_global_batch(ranks, n):
    model = ck.mlp()
    opt = ck.make_kfac(model)
    ck.train_kfac(model, opt, 3, n, ddp=False)
    want = ck.kfac_state(model, opt)
    for r in (0, 1):
        got = ranks[r]["kfac"][n]
        assert_close_lists(got["A"], want["A"], rtol=1e-5, atol=1e-6)
        assert_close_lists(got["B"], want["B"], rtol=1e-5, atol=1e-6)
        assert_close_lists(got["params"], want["params"], rtol=1e-5, atol=1e-6)
    for key in ("A", "B", "params"):  # every rank holds the same: one all-reduced value
        assert_close_lists(ranks[0]["kfac"][n][key], ranks[1]["kfac"][n][key], rtol=0, atol=0)


@pytest.mark.slow
def test_triggers_decide_on_rank_0s_metric_on_every_rank(ranks):
    want = ck.check_triggers(0)  # one process, rank 0's validation losses
    assert want["switch"] == [3] and want["tso_taken"] == 4 and True in want["stop"]
    assert ranks[0]["triggers"] == want
    assert ranks[1]["triggers"] == want  # rank 1's own losses would never have fired


@pytest.mark.slow
def test_sam_perturbs_with_the_all_reduced_gradient(ranks):
    want = [p.detach() for p in ck.train_sam(ck.mlp(), 3, 11, ddp=False).parameters()]
    for r in (0, 1):
        assert_close_lists(ranks[r]["sam"]["params"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sam_keeps_the_batchnorm_statistics_of_the_clean_pass(ranks):
    x, _ = ck.batch(0, 10)
    for r in (0, 1):
        reference = ck.mlp(bn=True)  # torch's BatchNorm after ONE forward of this rank's part
        reference.train()
        with torch.no_grad():
            reference(x[5 * r:5 * r + 5])
        bn = reference[1]
        mean, var = ranks[r]["sam"]["bn"]
        torch.testing.assert_close(mean, bn.running_mean)
        torch.testing.assert_close(var, bn.running_var)


@pytest.mark.slow
def test_averages_are_identical_on_every_rank_and_match_one_process(ranks):
    want = ck.averages_run(ddp=False)
    for key in ("uniform", "ema", "pwa"):
        assert_close_lists(ranks[0]["averages"][key], ranks[1]["averages"][key], rtol=0, atol=0)
        assert_close_lists(ranks[0]["averages"][key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fsdp2_average_keeps_each_ranks_shard(ranks):
    model = ck.mlp()  # the one-process reference: plain SGD, every step averaged
    avg = Uniform(model, every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for step in range(4):
        x, y = ck.batch(step, 10)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        avg.step()
    total = sum(p.numel() for p in model.parameters())
    for r in (0, 1):
        got = ranks[r]["fsdp"]
        assert set(got["types"]) == {"DTensor"}
        assert got["local_numel"] < total and got["nbytes"] < 4 * total
        assert_close_lists(got["full"], avg.averaged(), rtol=1e-5, atol=1e-6)
        assert_close_lists(got["inside"], avg.averaged(), rtol=1e-5, atol=1e-6)
    assert ranks[0]["fsdp"]["local_numel"] + ranks[1]["fsdp"]["local_numel"] == total
