"""The example task (examples/own_task.py) through `polyak bench`, `tune` and `report` at a small
budget, and the report on a user's task: the recommendation, the papers' comparisons on it, a
task whose metric is its loss. References: the store's own numbers read back and compared by
scipy's paired t-test, torch's losses over the whole split."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from _user_files import EXAMPLE, REGRESSION
from cli_run import run
from scipy import stats as scipy_stats

import polyak.cli.bench  # noqa: F401  (registers the commands)
from polyak.bench.claims import Claim
from polyak.bench.report import task_report
from polyak.bench.store import Store
from polyak.bench.train import evaluate, train_run
from polyak.bench.tune import Trial, pick_best
from polyak.bench.user_tasks import load_task

SMALL = ["--seeds", "2", "--epochs", "2", "--workers", "1", "--no-progress", "--device", "cpu"]


def _finals(store_path, split):
    """method -> {seed: final accuracy in %} read from the store."""
    out: dict = {}
    with Store(store_path) as store:
        for r in store.runs():
            curve = store.metrics(r["id"])
            out.setdefault(r["method"], {})[r["seed"]] = 100 * curve[-1][f"{split}_acc"]
    return out


def test_example_through_bench_tune_and_report(capsys, tmp_path, fresh):
    spec = f"{EXAMPLE}:digits_cnn"
    store, out = str(tmp_path / "runs.sqlite"), str(tmp_path / "rep")
    dirs = ["--store", store, "--out", out, "--checkpoint-dir", str(tmp_path / "ck")]
    code, text, err = run(capsys, "bench", "--tasks", spec, "--methods", "sgdm,swa,gadamx",
                          *SMALL, *dirs)
    assert code == 0, err
    assert "6 run(s) executed" in err and "done digits_cnn gadamx seed 1: val acc" in err
    val, test = _finals(store, "val"), _finals(store, "test")
    means = {m: sum(v.values()) / 2 for m, v in val.items()}
    best, runner = sorted(means, key=lambda m: -means[m])[:2]
    assert f"**Use `{best}`**" in text  # the best mean final validation accuracy
    ref = scipy_stats.ttest_rel([test[best][s] for s in (0, 1)],
                                [test[runner][s] for s in (0, 1)])
    gain = (test[best][0] - test[runner][0] + test[best][1] - test[runner][1]) / 2
    assert f"Runner-up on validation: `{runner}`" in text
    assert f"{gain:+.2f} pp" in text and (math.isnan(ref.pvalue) or f"{ref.pvalue:.3g}" in text)
    assert "### The papers' comparisons on your task" in text and "Paper claims" not in text
    assert "| Granziol et al. (Gadam) | GadamX beats SWA |" in text
    assert (tmp_path / "rep" / "digits_cnn-test-error.png").is_file()

    tuned = tmp_path / "tuned.json"
    code, text, err = run(capsys, "tune", "--task", spec, "--methods", "sgd@tso-alra", "--seeds",
                          "1", "--epochs", "2", "--workers", "1", "--no-progress", "--device",
                          "cpu", "--store", str(tmp_path / "tune.sqlite"), "--out", str(tuned))
    assert code == 0, err
    data = json.loads(tuned.read_text())
    scores = {s["params"]["lr"]: s["val_acc"] for s in data["scores"]["sgd@tso-alra"]}
    assert data["tuned"]["sgd@tso-alra"]["lr"] == max(scores, key=scores.get)
    assert data["task"] == "digits_cnn" and f"--tasks {spec} --tuned" in err

    code, again, err = run(capsys, "report", "--tasks", spec, *dirs[:4])
    assert code == 0, err
    assert f"**Use `{best}`**" in again and "| 1 |" in again


def test_report_of_a_loss_task_ranks_and_claims_on_the_loss(capsys, tmp_path, fresh):
    path = tmp_path / "reg.py"
    path.write_text(REGRESSION)
    store = str(tmp_path / "runs.sqlite")
    code, text, err = run(capsys, "bench", "--tasks", f"{path}:regression", "--methods",
                          "sgd@tso-alra,tso-alra,gadam-auto,sgdm", *SMALL[:2], "--workers", "1",
                          "--no-progress", "--store", store, "--out", str(tmp_path / "rep"),
                          "--checkpoint-dir", str(tmp_path / "ck"))
    assert code == 0, err
    assert "val loss" in err and "val acc" not in err and "failed" not in err
    losses: dict = {}
    with Store(store) as s:
        for r in s.runs():
            assert r["status"] == "complete", r["error"]  # gadam-auto's trigger watched the loss
            curve = s.metrics(r["id"])
            assert all(m["val_acc"] is None and m["train_acc"] is None for m in curve)
            losses.setdefault(r["method"], []).append(curve[-1]["test_loss"])
    order = sorted(losses, key=lambda m: sum(losses[m]) / 2)
    ranked = [line.split("|")[2].strip() for line in text.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert ranked[:len(order)] == order  # lowest mean test loss first
    assert "| test loss |" in text and "test acc (%)" not in text
    assert "TSO-ALRA's test loss falls faster than plain SGD's" in text
    assert "test loss (epoch 1)" in text


def test_loss_task_trains_on_its_loss_and_evaluates_it_over_the_split(tmp_path, fresh):
    path = tmp_path / "reg.py"
    path.write_text(REGRESSION)
    task = load_task(f"{path}:regression").replace(eval_batch_size=50)  # batches 50, 14
    splits = task.load()
    torch.manual_seed(0)
    model = task.user.load().task.model(0).eval()
    loss, acc = evaluate(model, splits.x_val, splits.y_val, 50,
                         loss=task.user.load().task.loss, accuracy=False)
    with torch.no_grad():
        want = F.mse_loss(model(splits.x_val), splits.y_val).item()
    assert acc is None and loss == pytest.approx(want, rel=1e-6)
    result = train_run(task, "sgdm", 0, 2)
    assert result.status == "complete" and result.records[-1]["test_acc"] is None


def test_tuning_a_loss_task_picks_the_lowest_validation_loss():
    trials = [Trial("m", {"lr": lr}, [], val_acc=math.nan, val_loss=loss)
              for lr, loss in ((0.1, 0.5), (0.01, 0.2), (0.001, math.inf))]
    assert pick_best(trials, "loss").params == {"lr": 0.01}


def _curve(val, test):
    return [{"val_loss": val, "test_loss": test, "val_acc": None, "test_acc": None}]


def test_claims_on_a_loss_metric_are_read_on_the_loss():
    """A claim on accuracy becomes one on the loss (lower is better: gain = B - A); a
    'matches within pp' claim is not read."""
    runs = {m: [{"status": "complete", "seed": s, "wall_time": 1.0, "curve": _curve(v, v)}
                for s, v in enumerate(vals)]
            for m, vals in {"swa": [0.30, 0.32, 0.31], "sgdm": [0.40, 0.41, 0.43]}.items()}
    claims = [Claim("P", "swa beats sgdm", "swa", "sgdm"),
              Claim("P", "swa matches sgdm", "swa", "sgdm", direction="matches", margin=0.5)]
    rep = task_report("t", 1, "d", runs, claims=claims, metric="loss")
    (res,) = rep.claims
    ref = scipy_stats.ttest_rel([0.40, 0.41, 0.43], [0.30, 0.32, 0.31])
    assert res.claim.metric == "test_loss" and res.claim.unit == "loss"
    assert res.diff == pytest.approx(0.1033333, abs=1e-6) and res.p == pytest.approx(ref.pvalue)
    assert [c.text for c in rep.dropped] == ["swa matches sgdm"]
    assert [r.method for r in rep.rows] == ["swa", "sgdm"]  # lower test loss ranks first
