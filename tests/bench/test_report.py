"""The report: table statistics against numpy/scipy, ranking, Markdown and files."""

import json

import numpy as np
import pytest
from scipy import stats

from polyak.bench.claims import Claim
from polyak.bench.report import baseline_of, task_report, to_markdown, write_report
from polyak.bench.store import METRICS, RunKey, Store
from polyak.bench.train import RunResult

FINAL_ACC = {"sgdm": [0.950, 0.955, 0.948], "swa": [0.962, 0.965, 0.960],
             "pwa": [0.958, 0.951, 0.957]}


def make_curve(final_acc, seed, epochs=4):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(epochs):
        acc = final_acc - 0.02 * (epochs - 1 - e) if e < epochs - 1 else final_acc
        rows.append({"epoch": e, "train_loss": 1.0, "train_acc": 0.9,
                     "val_loss": 0.3, "val_acc": float(rng.uniform(0.8, 0.99)),
                     "test_loss": 1.0 - acc, "test_acc": acc, "lr": 0.1, "time": e + 1.0})
    return rows


def runs_by_method():
    out = {}
    for method, accs in FINAL_ACC.items():
        out[method] = [{"status": "complete", "wall_time": 2.0 + s, "curve": make_curve(a, s)}
                       for s, a in enumerate(accs)]
    out["pwa"].append({"status": "diverged", "wall_time": 0.5, "curve": make_curve(0.1, 9)})
    out["sgd"] = [{"status": "failed", "wall_time": None, "curve": []}]
    return out


def test_runs_with_seeds_are_compared_paired_over_the_common_seeds():
    data = runs_by_method()
    for runs in data.values():
        for seed, run in enumerate(runs):
            run["seed"] = seed
    data["swa"][2]["seed"] = 7  # sgdm has no seed 7: two common seeds
    rep = task_report("t", 4, "desc", data, claims=[Claim("P", "swa beats sgdm", "swa", "sgdm")])
    swa = {r.method: r for r in rep.rows}["swa"]
    a, b = [100 * x for x in FINAL_ACC["swa"][:2]], [100 * x for x in FINAL_ACC["sgdm"][:2]]
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert swa.vs_baseline.paired and swa.vs_baseline.n_a == 2
    assert swa.vs_baseline.p == pytest.approx(ref.pvalue)
    assert (swa.vs_baseline.low, swa.vs_baseline.high) == (pytest.approx(ci.low),
                                                           pytest.approx(ci.high))
    claim = rep.claims[0]
    assert claim.paired and claim.p == pytest.approx(ref.pvalue)
    assert claim.p_adjusted == pytest.approx(ref.pvalue)  # a table of one claim
    assert claim.verdict == ("supported" if ref.pvalue < 0.05 else "inconclusive")


def test_rows_against_numpy_and_scipy():
    data = runs_by_method()
    rep = task_report("t", 4, "desc", data, claims=[Claim("p", "SWA beats SGDM", "swa", "sgdm")])
    rows = {r.method: r for r in rep.rows}
    assert [r.method for r in rep.rows] == ["swa", "pwa", "sgdm", "sgd"]
    assert [r.rank for r in rep.rows] == [1, 2, 3, None]
    swa = rows["swa"]
    assert swa.acc_mean == pytest.approx(100 * np.mean(FINAL_ACC["swa"]))
    assert swa.acc_std == pytest.approx(100 * np.std(FINAL_ACC["swa"], ddof=1))
    assert swa.nll_mean == pytest.approx(np.mean([1 - a for a in FINAL_ACC["swa"]]))
    assert swa.time_per_run == pytest.approx(3.0)
    val = np.mean([[r["val_acc"] for r in run["curve"]] for run in data["swa"]], axis=0)
    assert swa.best_epoch == int(np.argmax(val))   # 0-based, as end_epoch numbers epochs
    assert swa.baseline == "sgdm"
    ref = stats.ttest_ind([100 * a for a in FINAL_ACC["swa"]],
                          [100 * a for a in FINAL_ACC["sgdm"]], equal_var=False)
    assert swa.vs_baseline.p == pytest.approx(ref.pvalue)  # runs without seeds: Welch
    pwa = rows["pwa"]
    assert (pwa.complete, pwa.diverged) == (3, 1)  # the diverged run is not averaged in
    assert pwa.acc_mean == pytest.approx(100 * np.mean(FINAL_ACC["pwa"]))
    assert rows["sgd"].failed == 1 and rows["sgdm"].vs_baseline is None  # sgd has no results
    assert rep.claims[0].verdict == "supported"


def test_markdown_lists_methods_claims_and_failures():
    rep = task_report("t", 4, "a description", runs_by_method(),
                      claims=[Claim("Paper X", "PWA beats SGDM", "pwa", "sgdm")])
    text = to_markdown([rep], notes=["gadam not run: missing"])
    for needle in ("## t (4 epochs)", "a description", "| 1 | swa |", "(+1 diverged)",
                   "Paper X", "PWA beats SGDM", "gadam not run: missing", "sgd: 1 failed"):
        assert needle in text


def test_baselines_ignore_overrides():
    # an arm of a paper's protocol is tested against that protocol's arm (the table falls back
    # to the recipe's baseline when it was not run: sgdm above); a plain recipe against its own
    assert baseline_of("swa") == "sgdm@gadam" and baseline_of("gadam:lr=0.01") == "adamw@gadam"
    assert baseline_of("adamw+ema") is None and baseline_of("adamw") == "adam"
    assert baseline_of("no-such-thing") is None


def test_write_report_files(tmp_path):
    keys = []
    with Store(tmp_path / "s.sqlite") as store:
        for method, accs in FINAL_ACC.items():
            for seed, acc in enumerate(accs):
                key = RunKey("t", method, seed, 4, json.dumps({"x": 1}))
                store.plan([key])
                store.claim(key)
                curve = [{m: r[m] for m in ("epoch", *METRICS)} for r in make_curve(acc, seed)]
                store.finish(key, RunResult("complete", curve, None, 1.0))
                keys.append(key)
        other = RunKey("t", "sgdm", 0, 5, json.dumps({"x": 1}))  # not asked for
        store.plan([other])
        text, reports = write_report(store, keys, tmp_path / "out", {"t": (4, "desc")})
    assert (tmp_path / "out" / "report.md").read_text().strip() == text.strip()
    png = (tmp_path / "out" / "t-test-error.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r.method for r in reports[0].rows] == ["swa", "pwa", "sgdm"]
    assert all(r.complete == 3 for r in reports[0].rows)
