"""Kronecker factors of K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions).

The factor machinery behind :class:`polyak.optim.kfac.KFACSqrt` (TSO-ALRA, Ida & Fujiwara,
eq. 14): per layer, the input factor ``A = E[a a^T]`` and the output-gradient factor
``B = E[b b^T]``, and their damped inverse square roots ``U (Lambda + eps I)^(-1/2) U^T``.

Layout and scaling (the K-FAC / KFC conventions)
------------------------------------------------
A layer computes ``s = W a`` (``W``: out x D, the bias being the last column of ``W`` against a
constant 1 appended to ``a``). A convolution is the same product at each of its ``T`` output
positions, ``a`` being the input patch (``F.unfold``, ordered like ``weight.view(out, -1)``);
a Linear layer fed ``(N, ..., in)`` has ``T`` = the product of the middle dimensions.
Autograd hands us ``g = dL/ds`` for the batch-MEAN loss ``L = (1/N) sum_n l_n``, so that

    weight.grad = sum_{n,t} g_{n,t} a_{n,t}^T                      (exactly)

and the gradient of one example's loss is ``sum_t (N g_{n,t}) a_{n,t}^T``. Under the KFC
assumptions (positions uncorrelated, statistics shared across positions) the per-example Fisher
``E_n[vec(dl_n/dW) vec(dl_n/dW)^T]`` (column-major vec) is approximated by ``A kron B`` with

    A = 1/(N T) * sum_{n,t} a a^T                 (the mean over examples and positions)
    B =   N     * sum_{n,t} g g^T  = T * mean_{n,t} (N g)(N g)^T

``N`` is the size of the layer input's first dimension (1 for an unbatched convolution). Only the
product ``A kron B`` is fixed by the Fisher; the split between the two factors matters through the
damping, which is added to each factor separately. This split is the one of Grosse & Martens
(2016, eq. 23-25: A the patch second moment, B carrying the ``T``).

Data parallelism (:func:`combine_ranks`). The global batch of ``N`` examples is split over ``k``
ranks, ``N_r`` on rank ``r``, and rank ``r``'s loss is ``k/N`` times the sum of its examples'
losses (the local mean when the split is even: DDP then averages the gradients into the
global-batch mean gradient). So ``g_r = (k/N) dl/ds``, ``A_r = 1/(N_r T) sum_r a a^T`` and
``B_r = N_r sum_r g g^T``, and the factors of the global batch are

    A = sum_r N_r A_r / N,        B = (1/N) sum_n dl dl^T = N/k^2 * sum_r B_r / N_r

(for an even split: the plain means over ranks), obtained with one all-reduce of the sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyak.distributed import all_reduce_sum_, is_distributed, world_size

__all__ = [
    "is_supported",
    "batch_size",
    "patches_t",
    "input_patches",
    "output_grads",
    "input_factor",
    "grad_factor",
    "inverse_sqrt",
    "homogeneous",
    "combine_ranks",
]


def is_supported(module: nn.Module) -> bool:
    """Linear, Conv1d and Conv2d with ``groups == 1`` get Kronecker factors."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1
    return False


def batch_size(module: nn.Module, x: Tensor) -> int:
    """``N``: the first dimension of a batched layer input, 1 for an unbatched one."""
    unbatched_dim = 1 if isinstance(module, nn.Linear) else module.weight.dim() - 1
    return x.shape[0] if x.dim() > unbatched_dim else 1


def _padded_4d(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple, tuple, tuple]:
    """The input padded as the module pads it, as ``(N, C, H, W)`` (a Conv1d has ``H = 1``),
    with the kernel size, stride and dilation as pairs."""
    if isinstance(module, nn.Conv1d):
        x = (x.unsqueeze(0) if x.dim() == 2 else x).unsqueeze(2)
        geometry = [(1, v[0]) for v in (module.kernel_size, module.stride, module.dilation)]
        pad = [*module._reversed_padding_repeated_twice, 0, 0]
    elif isinstance(module, nn.Conv2d):
        x = x.unsqueeze(0) if x.dim() == 3 else x
        geometry = [module.kernel_size, module.stride, module.dilation]
        pad = list(module._reversed_padding_repeated_twice)
    else:
        raise TypeError(f"no Kronecker factors for {type(module).__name__}")
    if any(pad):  # every padding_mode, and padding='same' (possibly asymmetric)
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    return x, *geometry


