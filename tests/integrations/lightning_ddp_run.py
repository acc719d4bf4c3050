"""One rank of a 2-process Lightning DDP run (started by torch.distributed.run in the tests).

Usage: python -m torch.distributed.run --nproc_per_node 2 lightning_ddp_run.py OUT SPEC
Writes OUT/rank<r>.pt: the module's state after fit (the reported weights written in), the
Method's average and counters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from _tiny import EPOCHS_DDP as EPOCHS  # noqa: E402
from test_lightning import Module, loaders  # noqa: E402

import polyak  # noqa: E402
from polyak.integrations.lightning import PolyakCallback  # noqa: E402


def main(out: str, spec: str) -> None:
    train, val, _ = loaders()
    module = Module()
    per_rank_steps = len(train) // 2
    method = polyak.recipe(spec, module, EPOCHS, per_rank_steps)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp",
                        callbacks=[PolyakCallback(method)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    avg = method.averaging
    torch.save({"state": module.state_dict(), "average": list(avg.average),
                "n_averaged": avg.n_averaged, "steps": method.steps,
                "fired": getattr(method.averaging_trigger, "fired_epoch", None)},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        # Lightning destroys the process group at exit only for NCCL. Without this, gloo's threads
        # can outlive the interpreter and abort the process at exit ("terminate called without
        # an active exception", SIGABRT), after the results were written.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
