"""The benchmark loop under DDP: 2 gloo processes on the CPU against the one-process run.

The tiny MNIST-1D MLP (no BatchNorm, no dropout) is trained by ``train_run`` once in this process
and once in each of 2 ranks (``torch.multiprocessing``, gloo): the global batch of every step is
split across the ranks, so every metric of every epoch must match the one-process run up to the
order of floating-point sums (rtol 1e-5), and be identical on both ranks.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polyak.bench.train import train_run

# tso-alra at damping 1e-3: the bench's "tso-alra" is the TSO-ALRA paper's arm, whose damping
# 1e-6 amplifies the order of the ranks' floating-point sums (relative 1e-7) into 6e-5 of the
# validation loss after an epoch on this tiny MLP: the runs agree, but not to 1e-5
METHODS = ["swa", "pwa", "tso-alra:damping=0.001", "sam-avg", "gadam-auto:patience=1", "sgdm"]
EPOCHS = 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, task, specs, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    seen = {"n": 0}  # training examples through the first layer on this rank

    def count(module, args):
        if module.training and torch.is_grad_enabled() and getattr(module, "in_features", 0) == 40:
            seen["n"] += args[0].shape[0]
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    results, examples = {}, {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for spec in specs:
                seen["n"] = 0
                results[spec] = train_run(task, spec, 0, EPOCHS)
                examples[spec] = seen["n"]
    finally:
        handle.remove()
        dist.destroy_process_group()
    saved = {s: (r.status, [{k: v for k, v in rec.items() if k != "time"} for rec in r.records],
                 examples[s]) for s, r in results.items()}
    saved["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    torch.save(saved, f"{out}/rank{rank}.pt")


def two_ranks(task, specs, tmp_path):
    mp.spawn(_rank_main, args=(task, specs, _port(), str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def assert_records_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys() - {"time"}
        for key in g:
            tol = 1.5 / 100 if key.endswith("acc") else 0.0  # one example of 100 may flip
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=max(tol, 1e-6)), (key, g, w)


@pytest.mark.slow
def test_ddp_run_matches_the_one_process_run_without_batchnorm(tiny_mlp_task, tmp_path):
    # batches of 37: 6 split 19/18 and a last one of 34 split 17/17 (the losses are rescaled)
    task = tiny_mlp_task.replace(epochs=EPOCHS, batch_size=37)
    ranks = two_ranks(task, METHODS, tmp_path)
    assert ranks[0]["sgdm"][2] == EPOCHS * (6 * 19 + 17)  # rank 0's part of every batch
    assert ranks[1]["sgdm"][2] == EPOCHS * (6 * 18 + 17)
    for spec in METHODS:
        want = train_run(task, spec, 0, EPOCHS)
        assert ranks[0][spec][:2] == ranks[1][spec][:2]  # the same metrics, same decisions
        status, records, _ = ranks[0][spec]
        assert status == want.status == "complete"
        assert_records_close(records, want.records)


@pytest.mark.slow
def test_ddp_run_with_batchnorm_agrees_across_ranks(tiny_task, tmp_path):
    ranks = two_ranks(tiny_task, ["swa", "tso-alra"], tmp_path)
    for got in ranks:  # the CNN's (N, L, C) layers give DDP gradients in its bucket layout
        assert not [w for w in got["warnings"] if "strides" in w], got["warnings"]
    for spec in ("swa", "tso-alra"):
        assert ranks[0][spec][:2] == ranks[1][spec][:2]
        status, records, _ = ranks[0][spec]
        assert status == "complete" and len(records) == EPOCHS
