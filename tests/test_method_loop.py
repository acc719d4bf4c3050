"""Training-loop features of Method (issue 14), each against a plain torch loop as reference:
clipping, GradScaler and bf16 autocast, gradient accumulation, the torch-style step, closures
that call backward, non-finite steps, warm-up and a user's LR scheduler."""

import pytest
import torch
from torch import nn

from polyak.averaging import EMA, Uniform
from polyak.loop import ClipGradNorm, ClipGradValue
from polyak.method import Method, NonFiniteError
from polyak.optim import SAM


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(n=6, size=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def loss_of(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), lr=kw.pop("lr", 0.1), momentum=0.9, **kw)


def assert_same(model_a, model_b):
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)


def poison(loss):
    """Keep the loss value, make every gradient behind it inf/NaN (an fp16-style overflow)."""
    loss.register_hook(lambda g: g * float("inf"))
    return loss


# ---------------------------------------------------------------- clipping
@pytest.mark.parametrize("clip, reference", [
    (ClipGradNorm(0.5), lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5)),
    (ClipGradNorm(0.3, norm_type=float("inf")),
     lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.3, norm_type=float("inf"))),
    (ClipGradValue(0.05), lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.05)),
])
def test_clipping_equals_torch_clip_before_the_step(clip, reference):
    data = batches()
    model, ref = tiny_model(), tiny_model()
    method = Method(model, sgd(model), clip=clip)
    opt = sgd(ref)
    for b in data:
        method.step(lambda b=b: loss_of(model, b))
        opt.zero_grad()
        loss_of(ref, b).backward()
        reference(list(ref.parameters()))
        opt.step()
    assert_same(model, ref)
    assert (method.last_grad_norm is None) == isinstance(clip, ClipGradValue)


def test_sam_clips_the_gradient_of_each_pass():
    data = batches(4)
    model, ref = tiny_model(), tiny_model()
    method = Method(model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1),
                    clip=ClipGradValue(0.02))
    opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    for b in data:
        method.step(lambda b=b: loss_of(model, b))
        for first in (True, False):
            opt.zero_grad()
            loss_of(ref, b).backward()
            torch.nn.utils.clip_grad_value_(list(ref.parameters()), 0.02)
            opt.first_step() if first else opt.second_step()
    assert_same(model, ref)


# ---------------------------------------------------------------- mixed precision
def test_grad_scaler_equals_torch_amp_recipe_and_skips_an_overflow():
    data = batches(5)
    model, ref = tiny_model(), tiny_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    ema = EMA(model, decay=0.5)
    method = Method(model, sgd(model), scaler=scaler, clip=ClipGradNorm(1.0), averaging=ema,
                    schedule=lambda e: 1.0 - 0.1 * e, per_step=True, steps_per_epoch=10)
    opt = sgd(ref)
    for i, b in enumerate(data):
        bad = i == 2
        before = [p.detach().clone() for p in model.parameters()]
        method.step(lambda b=b, bad=bad: poison(loss_of(model, b)) if bad else loss_of(model, b))
        if bad:   # dropped: weights, average, counters, schedule unchanged; scale backed off
            assert method.last_step_skipped and method.skipped_steps == 1
            assert method.steps == 2 and ema.n_averaged == 2
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        ref_lr = 0.1 * (1.0 - 0.1 * (i - (i > 2)) / 10)
        for group in opt.param_groups:
            group["lr"] = ref_lr
        opt.zero_grad()
        loss = loss_of(ref, b)
        ref_scaler.scale(poison(loss) if bad else loss).backward()
        ref_scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0)
        ref_scaler.step(opt)
        ref_scaler.update()
        assert scaler.get_scale() == ref_scaler.get_scale()
    assert_same(model, ref)
    assert method.steps == 4 and ema.n_averaged == 4


def test_sam_with_grad_scaler_skips_an_overflow_in_either_pass():
    model = tiny_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    method = Method(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1), scaler=scaler,
                    averaging=EMA(model, 0.5))
    b = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def second_pass_overflows():
        calls.append(1)
        loss = loss_of(model, b)
        return poison(loss) if len(calls) == 2 else loss

    method.step(second_pass_overflows)
    assert len(calls) == 2 and method.skipped_steps == 1 and method.steps == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0 ** 3
    method.step(lambda: poison(loss_of(model, b)))   # first pass: not even perturbed
    assert method.skipped_steps == 2 and scaler.get_scale() == 2.0 ** 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    method.step(lambda: loss_of(model, b))
    assert method.steps == 1 and method.averaging.n_averaged == 1


