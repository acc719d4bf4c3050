import copy

import pytest
import torch
from torch import nn

from polyak.averaging import Uniform
from polyak.method import Method, SwitchOptimizer
from polyak.triggers import Plateau


def tiny_model(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g))
            for _ in range(n)]


def loss_of(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def train(method, model, data, epochs, start=0, val=None):
    for epoch in range(start, start + epochs):
        for b in data:
            method.step(lambda b=b: loss_of(model, b))
        kw = val(epoch) if val else {}
        method.end_epoch(epoch, **kw)


def test_step_equals_a_plain_torch_loop_with_the_schedule():
    data = batches()
    model, ref = tiny_model(), tiny_model()
    schedule = lambda e: 0.5 ** e  # noqa: E731
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    schedule=schedule, steps_per_epoch=len(data))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    train(method, model, data, epochs=3)
    for epoch in range(3):
        for group in opt.param_groups:
            group["lr"] = 0.1 * 0.5 ** epoch
        for b in data:
            opt.zero_grad()
            loss_of(ref, b).backward()
            opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert method.lr == pytest.approx(0.1 * 0.5 ** 3)


def test_per_step_schedule_sets_lr_from_fractional_epoch():
    data = batches(n=4)
    model = tiny_model()
    seen = []
    method = Method(model, torch.optim.SGD(model.parameters(), lr=1.0),
                    schedule=lambda e: seen.append(e) or 1.0, per_step=True, steps_per_epoch=4)
    seen.clear()
    train(method, model, data, epochs=1)
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_averaging_trigger_starts_uniform_average_when_it_fires():
    data = batches()
    model = tiny_model()
    accs = [0.5, 0.6, 0.55, 0.58, 0.59, 0.7]  # best at epoch 1; patience 2 -> fires at epoch 3
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.05),
                    averaging=Uniform(model, start_epoch=0),
                    averaging_trigger=Plateau(2, mode="max"), steps_per_epoch=len(data))
    snapshots = []
    for epoch, acc in enumerate(accs):
        for b in data:
            method.step(lambda b=b: loss_of(model, b))
        method.end_epoch(epoch, val_acc=acc)
        snapshots.append([p.detach().clone() for p in model.parameters()])
    expected = [torch.stack([s[i] for s in snapshots[3:]]).mean(0)
                for i in range(len(snapshots[0]))]
    with method.eval_weights():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p, e)
    for p, s in zip(model.parameters(), snapshots[-1]):
        assert torch.equal(p, s)


def test_stop_trigger_and_missing_metric():
    model = tiny_model()
    method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    stop_trigger=Plateau(1))
    method.end_epoch(0, val_loss=1.0)
    assert not method.should_stop
    method.end_epoch(1, val_loss=2.0)
    assert method.should_stop
    with pytest.raises(ValueError, match="val_loss"):
        Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
               stop_trigger=Plateau(1)).end_epoch(0)


def test_switch_optimizer_at_epoch_keeps_param_groups():
    model = tiny_model()
    first = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    second = torch.optim.SGD(first.param_groups, lr=0.1)
    method = Method(model, first, switches=[SwitchOptimizer(lambda old: second, at_epoch=2)],
                    schedule=lambda e: 1.0 / (1 + e))
    method.end_epoch(0)
    assert method.optimizer is first
    method.end_epoch(1)
    assert method.optimizer is second
    assert method.lr == pytest.approx(0.1 / 3)
    with pytest.raises(ValueError, match="exactly one"):
        SwitchOptimizer(lambda o: o)


def test_sam_style_optimizer_gets_the_closure_twice():
    class TwoPass(torch.optim.SGD):
        def first_step(self):
            pass

        def second_step(self):
            pass

        def step(self, closure):
            loss = closure()
            self.first_step()
            closure()
            self.second_step()
            return super().step() or loss

    model = tiny_model()
    calls = []
    method = Method(model, TwoPass(model.parameters(), lr=0.1))
    b = batches(1)[0]
    method.step(lambda: calls.append(1) or loss_of(model, b))
    assert len(calls) == 2


def test_state_dict_round_trip_continues_bit_for_bit():
    data = batches()

    def make(model):
        return Method(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      schedule=lambda e: 0.9 ** e, averaging=Uniform(model, start_epoch=1),
                      averaging_trigger=Plateau(1, mode="min"), steps_per_epoch=len(data))

    def val(epoch):
        return {"val_loss": [1.0, 0.9, 0.95, 0.97, 0.99][epoch]}

    model_a = tiny_model()
    a = make(model_a)
    train(a, model_a, data, epochs=5, val=val)

    model_b = tiny_model()
    b = make(model_b)
    train(b, model_b, data, epochs=2, val=val)
    saved_weights = copy.deepcopy(model_b.state_dict())
    saved = copy.deepcopy(b.state_dict())
    model_c = tiny_model(seed=5)
    model_c.load_state_dict(saved_weights)
    c = make(model_c)
    c.load_state_dict(saved)
    train(c, model_c, data, epochs=3, start=2, val=val)
    for p, q in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(p, q)
    with a.eval_weights(), c.eval_weights():
        for p, q in zip(model_a.parameters(), model_c.parameters()):
            assert torch.equal(p, q)


