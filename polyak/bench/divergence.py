"""When a benchmark run has diverged: a non-finite loss, or a finite one that has exploded.

A non-finite loss (NaN/inf) is divergence by definition. A finite loss has exploded when a mean
NLL (nats per example, or per character for a language model) exceeds

    EXPLODED * log(num_classes) = 100 x the NLL of the uniform prediction

(230 nats for 10 classes): the loss of a classifier that knows nothing, times 100. A network at
initialisation sits near ``log(num_classes)`` and training lowers the mean; to stay 100 times
above it over a whole epoch (or a whole evaluation split), the true class's logit must trail the
largest one by about 230 on average: the logits have grown by orders of magnitude, which is
weights running away (momentum >= 1, a far too large learning rate), not a slow run or one that
collapsed to one class (that costs about ``log(num_classes)``). Exploding runs pass the bound by
orders of magnitude within an epoch (1e3 to 1e16 nats on the tiny MNIST-1D MLP with lr 20-100),
while every built-in recipe at its tuned values on mnist1d-cnn and fmnist-cnn stays below 2 x
``log(num_classes)`` (docs/methods.md, "Benchmark runs that diverge", gives the measurement).
"""

from __future__ import annotations

import math

__all__ = ["EXPLODED", "exploded"]

EXPLODED = 100.0


def exploded(loss: float, num_classes: int) -> str | None:
    """Why the finite mean NLL ``loss`` counts as exploded (for the run's error), or None."""
    bound = EXPLODED * math.log(max(num_classes, 2))
    if loss > bound:
        return (f"{loss:.4g} nats > {EXPLODED:g} x log({num_classes}) = {bound:.4g}, 100x the "
                "NLL of a uniform prediction")
    return None
