"""Where a benchmark run trains: device choice, and the CUDA fast path (bf16 autocast,
channels-last).

Not from a paper: the papers trained on GPUs with their frameworks' defaults; this module makes
the benchmark use a GPU well without changing what a method computes in float32.

- :func:`resolve_device` turns the ``--device`` choice (``auto``, ``cpu``, ``cuda``,
  ``cuda:N``) into a device string; ``auto`` is CUDA when available; asking for CUDA on a
  machine without it is a ``ValueError`` that says so.
- :class:`OnDevice` wraps a model for CUDA: the input is converted to the channels-last memory
  format (4-D image batches; the model's weights are converted once), the forward pass runs
  under ``torch.autocast("cuda", dtype=torch.bfloat16)`` and the logits come back as float32, so
  the loss is computed in float32 (what autocast does for ``cross_entropy`` anyway). Parameters,
  gradients, optimizer state and weight averages stay float32: autocast only lowers the
  precision of the matrix products inside the forward pass (and their backward). BatchNorm
  recalibration and evaluation call the same wrapped model, so they run the same forward.
  K-FAC factors (TSO-ALRA) are computed from the captured activations and output gradients cast
  to the weights' float32.
- :func:`prepare_model` moves a model to the device and wraps it when the device is CUDA (and
  turns on ``cudnn.benchmark``); on the CPU it returns the model unchanged, so CPU runs are
  exactly what they were.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["DEVICES", "OnDevice", "resolve_device", "prepare_model", "is_cuda"]

DEVICES = ("auto", "cpu", "cuda")
_CUDA = re.compile(r"^cuda(:\d+)?$")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def resolve_device(name: str, check: bool = True) -> str:
    """``"auto"`` -> ``"cuda"`` if CUDA is available, else ``"cpu"``; ``"cpu"``/``"cuda[:N]"``
    checked against the machine unless ``check=False`` (reading results, not training).
    ``ValueError`` for anything else or a missing GPU."""
    if not isinstance(name, str):
        raise ValueError(f"Invalid device: {name!r} (allowed: auto, cpu, cuda, cuda:N)")
    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if not _CUDA.match(name):
        raise ValueError(f"Invalid device: {name!r} (allowed: auto, cpu, cuda, cuda:N)")
    if not check:
        return name
    if not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {name!r} (CUDA is not available on this machine: "
                         "no CUDA GPU or a CPU-only torch; allowed here: auto, cpu)")
    index = int(name.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"Invalid device: {name!r} (this machine has {count} CUDA device(s): "
                         f"allowed cuda:0..cuda:{count - 1})")
    return name


class OnDevice(nn.Module):
    """``model`` run in bf16 autocast (and channels-last for 4-D inputs), float32 logits out.

    ``self.net`` is the wrapped model; parameters and buffers are the wrapped model's own, so an
    optimizer, an average or BatchNorm recalibration built on the wrapper act on them.
    """

    def __init__(self, net: nn.Module, *, autocast: bool = True,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.net, self.autocast, self.channels_last = net, bool(autocast), bool(channels_last)

    def forward(self, x: torch.Tensor, *args: object) -> object:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.autocast:
            return self.net(x, *args)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            out = self.net(x, *args)
        return out.float() if isinstance(out, torch.Tensor) else out


def prepare_model(model: nn.Module, device: str, *, autocast: bool = True,
                  channels_last: bool = True) -> nn.Module:
    """The model to train on ``device``: unchanged on the CPU; on CUDA moved there (its weights
    in channels-last format when ``channels_last`` and it has 4-D weights) and wrapped in
    :class:`OnDevice`."""
    if not is_cuda(device):
        return model
    torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest
    model = model.to(device)
    has_4d = any(p.dim() == 4 for p in model.parameters())
    if channels_last and has_4d:
        model = model.to(memory_format=torch.channels_last)
    return OnDevice(model, autocast=autocast, channels_last=channels_last and has_4d)
