"""What the 2-process post-hoc test runs on each rank (FSDP2 and DDP on gloo, via _ddp_checks)."""

from __future__ import annotations

from pathlib import Path

import _ddp_checks as ck
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from polyak.averaging import (
    EMA,
    SnapshotDir,
    Snapshots,
    applied,
    ema_weights,
    power_ema_fit,
    reconstruct,
)

STEPS, DECAY, PROFILES, SIGMA_REL = 6, 0.7, (0.05, 0.15), 0.1


def train(model, net, observers, steps: int = STEPS) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for step in range(steps):
        x, y = ck.batch(step, 10)
        opt.zero_grad()
        ck.local_loss(net, x, y).backward()
        opt.step()
        for o in observers:
            o.step()
    for o in observers:
        o.end_epoch(0)


def fsdp(directory: Path) -> dict:
    from torch.distributed.fsdp import fully_shard

    model = ck.mlp()
    fully_shard(model)
    online = EMA(model, DECAY)
    train(model, model, [online, Snapshots(model, directory, every=1, profiles=PROFILES)])
    dist.barrier()                 # every rank's files are written
    d = SnapshotDir(directory)
    out = {"online": [t.full_tensor() for t in online.average]}
    for key, weights in (("ema", ema_weights(d, DECAY)), ("fit", power_ema_fit(d, SIGMA_REL))):
        state = reconstruct(d, weights, model=model)      # this rank's shards only
        out[f"{key}_local_shapes"] = [tuple(t.shape) for t in state.values()]
        with applied(model, state):
            out[key] = [p.full_tensor() for p in model.parameters()]
    return out


def ddp_late_group(rank: int, root: str, port: int) -> None:
    """DDP as Lightning runs it: the model and its Snapshots are built BEFORE the process group
    is initialised; only rank 0 may write, under rank 0's run id."""
    import os

    model = ck.mlp()
    snaps = Snapshots(model, Path(root) / "ddp", every=2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ck.WORLD)
    try:
        train(model, DDP(model), [snaps])
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save({"steps": snaps.steps, "written": len(snaps.entries), "run_id": snaps.run_id},
               Path(root) / f"ddp-rank{rank}.pt")


def run(root: str, rank: int) -> dict:
    return {"fsdp": fsdp(Path(root) / "fsdp")}