def test_bf16_autocast_inside_the_closure_equals_the_torch_loop():
    data = batches(3)
    model, ref = tiny_model(), tiny_model()
    method = Method(model, sgd(model))
    opt = sgd(ref)

    def autocast_loss(m, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_of(m, b)

    for b in data:
        loss = method.step(lambda b=b: autocast_loss(model, b))
        assert loss.dtype == torch.float32   # cross_entropy runs in float32 under autocast
        opt.zero_grad()
        autocast_loss(ref, b).backward()
        opt.step()
    assert_same(model, ref)


# ---------------------------------------------------------------- accumulation
def test_accumulation_steps_once_per_cycle_on_the_mean_gradient():
    micro = batches(6, size=4)
    model, ref = tiny_model(), tiny_model()
    ema = EMA(model, decay=0.5)
    avg = Uniform(model, every=1)
    method = Method(model, sgd(model), accumulate=3, averaging=ema)
    other = Method(tiny_model(), sgd(tiny_model()), averaging=avg)   # every=1 counts steps
    opt = sgd(ref)
    for i, b in enumerate(micro):
        method.step(lambda b=b: loss_of(model, b))
        assert method.steps == (i + 1) // 3 and ema.n_averaged == method.steps
    for k in range(2):   # reference: one step on the concatenated batch of 3 micro-batches
        x = torch.cat([b[0] for b in micro[3 * k:3 * k + 3]])
        y = torch.cat([b[1] for b in micro[3 * k:3 * k + 3]])
        opt.zero_grad()
        loss_of(ref, (x, y)).backward()
        opt.step()
    # summing three micro-batch gradients rounds differently from one batch's: a tolerance
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert other.accumulate == 1


def test_end_epoch_completes_a_short_cycle_with_the_mean_of_its_micro_batches():
    micro = batches(2, size=4)
    model, ref = tiny_model(), tiny_model()
    method = Method(model, sgd(model), accumulate=4)
    for b in micro:
        method.step(lambda b=b: loss_of(model, b))
    assert method.steps == 0
    method.end_epoch(0)
    assert method.steps == 1
    opt = sgd(ref)
    opt.zero_grad()
    loss_of(ref, (torch.cat([b[0] for b in micro]), torch.cat([b[1] for b in micro]))).backward()
    opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_sam_with_accumulation_equals_sam_on_the_whole_batch():
    micro = batches(2, size=4)
    model, ref = tiny_model(), tiny_model()
    method = Method(model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1,
                               momentum=0.9), accumulate=2)
    for b in micro:
        method.step(lambda b=b: loss_of(model, b))
    opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    whole = (torch.cat([b[0] for b in micro]), torch.cat([b[1] for b in micro]))

    def closure():
        loss = loss_of(ref, whole)
        loss.backward()
        return loss

    opt.step(closure)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- torch-style step
def test_torch_style_backward_then_step_equals_the_closure_path():
    data = batches(4)
    a, b_model = tiny_model(), tiny_model()
    closure_method = Method(a, sgd(a), averaging=EMA(a, 0.9))
    torch_method = Method(b_model, sgd(b_model), averaging=EMA(b_model, 0.9))
    for b in data:
        closure_method.step(lambda b=b: loss_of(a, b))
        loss_of(b_model, b).backward()
        assert torch_method.step() is None
    assert_same(a, b_model)
    assert torch_method.averaging.n_averaged == 4
    assert all(p.grad is None for p in b_model.parameters())   # zeroed after the step


def test_torch_style_with_scaler_and_accumulation_uses_method_backward():
    micro = batches(4, size=4)
    a, b_model = tiny_model(), tiny_model()
    kw = dict(accumulate=2)
    m_a = Method(a, sgd(a), scaler=torch.amp.GradScaler("cpu", init_scale=4.0), **kw)
    m_b = Method(b_model, sgd(b_model), scaler=torch.amp.GradScaler("cpu", init_scale=4.0),
                 **kw)
    for b in micro:
        m_a.step(lambda b=b: loss_of(a, b))
        m_b.backward(loss_of(b_model, b))
        m_b.step()
    assert m_a.steps == m_b.steps == 2
    assert_same(a, b_model)


def test_sam_refuses_the_torch_style_step_and_says_why():
    model = tiny_model()
    method = Method(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1))
    loss_of(model, batches(1)[0]).backward()
    with pytest.raises(ValueError, match="needs a closure: SAM takes the gradient at w and again"):
        method.step()