def patches_t(module: nn.Module, x: Tensor) -> Tensor:
    """The transposed patch matrix ``[a_1 ... a_{NT}]``, ``(D, N*T)``, without the homogeneous 1.

    Rows are ordered like ``weight.view(out, -1)`` (channel, then kernel offsets row-major),
    columns like :func:`output_grads` (example, then output positions row-major). Built with one
    strided copy per kernel offset straight into this layout: cheaper than ``F.unfold`` followed
    by the transpose that ``a^T a`` needs.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features).t()
    x, (kh, kw), (sh, sw), (dh, dw) = _padded_4d(module, x)
    n, c, h, w = x.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    at = x.new_empty(c, kh * kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            at[:, i * kw + j].copy_(x[:, :, rows, cols].transpose(0, 1))
    return at.view(c * kh * kw, n * ho * wo)


def input_patches(module: nn.Module, x: Tensor) -> Tensor:
    """Rows ``a`` (without the homogeneous 1) as an ``(N*T, D)`` matrix (a view of
    :func:`patches_t`): ``weight.grad == output_grads(...).T @ input_patches(...)``."""
    return patches_t(module, x).t()


def output_grads(module: nn.Module, grad: Tensor) -> Tensor:
    """``g = dL/ds`` as an ``(N*T, out)`` matrix, rows in the order of :func:`input_patches`."""
    if isinstance(module, nn.Linear):
        return grad.reshape(-1, module.out_features)
    if grad.dim() == module.weight.dim() - 1:  # unbatched convolution
        grad = grad.unsqueeze(0)
    return grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])


def input_factor(module: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """This batch's ``A = 1/(N T) sum a a^T`` (with the homogeneous coordinate when biased)."""
    at = patches_t(module, x).to(dtype)
    d, m = at.shape
    if module.bias is None:
        return torch.mm(at, at.t()).div_(m)
    A = at.new_empty(d + 1, d + 1)
    A[:d, :d] = torch.mm(at, at.t())
    s = at.sum(1)
    A[:d, d] = s
    A[d, :d] = s
    A[d, d] = m
    return A.div_(m)


def grad_factor(module: nn.Module, grad: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """This batch's ``B = N sum g g^T`` (undoes the batch-mean loss, see the module docstring)."""
    g = output_grads(module, grad).to(dtype)
    return torch.mm(g.t(), g).mul_(n)


def inverse_sqrt(factor: Tensor, damping: float) -> Tensor:
    """``U (max(Lambda, 0) + damping I)^(-1/2) U^T`` from ``torch.linalg.eigh`` (lower triangle).

    Computed in at least float32 (eigh has no half-precision kernels), returned in the factor's
    dtype. With ``damping == 0`` a singular factor gives infinities: use it for tests only.
    """
    work = factor if factor.dtype in (torch.float32, torch.float64) else factor.float()
    lam, U = torch.linalg.eigh(work)
    scale = lam.clamp_(min=0.0).add_(damping).rsqrt_()
    return torch.mm(U * scale, U.t()).to(factor.dtype)


def homogeneous(weight_like: Tensor, bias_like: Tensor | None) -> Tensor:
    """``[W | b]`` as an ``(out, D [+1])`` matrix: the bias is the last column."""
    w = weight_like.reshape(weight_like.shape[0], -1)
    if bias_like is None:
        return w
    return torch.cat([w, bias_like.reshape(-1, 1)], dim=1)


def combine_ranks(pending: dict[int, tuple[Tensor, Tensor, int]]
                  ) -> dict[int, tuple[Tensor, Tensor]]:
    """``{layer: (A_r, B_r, N_r)}`` -> ``{layer: (A, B)}`` of the global batch (module docstring;
    one all-reduce for every layer); without ``torch.distributed`` the per-rank factors as they
    are. Every rank must pass the same layers."""
    if not is_distributed():
        return {i: (A, B) for i, (A, B, _) in pending.items()}
    keys = sorted(pending)
    sums = []
    for i in keys:
        A, B, n = pending[i]
        sums += [A * n, B / n]
    counts = torch.tensor([float(pending[i][2]) for i in keys], dtype=torch.float64)
    all_reduce_sum_([*sums, counts])
    k = world_size()
    out = {}
    for j, (i, n) in enumerate(zip(keys, counts.tolist())):
        out[i] = (sums[2 * j].div_(n), sums[2 * j + 1].mul_(n / k**2))
    return out
