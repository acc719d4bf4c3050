"""Averages of low-precision (bf16, fp16) parameters are kept in float32 by default.

The references are computed here in float64 from the very bf16 iterates the model held, with
the averages' closed forms (EMA: ``r <- d r + (1-d) w`` after copying the first iterate;
Uniform: the arithmetic mean; PWA: the phase's explicit weighted sum). "Within bf16 rounding of
the result" is measured in bf16 units in the last place (ulps) of the reference: the float32
average is within half an ulp, the weights written into the bf16 model too (one rounding of the
float32 average), while an average kept in bf16 (the old behaviour, ``dtype=torch.bfloat16``)
stalls and ends tens of ulps away.
"""

from __future__ import annotations

import pytest
import torch
from avg_helpers import assert_lists_equal
from torch import nn

from polyak.averaging import EMA, NonFiniteWeights, PhaseWise, Uniform, phase_weights

BF16 = torch.bfloat16


def bf16_ulps(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| in bf16 ulps of ``ref`` (normal numbers: ulp = 2^(e-8), ref = m 2^e)."""
    _, exponent = torch.frexp(ref)
    ulp = torch.ldexp(torch.ones_like(ref), exponent - 8)
    return float(((got.double() - ref).abs() / ulp).max())


def worst(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(bf16_ulps(g, r) for g, r in zip(got, ref))


def bf16_model(dtype: torch.dtype = BF16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)).to(dtype)


def iterates(model: nn.Module, n: int, seed: int = 0):
    """n iterates written into ``model`` (entries in [1.5, 2.6]: no cancellation near zero),
    drifting by 0.5 over the run with noise; yields each as float64 copies of what it holds."""
    g = torch.Generator().manual_seed(seed)
    base = [1.5 + 0.5 * torch.rand(p.shape, generator=g) for p in model.parameters()]
    for t in range(n):
        with torch.no_grad():
            for p, b in zip(model.parameters(), base):
                p.copy_(b + 0.5 * t / n + 0.05 * torch.randn(b.shape, generator=g))
        yield [p.detach().double() for p in model.parameters()]


def ema_run(n: int = 1500, decay: float = 0.999, **kw):
    model = bf16_model()
    ema = EMA(model, decay=decay, **kw)
    ref = None
    for w in iterates(model, n):
        ema.step()
        ref = w if ref is None else [decay * r + (1 - decay) * x for r, x in zip(ref, w)]
    return model, ema, ref


def uniform_run(n: int = 300, **kw):
    model = bf16_model()
    avg = Uniform(model, every=1, **kw)
    total = None
    for w in iterates(model, n, seed=1):
        avg.step()
        total = w if total is None else [s + x for s, x in zip(total, w)]
    return model, avg, [s / n for s in total]


@pytest.mark.parametrize("run", [ema_run, uniform_run], ids=["ema", "uniform"])
def test_bf16_average_equals_the_float64_reference_within_bf16_rounding(run):
    model, avg, ref = run()
    assert {a.dtype for a in avg.average} == {torch.float32}
    assert worst(avg.averaged(), ref) <= 0.5
    avg.copy_to(model)
    assert {p.dtype for p in model.parameters()} == {BF16}
    assert worst([p.detach() for p in model.parameters()], ref) <= 0.5 + 1e-3


@pytest.mark.parametrize("run", [ema_run, uniform_run], ids=["ema", "uniform"])
def test_an_average_kept_in_bf16_fails_that_test(run):
    """The old behaviour: the bf16 EMA's update (1-d)(w - ema) rounds to zero, the running mean's
    (w - mean)/(n+1) too once n is large; both stall far from the reference."""
    _, avg, ref = run(dtype=BF16)
    assert {a.dtype for a in avg.average} == {BF16}
    assert worst(avg.averaged(), ref) > 10


def test_phasewise_bf16_phase_end_writes_the_reference_aggregate():
    model = bf16_model()
    gamma0, T = 0.5, 6
    pwa = PhaseWise(model, phases=[T], gamma0=gamma0, ref_epochs=T)
    seen = []
    for epoch, w in enumerate(iterates(model, T, seed=2)):
        seen.append(w)
        if epoch < T - 1:
            pwa.end_epoch(epoch)
    pwa.end_epoch(T - 1)   # the phase end: the aggregate is written into the bf16 model
    weights = phase_weights(T, gamma0)
    ref = [sum(c * w[i] for c, w in zip(weights, seen)) for i in range(len(seen[0]))]
    assert {p.dtype for p in model.parameters()} == {BF16}
    assert worst([p.detach() for p in model.parameters()], ref) <= 0.5 + 1e-3


def test_bias_corrected_write_is_one_rounding_of_the_float32_quotient():
    model, ema, _ = ema_run(n=40, decay=0.9, bias_correction=True)
    want = [(a / (1 - 0.9 ** 40)).to(BF16) for a in ema.average]
    with ema.applied(model):
        assert_lists_equal([p.detach().clone() for p in model.parameters()], want)


@pytest.mark.parametrize("param, asked, kept", [
    (torch.bfloat16, None, torch.float32), (torch.float16, None, torch.float32),
    (torch.float32, None, torch.float32), (torch.float64, None, torch.float64),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64, torch.float64),
])
def test_dtype_default_and_choice(param, asked, kept):
    model = bf16_model(param)
    for avg in (Uniform(model, dtype=asked), EMA(model, decay=0.9, dtype=asked),
                PhaseWise(model, phases=[2], dtype=asked)):
        assert {a.dtype for a in avg.average} == {kept}
        assert avg.nbytes == sum(p.numel() for p in model.parameters()) * kept.itemsize


@pytest.mark.parametrize("bad", [torch.int32, torch.complex64, "float32", 32])
def test_invalid_dtype_is_refused(bad):
    with pytest.raises(ValueError, match=r"Invalid dtype: .*floating-point torch\.dtype"):
        Uniform(bf16_model(), dtype=bad)


def test_state_dict_round_trip_of_a_float32_average_of_bf16_weights():
    model, ema, _ = ema_run(n=30, decay=0.9)
    state = {k: ([t.clone() for t in v] if k == "average" else v)
             for k, v in ema.state_dict().items()}
    other = EMA(bf16_model(), decay=0.9)
    other.load_state_dict(state)
    assert_lists_equal(other.average, state["average"])
    for avg in (ema, other):      # both continue identically from the same iterate
        with torch.no_grad():
            for p in avg.model.parameters():
                p.fill_(3.0)
        avg.step()
    assert_lists_equal(ema.average, other.average)


def test_an_old_bf16_state_dict_loads_into_a_float32_average_exactly():
    """A state saved when averages had the parameters' dtype (here: made with dtype=bf16) loads
    into today's default average: each bf16 value is converted exactly to float32."""
    model, old, _ = ema_run(n=30, decay=0.9, dtype=BF16)
    new = EMA(bf16_model(), decay=0.9)
    new.load_state_dict(old.state_dict())
    assert {a.dtype for a in new.average} == {torch.float32}
    assert_lists_equal(new.average, [a.float() for a in old.average])
    assert new.n_averaged == old.n_averaged == 30


# ---------------------------------------------------------------------- FSDP2 shards (2 ranks)
def _iterate_in_place(model: nn.Module, step: int) -> None:
    """The same elementwise bf16 update on a sharded and on an unsharded model."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i + 1)).mul_(1.0 + 0.001 * step)


def _sharded_run(sharded: bool) -> dict:
    model = bf16_model()
    if sharded:
        from torch.distributed.fsdp import fully_shard
        fully_shard(model)
    ema, uniform = EMA(model, decay=0.9), Uniform(model, every=1)
    for step in range(12):
        _iterate_in_place(model, step)
        ema.step()
        uniform.step()
    full = (lambda t: t.full_tensor()) if sharded else (lambda t: t.clone())
    with ema.applied(model):
        inside = [full(p.detach()) for p in model.parameters()]
    return {"ema": [full(a) for a in ema.average], "uniform": [full(a) for a in uniform.average],
            "inside": inside, "types": {type(a).__name__ for a in ema.average},
            "local_dtypes": {str(a.to_local().dtype) for a in ema.average} if sharded else None}


def _rank_entry(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = _sharded_run(sharded=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_fsdp2_shards_of_bf16_weights_keep_float32_averages(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_entry, args=(port, str(tmp_path)), nprocs=2, join=True)
    want = _sharded_run(sharded=False)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["types"] == {"DTensor"} and got["local_dtypes"] == {"torch.float32"}
        for key in ("ema", "uniform", "inside"):
            assert_lists_equal(got[key], want[key])
        assert {t.dtype for t in got["inside"]} == {BF16}


def test_an_average_of_smaller_range_refuses_weights_that_overflow_it():
    """dtype=float16 for float32 weights: 1e5 is finite in float32 and Inf in float16."""
    model = bf16_model(torch.float32)
    avg = Uniform(model, dtype=torch.float16)
    avg.end_epoch(0)
    with torch.no_grad():
        model[2].bias[1] = 1e5
    with pytest.raises(NonFiniteWeights, match=r"'2\.bias' holds NaN/Inf or overflows the "
                                                r"average's torch\.float16"):
        avg.end_epoch(1)
    assert avg.n_averaged == 1 and all(bool(torch.isfinite(a).all()) for a in avg.average)
