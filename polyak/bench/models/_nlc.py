"""``Conv1d`` and ``BatchNorm1d`` that compute a small 1-D CNN faster on the CPU, with exactly
torch's modules' parameters, buffers, hooks and semantics.

Why: the MNIST-1D CNN (25 channels, lengths 40 -> 19 -> 10 -> 5, batch 128) is too small for
oneDNN's convolution kernels; its backward pass takes most of a training step. Here the
activations between layers are kept in ``(N, L, C)`` memory order (handed from module to module
as ``(N, C, L)`` views with those strides, so every caller sees the usual shapes). In that order
the ``k`` input positions a convolution window covers are ``k * C`` consecutive floats, so the
windows of all examples form a ``(N * L_out, k * C)`` matrix with one strided copy and the
convolution is one matrix product with the ``(C_out, k * C)`` weight (im2col + GEMM). Its
backward is two matrix products and ``k`` strided adds. BatchNorm of an ``(N, L, C)`` tensor is
BatchNorm of the ``(N * L, C)`` matrix: the same per-channel statistics over ``N * L`` values,
the same running-statistics update and ``num_batches_tracked``.

The result equals torch's modules up to float rounding (summation order), forward, gradients,
double backward (Hessian-vector products) and running statistics alike
(``tests/bench/test_nlc_layers.py``). The fast path is taken only where it is measured to help
and known to be right: a training forward (autograd recording) of a batched float32/float64
input on the CPU, no autocast, ``groups=1``, ``dilation=1``, zero padding given as a number;
anything else (evaluation under ``no_grad``, CUDA, autocast, ``'same'``...) goes to torch's own
forward. ``benchmarks/small_step.py`` prints the step time against the
torch modules.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv1d", "BatchNorm1d", "with_torch_layers"]


def _padded(x: Tensor, pad: int) -> Tensor:
    """``x`` ``(N, L, C)`` with ``pad`` zero positions before and after along L."""
    return F.pad(x, (0, 0, pad, pad)) if pad else x


def _windows(xp: Tensor, kernel: int, stride: int) -> Tensor:
    """The im2col matrix ``(N * L_out, kernel * C)`` of a padded ``(N, L_p, C)`` input: row
    ``(n, l)`` is positions ``l * stride .. l * stride + kernel - 1`` of example ``n``, position
    by position (each a run of C channels)."""
    n, lp, c = xp.shape
    l_out = (lp - kernel) // stride + 1
    return xp.as_strided((n, l_out, kernel * c), (lp * c, stride * c, 1),
                         xp.storage_offset()).reshape(n * l_out, kernel * c)


def _weight_matrix(weight: Tensor) -> Tensor:
    """``(C_out, C_in, k)`` -> ``(C_out, k * C_in)``, columns ordered like :func:`_windows`."""
    out_ch, in_ch, kernel = weight.shape
    return weight.permute(0, 2, 1).reshape(out_ch, kernel * in_ch)


def _conv_nlc_graph(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int,
                    pad: int) -> Tensor:
    """The same convolution from differentiable ops only (for double backward)."""
    n, _, c = x.shape
    out_ch, _, kernel = weight.shape
    xp = _padded(x, pad)
    cols = xp.unfold(1, kernel, stride).transpose(2, 3).reshape(-1, kernel * c)
    out = cols @ _weight_matrix(weight).t()
    if bias is not None:
        out = out + bias
    return out.view(n, -1, out_ch)


def _like(param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` laid out with ``param``'s strides. Autograd keeps a returned gradient whose
    strides differ only along size-1 dimensions as it is (the first convolution's ``C_in = 1``:
    ``(5, 1, 1)`` for a ``(5, 5, 1)`` weight), and DDP copies each ``.grad`` into a bucket view
    with the parameter's strides, warning "Grad strides do not match bucket view strides" when
    they differ; the copy costs one pass over the (small) weight gradient."""
    if grad.stride() == param.stride():
        return grad
    return torch.empty_like(param, memory_format=torch.preserve_format).copy_(grad)