def test_schedule_free_optimizer_is_evaluated_at_its_eval_point():
    import schedulefree

    data = batches()
    model = tiny_model(bn=True)
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2)
    method = Method(model, opt, steps_per_epoch=len(data))
    train(method, model, data, epochs=1)
    live = [p.detach().clone() for p in model.parameters()]
    # independent reference: the package's own eval() switch on a copy of the state
    ref_model = copy.deepcopy(model)
    ref_opt = schedulefree.AdamWScheduleFree(ref_model.parameters(), lr=1e-2)
    ref_opt.load_state_dict(opt.state_dict())
    ref_opt.eval()
    with method.eval_weights(bn_loader=data):
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q)
    for p, q in zip(model.parameters(), live):
        assert torch.equal(p, q)


def snapshot(method):
    """A deep copy of everything the Method holds (tensors cloned)."""
    return copy.deepcopy(method.state_dict())


def assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def recipe_run(spec, epochs, model, data, trained_epochs=1, **kw):
    import polyak

    method = polyak.recipe(spec, model, epochs, len(data), **kw)
    train(method, model, data, epochs=trained_epochs)
    return method


def test_a_refused_load_changes_nothing():
    """Issue 21 defect 3: a PWA state built for 8 epochs loaded into one built for 4 raised only
    after the optimizer's momentum buffers were overwritten. Now the Method is left exactly as
    it was: it continues like a twin that never saw the load."""
    data = batches()
    model8, model4, twin = tiny_model(seed=3), tiny_model(), tiny_model()
    eight = recipe_run("pwa", 8, model8, data, trained_epochs=2)
    four, reference = (recipe_run("pwa", 4, m, data) for m in (model4, twin))
    before = snapshot(four)
    with pytest.raises(ValueError, match="phases"):
        four.load_state_dict(eight.state_dict())
    assert_same_state(four.state_dict(), before)
    train(four, model4, data, epochs=3, start=1)
    train(reference, twin, data, epochs=3, start=1)
    for p, q in zip(model4.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_state_of_another_recipe_is_refused_naming_both():
    """Issue 21 defect 4: a tso-alra state loaded into an sgdm Method (lr 0.01, momentum 0) and
    an adamw state left SGD with momentum=None and betas. The same base and averaging is the same
    recipe: other hyper-parameters load (and come with the state)."""
    data = batches()
    sgdm = recipe_run("sgdm", 4, tiny_model(), data)
    for other in ("tso-alra", "adamw", "swa"):
        foreign = recipe_run(other, 4, tiny_model(), data)
        target = recipe_run("sgdm", 4, tiny_model(), data)
        before = snapshot(target)
        with pytest.raises(ValueError, match=f"from recipe '{other}'.*this Method is 'sgdm'"):
            target.load_state_dict(foreign.state_dict())
        assert_same_state(target.state_dict(), before)
        assert "betas" not in target.optimizer.param_groups[0]
    faster = recipe_run("sgdm:lr=0.05", 4, tiny_model(), data)
    sgdm.load_state_dict(faster.state_dict())            # an override: the same recipe
    assert sgdm.lr == pytest.approx(0.05) and sgdm.base_lrs == [0.05]
    pwa = recipe_run("pwa", 4, tiny_model(), data)
    recipe_run("sgdm+phasewise", 4, tiny_model(), data).load_state_dict(pwa.state_dict())


def test_a_hand_built_method_refuses_another_optimizer_class():
    data = batches()
    model = tiny_model()
    adam = Method(model, torch.optim.Adam(model.parameters()), steps_per_epoch=len(data))
    train(adam, model, data, epochs=1)
    other = tiny_model()
    sgd = Method(other, torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="a state of Adam, this Method's optimizer is SGD"):
        sgd.load_state_dict(adam.state_dict())
    assert "betas" not in sgd.optimizer.param_groups[0]


@pytest.mark.parametrize("how", ["average", "schedule-free"])
def test_eval_weights_without_bn_loader_warns_once_per_method(how):
    """Issue 21 defect 5: eval_weights() without bn_loader evaluated the average with the live
    weights' BatchNorm statistics, silently."""
    import warnings

    import schedulefree

    from polyak.averaging import KEEP_BN_STATS, StaleBatchNormWarning

    data = batches()

    def trained():
        model = tiny_model(bn=True)
        if how == "average":
            method = Method(model, torch.optim.SGD(model.parameters(), lr=0.1),
                            averaging=Uniform(model, start_epoch=0), steps_per_epoch=len(data))
        else:
            method = Method(model, schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2),
                            steps_per_epoch=len(data))
        train(method, model, data, epochs=2)
        return method

    method = trained()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBatchNormWarning)
        for loader in (data, KEEP_BN_STATS):          # a loader, or keep them on purpose
            with method.eval_weights(bn_loader=loader):
                pass
    with pytest.warns(StaleBatchNormWarning, match="without bn_loader.*KEEP_BN_STATS"):
        with method.eval_weights():
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBatchNormWarning)
        with method.eval_weights():                   # once per Method
            pass
