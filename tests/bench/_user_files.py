"""Task files of the user-task tests: a small 3-class problem and its variations."""

from __future__ import annotations

import textwrap
from pathlib import Path

from polyak.bench import user_tasks

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "own_task.py"

HEADER = textwrap.dedent("""\
    import torch
    import torch.nn.functional as F
    from torch import nn

    from polyak.bench.user_tasks import UserTask


    def data(n, seed, d=6):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
        return x, y


    def model(seed):
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

""")

# the body of ``def task():`` of a good task
GOOD = ("return UserTask(train=data(192, 0), val=data(64, 1), test=data(64, 2), model=model, "
        "batch_size=32, epochs=2{extra})")

REGRESSION = HEADER + textwrap.dedent("""\
    def reg_model(seed):
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1),
                             nn.Flatten(0))


    def regression():
        def split(n, seed):
            x, _ = data(n, seed)
            return x, torch.sin(x[:, 0]) + 0.5 * x[:, 1]
        return UserTask(train=split(192, 0), val=split(64, 1), test=split(64, 2),
                        model=reg_model, batch_size=32, epochs=3, loss=F.mse_loss,
                        metric="loss")
""")


def task_file(path: Path, body: str = GOOD, extra: str = "", name: str = "task",
              header: str = HEADER) -> Path:
    """Write a task file whose function ``name`` has ``body`` (``{extra}``: more fields)."""
    path.write_text(header + f"def {name}():\n    " + body.format(extra=extra) + "\n")
    return path


def forget() -> None:
    """Empty the caches of task files: as in a new worker process."""
    user_tasks._LOADED.clear()
    user_tasks._MODULES.clear()
