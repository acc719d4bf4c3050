"""SWA (momentum SGD + uniform averaging, BatchNorm recalibrated) under lightning.Trainer.

Run: pip install "polyak[lightning]" && python examples/lightning_example.py
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import polyak
from polyak.integrations.lightning import PolyakCallback, method_optimizer


def blobs(n: int, seed: int) -> TensorDataset:
    """Four noisy Gaussian classes in 10 dimensions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    return TensorDataset(centers[y] + 1.5 * torch.randn(n, 10, generator=g), y)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def _evaluate(self, batch, stage):
        x, y = batch
        out = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(out, y))
        self.log(f"{stage}_acc", (out.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return method_optimizer(self)       # the Method's optimizer: one Method step per step


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(blobs(2048, 1), batch_size=64, shuffle=True)
    val = DataLoader(blobs(512, 2), batch_size=512)
    test = DataLoader(blobs(2048, 3), batch_size=512)
    epochs = 12
    module = Classifier()
    method = polyak.recipe("swa", module, epochs, steps_per_epoch=len(train))
    print(method, "averaging from epoch", method.averaging.start_epoch)
    # write_at_end=False keeps the live weights in the module after fit, to compare them here;
    # by default the module holds the reported (SWA) weights once fit returns
    callback = PolyakCallback(method, write_at_end=False)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, train, val)
    print(f"averaged {method.averaging.n_averaged} epochs; lr now {method.lr:.4f}")
    x, y = test.dataset.tensors
    module.eval()
    with torch.no_grad():
        live = (module(x).argmax(1) == y).float().mean().item()
    print(f"live weights (last iterate):               test accuracy {live:.4f}")
    result = trainer.test(module, test, verbose=False)[0]   # tests the SWA weights, swapped in
    print(f"SWA weights (BatchNorm recalibrated):      test accuracy {result['test_acc']:.4f}")


if __name__ == "__main__":
    main()
