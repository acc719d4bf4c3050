"""``polyak train``: one run of the benchmark loop, on one process or under ``torchrun``.

``polyak train --task T --method SPEC --seed S [--epochs E] [--out DIR]`` trains exactly what
``polyak bench`` trains for that (task, method, seed) and prints the result as JSON on the last
line of stdout (and writes it to ``DIR/result.json``). Launched as
``torchrun --nproc_per_node=N -m polyak train ...`` it trains one run with
``DistributedDataParallel`` over the N processes (:mod:`polyak.bench.ddp`); rank 0 prints and
writes, the other ranks stay silent. With ``--snapshots DIR`` the run keeps the snapshots
``polyak bench --posthoc`` keeps (every epoch, and EDM2's power-EMA profiles) in ``DIR``, for
``polyak posthoc DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from polyak.cli import app, fail
from polyak.cli.bench import DATA_DIR_HELP, _data_dir, _device, _tasks


def _result_json(task, spec: str, seed: int, epochs: int, result, world: int) -> dict:
    return {"task": task.name, "method": spec, "seed": seed, "epochs": epochs,
            "status": result.status, "error": result.error, "world_size": world,
            "resumed_from": list(result.resumed_from), "machines": list(result.machines),
            "wall_time": result.wall_time, "records": result.records}


@app.command("train")
def train_command(
    task: str = typer.Option(None, "--task", help="The task (default mnist1d-cnn)."),
    method: str = typer.Option(..., "--method", help="One recipe spec, e.g. 'swa' or "
                               "'gadamx:lr=0.05'."),
    seed: int = typer.Option(0, "--seed", help="The run's seed (sets every RNG)."),
    epochs: int = typer.Option(None, "--epochs", help="Epoch budget (default: the task's)."),
    out: str = typer.Option(None, "--out", help="Directory to write result.json into."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available; under "
                               "torchrun cuda:LOCAL_RANK), cpu or cuda[:N]."),
    data_dir: str = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun: SyncBatchNorm "
                                 "(training statistics of the global batch; CUDA only)."),
    checkpoint_dir: str = typer.Option(None, "--checkpoint-dir", help="Save the run's full "
                                       "state there and resume from it when present."),
    checkpoint_every: str = typer.Option("1", "--checkpoint-every", help="With "
                                         "--checkpoint-dir: epochs between saves (or 90s, 10m)."),
    snapshots: str = typer.Option(None, "--snapshots", help="Keep the run's snapshots in this "
                                  "directory (for `polyak posthoc DIR`)."),
) -> int:
    """Train one run (the benchmark's loop); under torchrun, data-parallel over the ranks."""
    import os

    import torch

    from polyak.bench import ddp
    from polyak.bench.runner import Job, plan_grid
    from polyak.distributed import is_distributed, rank, world_size

    if epochs is not None and epochs < 1:
        fail(f"Invalid epochs: {epochs} (allowed: an integer >= 1)")
    if seed < 0:
        fail(f"Invalid seed: {seed} (allowed: an integer >= 0)")
    name = _device(device)
    if "LOCAL_RANK" in os.environ and name == "cuda":
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    (the_task,) = _tasks(task, name, _data_dir(data_dir))
    (checked,) = plan_grid([the_task], [method], seeds=1, epochs=epochs)  # validates the spec
    job = Job(the_task, method, seed, checked.epochs)
    resume = _resume(checkpoint_dir, checkpoint_every, job, snapshots is not None)
    ddp.init_from_env(the_task.device)
    from polyak.bench.train import train_run

    attach = None
    if snapshots is not None:
        from polyak.bench.posthoc import snapshot_observer

        def attach(model, *_):
            return [snapshot_observer(model, [job], Path(snapshots))]

    me, world = rank(), world_size()
    try:
        result = train_run(the_task, method, seed, job.epochs, sync_bn=sync_bn, resume=resume,
                           attach=attach)
    finally:
        if is_distributed():
            torch.distributed.destroy_process_group()
    if me != 0:
        return 0
    data = _result_json(the_task, method, seed, job.epochs, result, world)
    text = json.dumps(data)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(json.dumps(data, indent=2) + "\n")
    if resume is not None and result.status != "failed":
        resume.remove()
    typer.echo(text)
    return 0


def _resume(checkpoint_dir: str | None, every: str, job, snapshots: bool = False):
    """The run's resume checkpoint under ``checkpoint_dir`` (``None`` without one); with
    ``snapshots`` its state holds theirs (another identity than the plain run's)."""
    if checkpoint_dir is None:
        return None
    from polyak.bench.resume import ResumePolicy, parse_every
    from polyak.bench.train import run_identity

    n_epochs, seconds = parse_every(every)
    policy = ResumePolicy(Path(checkpoint_dir).resolve(), n_epochs, seconds)
    identity = run_identity(job.task, job.spec, job.seed, job.epochs)
    if snapshots:
        identity["posthoc"] = True
    return policy.for_run(identity)
