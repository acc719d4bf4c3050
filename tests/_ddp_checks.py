"""What the 2-process gloo tests of tests/test_distributed.py run on each rank.

``spawn(fn, tmp_path)`` starts 2 processes (torch.multiprocessing, gloo on the CPU), runs
``fn(rank)`` in each under an initialised process group and returns ``[result_rank0,
result_rank1]`` (saved with torch.save). The one-process references are computed by the tests.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from polyak.averaging import EMA, PhaseWise, Uniform, recalibrate_bn
from polyak.distributed import rank_slice, world_size
from polyak.method import Method
from polyak.optim import SAM, TSOALRA, KFACSqrt
from polyak.triggers import Plateau

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = fn(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def spawn(fn, tmp_path) -> list:
    mp.spawn(_entry, args=(fn, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------- data and models
def batch(step: int, n: int, d: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (the same on every rank and in the 1-process reference)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, d, generator=g), torch.randint(classes, (n,), generator=g)


def mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(8)] if bn else []
    return nn.Sequential(nn.Linear(6, 8), *mid, nn.Tanh(), nn.Linear(8, 3))


def local_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """This rank's loss on its part of the global batch: k/N times its sum of losses, so that
    DDP's gradient average is the gradient of the global-batch mean (also for uneven splits)."""
    part = rank_slice(len(x))
    loss = F.cross_entropy(model(x[part]), y[part], reduction="sum")
    return loss * (world_size() / len(x))


# ---------------------------------------------------------------- checks (one per rank)
def recal_batches(rank: int) -> list[torch.Tensor]:
    """Rank ``rank``'s recalibration batches (different counts and sizes on each rank)."""
    g = torch.Generator().manual_seed(50 + rank)
    sizes = [7, 5] if rank == 0 else [9]
    return [torch.randn(s, 6, generator=g) * (1 + 2 * rank) + rank for s in sizes]


def deep_bn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 4),
                         nn.BatchNorm1d(4))


def check_bn(rank: int) -> dict:
    model = deep_bn()
    with torch.no_grad():  # the buffers hold junk before: recalibration must not read them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.fill_(5.0)
    recalibrate_bn(model, recal_batches(rank))
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or
            "num_batches" in k}


def train_kfac(model: nn.Module, opt, steps: int, n: int, ddp: bool) -> nn.Module:
    net = DDP(model) if ddp else model
    for step in range(steps):
        x, y = batch(step, n)
        opt.zero_grad()
        loss = local_loss(net, x, y) if ddp else F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return model


def make_kfac(model: nn.Module) -> KFACSqrt:
    return KFACSqrt(model, lr=0.2, factor_decay=0.5, damping=1e-2, inv_every=1, momentum=0.5)


def kfac_state(model: nn.Module, opt: KFACSqrt) -> dict:
    st = [opt.state[m.weight] for m in opt.layers]
    return {"A": [s["A"].clone() for s in st], "B": [s["B"].clone() for s in st],
            "params": [p.detach().clone() for p in model.parameters()]}


def check_kfac(rank: int) -> dict:
    out = {}
    for n in (10, 11):  # an even and an uneven split of the global batch
        model = mlp()
        opt = make_kfac(model)
        train_kfac(model, opt, 3, n, ddp=True)
        out[n] = kfac_state(model, opt)
    return out


# validation losses handed to each rank: rank 0's stops improving after epoch 1
VAL_LOSSES = {0: [1.0, 0.8, 0.9, 0.95, 0.99, 0.7], 1: [1.0, 0.8, 0.7, 0.6, 0.5, 0.4]}


def check_triggers(rank: int) -> dict:
    model = mlp()
    tso = TSOALRA(model, lr=0.1, trigger=Plateau(2), inv_every=1)
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    averaging=Uniform(model), averaging_trigger=Plateau(1, mode="max"))
    # early stopping on its own (a stop trigger beside an averaging trigger watches only from
    # the epoch after averaging started, GadamAuto's rule)
    stopper = Method(model, torch.optim.SGD(model.parameters(), lr=0.1), stop_trigger=Plateau(3))
    switched, stopped, averaging = [], [], []
    for epoch, loss in enumerate(VAL_LOSSES[rank]):
        if tso.end_epoch(epoch, val_loss=loss):
            switched.append(epoch)
        method.end_epoch(epoch, val_loss=loss, val_acc=-loss)
        stopper.end_epoch(epoch, val_loss=loss)
        stopped.append(stopper.should_stop)
        averaging.append(method.averaging_started)
    return {"switch": switched, "tso_taken": tso.switch_epoch_taken, "stop": stopped,
            "averaging": averaging}


def train_sam(model: nn.Module, steps: int, n: int, ddp: bool) -> nn.Module:
    net = DDP(model) if ddp else model
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.5, model=model)
    method = Method(model, sam)
    for step in range(steps):
        x, y = batch(step, n)
        method.step(lambda x=x, y=y: local_loss(net, x, y) if ddp
                    else F.cross_entropy(net(x), y))
    return model


def check_sam(rank: int) -> dict:
    params = [p.detach().clone() for p in train_sam(mlp(), 3, 11, ddp=True).parameters()]
    bn_model = train_sam(mlp(bn=True), 1, 10, ddp=True)
    bn = bn_model[1]
    return {"params": params, "bn": (bn.running_mean.clone(), bn.running_var.clone())}


def averages_run(ddp: bool, steps: int = 6, n: int = 11) -> dict:
    """SGD on mlp() with a Uniform (every step), an EMA and a PhaseWise (2 steps = 1 "epoch")."""
    model = mlp()
    net = DDP(model) if ddp else model
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    uniform, ema = Uniform(model, every=1), EMA(model, decay=0.7)
    pwa = PhaseWise(model, phases=[2, 1], gamma0=0.5, ref_epochs=2)
    calls = {"n": 0}
    if ddp:
        _count_collectives(calls)
    for step in range(steps):
        x, y = batch(step, n)
        opt.zero_grad()
        (local_loss(net, x, y) if ddp else F.cross_entropy(net(x), y)).backward()
        opt.step()
        before = calls["n"]
        uniform.step()
        ema.step()
        if step % 2 == 1:
            pwa.end_epoch(step // 2)
        assert calls["n"] == before, "a weight average communicated"
    return {"uniform": uniform.averaged(), "ema": ema.averaged(),
            "pwa": [p.detach().clone() for p in model.parameters()]}


def _count_collectives(calls: dict) -> None:
    for name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor",
                 "reduce_scatter"):
        original = getattr(dist, name)

        def counted(*args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(*args, **kwargs)
        setattr(dist, name, counted)


def check_averages(rank: int) -> dict:
    return averages_run(ddp=True)


def check_fsdp(rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    fully_shard(model)
    avg = Uniform(model, every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for step in range(4):
        x, y = batch(step, 10)
        opt.zero_grad()
        local_loss(model, x, y).backward()
        opt.step()
        avg.step()
    local_numel = sum(t.to_local().numel() for t in avg.average)
    with avg.applied(model):
        inside = [p.full_tensor() for p in model.parameters()]
    return {"types": [type(t).__name__ for t in avg.average], "local_numel": local_numel,
            "full": [t.full_tensor() for t in avg.average], "inside": inside,
            "nbytes": avg.nbytes}