def test_a_closure_that_calls_backward_gets_a_clear_error():
    model = tiny_model()
    b = batches(1)[0]

    def bad():
        loss = loss_of(model, b)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="called backward\\(\\) itself"):
        Method(model, sgd(model)).step(bad)
    method = Method(model, sgd(model), accumulate=2)   # 2nd micro-batch: grads already there
    method.step(lambda: loss_of(model, b))
    with pytest.raises(ValueError, match="called backward\\(\\) itself"):
        method.step(bad)
    with pytest.raises(ValueError, match="must return the loss tensor"):
        Method(model, sgd(model)).step(lambda: loss_of(model, b).item())


# ---------------------------------------------------------------- non-finite steps
def test_nonfinite_raise_names_the_step_and_leaves_the_weights():
    model = tiny_model()
    method = Method(model, sgd(model))
    b = batches(1)[0]
    method.step(lambda: loss_of(model, b))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="Non-finite gradient .* of 0.weight at optimizer "
                                             "step 1"):
        method.step(lambda: poison(loss_of(model, b)))
    with pytest.raises(NonFiniteError, match="Non-finite loss"):
        method.step(lambda: loss_of(model, b) * float("nan"))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert method.steps == 1 and method.skipped_steps == 0


def test_nonfinite_skip_drops_the_step_everywhere():
    model = tiny_model()
    ema = EMA(model, 0.5)
    method = Method(model, sgd(model), nonfinite="skip", averaging=ema,
                    schedule=lambda e: 1.0 / (1.0 + e), per_step=True, steps_per_epoch=1)
    b = batches(1)[0]
    method.step(lambda: loss_of(model, b))
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in method.optimizer.state_dict()["state"][0].items()}
    method.step(lambda: loss_of(model, b) * float("inf"))
    method.step(lambda: poison(loss_of(model, b)))
    assert method.skipped_steps == 2 and method.steps == 1 and ema.n_averaged == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert torch.equal(method.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       state["momentum_buffer"])
    method.step(lambda: loss_of(model, b))
    assert method.lr == pytest.approx(0.1 / 2)   # the schedule saw one step, not three


# ---------------------------------------------------------------- warm-up and schedulers
def test_warmup_multiplies_every_schedule_by_a_linear_ramp():
    model = tiny_model()
    seen = []
    method = Method(model, sgd(model), schedule=lambda e: 0.5 ** int(e), steps_per_epoch=2,
                    warmup_steps=3)
    b = batches(1)[0]
    for epoch in range(3):
        for _ in range(2):
            method.step(lambda: loss_of(model, b))
            seen.append(method.lr)   # the lr this step used
        method.end_epoch(epoch)
    expected = [0.1 * (1 / 3), 0.1 * (2 / 3), 0.1 * 0.5, 0.1 * 0.5, 0.1 * 0.25, 0.1 * 0.25]
    assert seen == pytest.approx(expected)


def test_warmup_alone_and_with_a_per_step_cosine():
    from polyak.schedules import cosine

    model = tiny_model()
    method = Method(model, sgd(model), warmup_steps=4)
    b = batches(1)[0]
    lrs = []
    for _ in range(6):
        method.step(lambda: loss_of(model, b))
        lrs.append(method.lr)
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    model = tiny_model()
    sched = cosine(2)
    method = Method(model, sgd(model), schedule=sched, per_step=True, steps_per_epoch=4,
                    warmup_steps=2)
    lrs = []
    for _ in range(8):
        method.step(lambda: loss_of(model, b))
        lrs.append(method.lr)   # the lr step t used: set before it
    assert lrs == pytest.approx([0.1 * sched(t / 4) * min(1.0, (t + 1) / 2) for t in range(8)])