class _ConvNLC(torch.autograd.Function):
    """Conv1d of ``x`` ``(N, L, C)`` (contiguous) -> ``(N, L_out, C_out)`` (contiguous)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int,
                pad: int) -> Tensor:
        n, length, c = x.shape
        out_ch, _, kernel = weight.shape
        cols = _windows(_padded(x, pad), kernel, stride)
        wmat = _weight_matrix(weight)
        out = (torch.addmm(bias, cols, wmat.t()) if bias is not None else cols @ wmat.t())
        ctx.save_for_backward(x, weight, bias)
        ctx.cols, ctx.wmat, ctx.geometry = cols, wmat, (stride, pad)
        return out.view(n, -1, out_ch)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        stride, pad = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is itself differentiable
            inputs = [t for t, need in ((x, need_x), (weight, need_w), (bias, need_b)) if need]
            with torch.enable_grad():
                out = _conv_nlc_graph(x, weight, bias, stride, pad)
            grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return (next(grads) if need_x else None,
                    _like(weight, next(grads)) if need_w else None,
                    next(grads) if need_b else None, None, None)
        n, length, c = x.shape
        out_ch, _, kernel = weight.shape
        l_out = grad.shape[1]
        g2 = grad.reshape(n * l_out, out_ch)
        grad_x = grad_w = grad_b = None
        if need_x:
            gcols = (g2 @ ctx.wmat).view(n, l_out, kernel, c)
            gxp = grad.new_zeros(n, length + 2 * pad, c)
            for j in range(kernel):  # window offset j of output l reads position l*stride + j
                gxp[:, j:j + stride * (l_out - 1) + 1:stride] += gcols[:, :, j]
            grad_x = gxp[:, pad:pad + length]
        if need_w:
            grad_w = _like(weight, (g2.t() @ ctx.cols).view(out_ch, kernel, c).permute(0, 2, 1))
        if need_b:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None


def _fast(x: Tensor, weight: Tensor) -> bool:
    """Whether to take the (N, L, C) path: a training forward (autograd recording) of a batched
    float input on the CPU without autocast. Forward-only passes (evaluation, BatchNorm
    recalibration under ``no_grad``) stay on torch's kernels: at evaluation batch sizes the
    window copies cost more than oneDNN's convolution (``benchmarks/small_step.py``)."""
    return (x.dim() == 3 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled("cpu") and not torch.jit.is_scripting())


class Conv1d(nn.Conv1d):
    """:class:`torch.nn.Conv1d` computed as im2col + one matrix product in ``(N, L, C)`` order on
    the CPU (see the module doc); its output is an ``(N, C_out, L_out)`` view of ``(N, L_out,
    C_out)`` memory. Same parameters, state dict, hooks and ``isinstance`` as torch's."""

    def forward(self, x: Tensor) -> Tensor:
        if not (_fast(x, self.weight) and self.groups == 1 and self.dilation == (1,)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)):
            return super().forward(x)
        xn = x.transpose(1, 2)
        if not xn.is_contiguous():
            xn = xn.contiguous()
        out = _ConvNLC.apply(xn, self.weight, self.bias, self.stride[0], self.padding[0])
        return out.transpose(1, 2)


class BatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` that normalises an ``(N, C, L)`` input held in ``(N, L, C)``
    memory as the ``(N * L, C)`` matrix it is (identical statistics and buffer updates) and
    returns it in the same memory order; any other input goes to torch's forward."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3 and x.shape[2] > 1 and x.transpose(1, 2).is_contiguous() \
                and _fast(x, self.weight if self.weight is not None else x):
            n, c, length = x.shape
            out = super().forward(x.transpose(1, 2).reshape(n * length, c))
            return out.view(n, length, c).transpose(1, 2)
        return super().forward(x)


def with_torch_layers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose :class:`Conv1d`/:class:`BatchNorm1d` are torch's own modules
    with the same configuration and state: the reference these layers are tested and timed
    against."""
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in parent.named_children():
            if type(child) is Conv1d:
                ref: nn.Module = nn.Conv1d(
                    child.in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                    child.padding_mode, device=child.weight.device, dtype=child.weight.dtype)
            elif type(child) is BatchNorm1d:
                like = child.running_mean if child.running_mean is not None else child.weight
                where = {} if like is None else {"device": like.device, "dtype": like.dtype}
                ref = nn.BatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, **where)
            else:
                continue
            ref.load_state_dict(child.state_dict())
            ref.train(child.training)
            setattr(parent, name, ref)
    return twin
