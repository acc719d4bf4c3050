"""PWA (phase-wise aggregation on momentum SGD) under the Hugging Face Trainer.

Run: pip install "polyak[hf]" && python examples/hf_example.py
"""

import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

import polyak
from polyak.integrations.hf import PolyakTrainer


def blobs(n: int, seed: int) -> list[dict]:
    """Four noisy Gaussian classes in 10 dimensions, as the Trainer's dict examples."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    x = centers[y] + 1.5 * torch.randn(n, 10, generator=g)
    return [{"x": xi, "labels": int(yi)} for xi, yi in zip(x, y)]


class Classifier(nn.Module):
    """Any nn.Module works: keyword inputs, returns a dict with the loss when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 4))

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def accuracy(pred) -> dict:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def main() -> None:
    torch.manual_seed(0)
    train, val, test = blobs(2048, 1), blobs(512, 2), blobs(2048, 3)
    epochs, batch = 8, 64
    model = Classifier()
    method = polyak.recipe("pwa", model, epochs, steps_per_epoch=len(train) // batch)
    print(method, "phases", method.averaging.phases)
    out = tempfile.mkdtemp()
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs,
                             per_device_train_batch_size=batch, per_device_eval_batch_size=512,
                             eval_strategy="epoch", save_strategy="no", logging_strategy="no",
                             report_to=[], max_grad_norm=0.0, use_cpu=True, disable_tqdm=True)
    trainer = PolyakTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                            compute_metrics=accuracy, method=method)
    trainer.train()
    print(f"lr now {method.lr:.4f}")
    result = trainer.evaluate(test, metric_key_prefix="test")
    print(f"PWA weights (BatchNorm recalibrated): test accuracy {result['test_accuracy']:.4f}")
    trainer.save_model(out + "/final")       # the reported weights
    print("saved to", out + "/final")


if __name__ == "__main__":
    main()