def test_a_torch_scheduler_fighting_the_schedule_is_refused_and_can_take_over():
    model = tiny_model()
    opt = sgd(model)
    method = Method(model, opt, schedule=lambda e: 0.5 ** e, steps_per_epoch=1)
    theirs = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    b = batches(1)[0]
    method.step(lambda: loss_of(model, b))
    theirs.step()
    with pytest.raises(ValueError, match="torch LR scheduler.*schedule=None"):
        method.step(lambda: loss_of(model, b))
    model = tiny_model()
    opt = sgd(model)
    method = Method(model, opt, schedule=None)   # hand-over: the lr is the scheduler's
    theirs = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for epoch in range(3):
        method.step(lambda: loss_of(model, b))
        theirs.step()
        method.end_epoch(epoch)
    assert method.lr == pytest.approx(0.1 * 0.1 ** 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_autocast_with_grad_scaler_on_cuda_equals_the_torch_amp_recipe():
    data = [(x.cuda(), y.cuda()) for x, y in batches(6)]
    model, ref = tiny_model().cuda(), tiny_model().cuda()
    method = Method(model, sgd(model), scaler=torch.amp.GradScaler("cuda", init_scale=2.0 ** 16),
                    clip=ClipGradNorm(1.0))
    opt, scaler = sgd(ref), torch.amp.GradScaler("cuda", init_scale=2.0 ** 16)

    def half_loss(m, b):
        with torch.autocast("cuda", dtype=torch.float16):
            return loss_of(m, b)

    for b in data:
        method.step(lambda b=b: half_loss(model, b))
        opt.zero_grad()
        scaler.scale(half_loss(ref, b)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0)
        scaler.step(opt)
        scaler.update()
    assert_same(model, ref)
    assert method.scaler.get_scale() == scaler.get_scale()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_grads_finite_agrees_with_isfinite_and_leaves_the_gradients_alone(dtype, bad):
    """The one-kernel check equals ``torch.isfinite`` on every entry, wherever the bad value
    sits, and leaves every gradient bit as it was (the AMP check's scale is 1)."""
    from polyak.loop import grads_finite

    for where in range(3):
        params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in ((3, 4), (5,), (2,))]
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape).to(dtype)
            if bad is not None and i == where:
                p.grad.view(-1)[-1] = bad
        before = [p.grad.clone() for p in params]
        expected = all(bool(torch.isfinite(p.grad).all()) for p in params)
        assert grads_finite(params) is expected
        assert expected is (bad is None)
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[before[0].element_size()]
        for p, g in zip(params, before):
            assert torch.equal(p.grad.view(bits), g.view(bits))
        loss = torch.tensor(float("nan"))
        assert grads_finite(params, loss=loss) is False
        assert grads_finite(params, norm=torch.tensor(bad if bad is not None else 1.0)) is expected


def test_grads_finite_checks_sparse_and_complex_gradients_too():
    """Gradients the AMP check does not take (sparse, complex) are checked one by one."""
    from polyak.loop import grads_finite

    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    z = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.tensor([1 + 1j, 2 - 1j], dtype=torch.complex64)
    assert grads_finite([emb.weight, z]) is True
    z.grad[1] = complex(float("nan"), 0.0)
    assert grads_finite([emb.weight, z]) is False
    z.grad[1] = 0
    emb.weight.grad = torch.sparse_coo_tensor([[0]], torch.tensor([[float("inf"), 0, 0]]),
                                              (10, 3))
    assert grads_finite([emb.weight, z]) is False


# ---------------------------------------------------------------- options assigned later
def test_loop_options_assigned_later_are_checked_like_the_constructor():
    """Issue 21 defect 1: ``method.accumulate = 2`` raised AttributeError, ``method.nonfinite =
    "bogus"`` was accepted, ``method.clip = 1.0`` was accepted and the next step failed with
    "'float' object is not callable"."""
    model = tiny_model()
    method = Method(model, sgd(model))
    for name, bad, match in (("clip", 1.0, r"Invalid clip: 1.0 .*ClipGradNorm\(1.0\)"),
                             ("nonfinite", "bogus", "Invalid nonfinite: 'bogus'"),
                             ("accumulate", 0, "Invalid accumulate: 0"),
                             ("scaler", object(), "Invalid scaler"),
                             ("warmup_steps", -1, "Invalid warmup_steps: -1"),
                             ("schedule", 0.5, "Invalid schedule: 0.5"),
                             ("steps_per_epoch", 0, "Invalid steps_per_epoch: 0")):
        before = getattr(method, name)
        with pytest.raises(ValueError, match=match):   # the constructor says the same
            Method(model, sgd(model), **{name: bad})
        with pytest.raises(ValueError, match=match):
            setattr(method, name, bad)
        assert getattr(method, name) is before          # a refused value changes nothing
    method.clip, method.nonfinite = ClipGradNorm(0.5), "skip"
    assert isinstance(method.clip, ClipGradNorm) and method.nonfinite == "skip"


def test_accumulate_assigned_later_acts_like_the_constructor_argument():
    data = batches(4)
    model, ref = tiny_model(), tiny_model()
    method = Method(model, sgd(model))
    method.accumulate = 2
    built = Method(ref, sgd(ref), accumulate=2)
    for b in data:
        method.step(lambda b=b: loss_of(model, b))
        built.step(lambda b=b: loss_of(ref, b))
    assert method.steps == built.steps == 2
    assert_same(model, ref)
    method.step(lambda: loss_of(model, data[0]))   # a cycle in progress: 1 of 2
    for name, value in (("accumulate", 3), ("scaler", torch.amp.GradScaler("cpu"))):
        with pytest.raises(ValueError, match=f"Invalid {name} change.*in progress"):
            setattr(method, name, value)
    assert method.accumulate == 2 and method.scaler is None
