"""The training loop of one run: determinism, bookkeeping against a hand-written loop."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from polyak.bench.models.mnist1d import CNN
from polyak.bench.train import Batches, evaluate, resolve_overrides, train_run


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_run_is_reproducible_bit_for_bit(tiny_task):
    a = train_run(tiny_task, "swa", seed=3, epochs=4)
    b = train_run(tiny_task, "swa", seed=3, epochs=4)
    assert a.status == b.status == "complete" and len(a.records) == 4
    assert strip_time(a.records) == strip_time(b.records)  # exact float equality
    c = train_run(tiny_task, "swa", seed=4, epochs=4)
    assert strip_time(c.records) != strip_time(a.records)


def _reference_epochs(task, seed, epochs):
    """A hand-written loop for SGD at lr 0: weights stay at their seeded initial values and
    only the BatchNorm running statistics move, one update per training batch."""
    splits = task.load()
    torch.manual_seed(seed)
    model = CNN(**task.model_kwargs)
    order_gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(splits.x_train), generator=order_gen)
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(order), task.batch_size):
                idx = order[start:start + task.batch_size]
                out = model(splits.x_train[idx])
                loss_sum += F.cross_entropy(out, splits.y_train[idx], reduction="sum").item()
                correct += int((out.argmax(1) == splits.y_train[idx]).sum())
        model.eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(splits.x_test), dim=1)
            nll = [-logp[i, splits.y_test[i]].item() for i in range(len(splits.y_test))]
            acc = (logp.argmax(1) == splits.y_test).float().mean().item()
        rows.append({"train_loss": loss_sum / len(order), "train_acc": correct / len(order),
                     "test_loss": sum(nll) / len(nll), "test_acc": acc})
    return rows


def test_loop_bookkeeping_matches_a_hand_written_loop(tiny_task):
    result = train_run(tiny_task, "sgd:lr=0", seed=5)
    reference = _reference_epochs(tiny_task, seed=5, epochs=tiny_task.epochs)
    assert len(result.records) == tiny_task.epochs
    for got, want in zip(result.records, reference):
        for key, value in want.items():
            assert abs(got[key] - value) < 1e-5, (key, got[key], value)
        assert got["lr"] == 0.0
    assert [r["epoch"] for r in result.records] == [0, 1]
    assert all(b["time"] > a["time"] >= 0 for a, b in zip(result.records, result.records[1:]))


def test_evaluate_against_per_example_nll():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    x, y = torch.randn(53, 1, 40), torch.randint(0, 10, (53,))
    loss, acc = evaluate(model, x, y, batch_size=10)
    with torch.no_grad():
        out = model(x)
    nll = sum(-torch.log_softmax(out[i], 0)[y[i]].item() for i in range(53)) / 53
    correct = sum(int(out[i].argmax() == y[i]) for i in range(53))
    assert abs(loss - nll) < 1e-6 and acc == correct / 53


def test_batches_cover_the_data_in_order():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    batches = Batches(x, y, 4)
    assert len(batches) == 3
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_tuned_lr_is_applied_unless_the_spec_sets_lr(tiny_task, tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"lr": {"sgd": 0.05}}))
    task = tiny_task.replace(tuned_path=path)
    assert resolve_overrides(task, "sgd") == {"lr": 0.05}
    assert resolve_overrides(task, "sgd:lr=0.2") == {}
    assert resolve_overrides(task, "sgd:weight_decay=0,lr=0.2") == {}
    assert resolve_overrides(task, "sgdm") == {}
    assert resolve_overrides(task, "sgd+ema") == {"lr": 0.05}  # a composition shares its base's
    assert train_run(task, "sgd", seed=0, epochs=1).records[0]["lr"] == 0.05
    assert train_run(task, "sgd:lr=0.2", seed=0, epochs=1).records[0]["lr"] == 0.2


def test_divergence_is_reported_not_raised(tiny_mlp_task):
    result = train_run(tiny_mlp_task, "sgd:lr=1e30", seed=0)
    assert result.status == "diverged" and "non-finite" in result.error


def test_curve_epochs_are_the_claims_points_and_the_last():
    from polyak.bench.train import curve_epochs

    assert curve_epochs(40) == {3, 7, 11, 15, 19, 23, 27, 31, 35, 39}  # 10 %, ..., 100 %
    assert curve_epochs(15, 4) == {3, 7, 10, 14}  # round(3.75), round(7.5), round(11.25), 15
    assert curve_epochs(5) == curve_epochs(40, None) - set(range(5, 40)) == set(range(5))


def test_sparse_curves_equal_every_epoch_evaluation_at_their_points(tiny_task):
    """Evaluating fewer epochs changes no number: same training, and at the curve points (the
    last one included) the same val/test scores of the reported weights as evaluating every
    epoch; for a live-weights method (sgdm), an averaging one with BatchNorm recalibration
    (swa) and one whose trigger reads the live validation score (gadam-auto)."""
    from polyak.bench.train import curve_epochs

    for spec in ("sgdm", "swa", "gadam-auto"):
        every = strip_time(train_run(tiny_task, spec, seed=2, epochs=9, curve_points=None).records)
        sparse = strip_time(train_run(tiny_task, spec, seed=2, epochs=9, curve_points=3).records)
        assert len(every) == len(sparse) and len(every) == 9 or spec == "gadam-auto"
        points = curve_epochs(9, 3)
        assert points == {2, 5, 8}
        for epoch, (a, b) in enumerate(zip(every, sparse)):
            if epoch in points or epoch == len(every) - 1:  # (gadam-auto may stop early)
                assert a == b, (spec, epoch)
            else:
                assert {k: v for k, v in a.items() if not k.startswith(("val", "test"))} == \
                    {k: v for k, v in b.items() if not k.startswith(("val", "test"))}
                assert all(b[k] is None for k in ("val_loss", "val_acc", "test_loss",
                                                  "test_acc")), (spec, epoch)


def test_run_identity_changes_when_a_recipe_default_changes(tiny_task, monkeypatch):
    """A run stored under an old default must not be taken for a run with the new one."""
    import dataclasses

    import polyak.recipes as recipes
    from polyak.bench.train import run_config

    before = json.loads(run_config(tiny_task, "sgd+ema", 4))
    assert before["recipe"]["hyperparameters"]["ema_warmup"] is True
    assert before["recipe"]["averaging"] == "ema"
    parse = recipes.parse

    def parse_with_old_default(spec):
        rec = parse(spec)
        return dataclasses.replace(rec, defaults={**rec.defaults, "ema_warmup": False})

    monkeypatch.setattr(recipes, "parse", parse_with_old_default)
    after = json.loads(run_config(tiny_task, "sgd+ema", 4))
    assert after["recipe"]["hyperparameters"]["ema_warmup"] is False
    assert after != before
    # budget rules enter by their numbers, not their provenance text
    rule = json.loads(run_config(tiny_task, "tso-alra", 4))["recipe"]["hyperparameters"]
    assert rule["switch_epoch"]["rule"] == "OfBudget" and "source" not in rule["switch_epoch"]


def test_triggers_read_the_validation_score_of_the_weights_the_method_reports():
    """GadamAuto's termination watches the average once it runs (Gadam App. A.2); before that,
    and for every method without an average in effect, the live weights are scored."""
    import polyak
    from polyak.bench.train import _val_for_triggers

    class Splits:
        x_val, y_val = "x", "y"

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    method = polyak.recipe("gadam-auto", model, epochs=20, steps_per_epoch=1)

    def score(x, y):   # a "score" that reads the weights in the model at the time
        return float(sum(p.sum() for p in model.parameters())), 0.0

    live = score("x", "y")
    assert _val_for_triggers(method, score, Splits, None) == live
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    method.averaging_started = True
    iterates = []
    for epoch in range(2):
        method.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        iterates.append([p.detach().clone() for p in model.parameters()])
        method.end_epoch(epoch, val_acc=0.5)
    assert method.reads_val_metrics and not method.reports_live_weights
    averaged = sum(float((a + b).sum()) / 2 for a, b in zip(*iterates))
    got = _val_for_triggers(method, score, Splits, None)
    assert got[0] == pytest.approx(averaged, rel=1e-6)
    assert score("x", "y")[0] == pytest.approx(sum(float(p.sum()) for p in iterates[-1]))


def test_bench_runs_never_warn_about_stale_batchnorm_or_kfac_coverage(tiny_task):
    """Issue 21 defects 5 and 6: the bench passes its training batches as bn_loader (PWA's phase
    ends, the reported averages, schedule-free's evaluation point) and its CNN is fully
    preconditioned by TSO-ALRA (BatchNorm's scales and shifts get SGD by design): no warning."""
    import warnings

    for spec in ("pwa", "swa", "schedule-free-adamw", "tso-alra"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)   # StaleBatchNormWarning included
            result = train_run(tiny_task, spec, seed=0, epochs=2)
        assert result.status == "complete", (spec, result.error)


def test_a_run_whose_loss_explodes_but_stays_finite_is_diverged(tiny_mlp_task):
    """Issue 21 defect 7: a run whose loss exploded (test NLL 6.5e15, chance accuracy) was
    stored "complete". lr=100 on the MLP sends the loss to ~1e16 nats in the first epoch, finite
    all along (nonfinite="raise" would have stopped it otherwise): diverged at epoch 0."""
    import re

    result = train_run(tiny_mlp_task, "sgd:lr=100", seed=0, epochs=3)
    assert result.status == "diverged" and result.records == [], result.error
    match = re.match(r"exploded loss in epoch 0: mean train loss (\S+) nats > 100 x log\(10\) "
                     r"= 230.3", result.error)
    assert match, result.error
    loss = float(match.group(1))
    assert math.isfinite(loss) and loss > 100 * math.log(10)


def test_exploded_is_100_times_the_uniform_prediction_nll():
    from polyak.bench.divergence import exploded

    for classes in (2, 10, 65):
        bound = 100 * math.log(classes)               # -log(1/C), the uniform prediction
        assert exploded(bound * 0.999, classes) is None
        assert f"log({classes})" in exploded(bound * 1.001, classes)
