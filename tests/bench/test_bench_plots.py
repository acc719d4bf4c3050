"""Test-error curves: mean and min-max band over seeds against numpy, and the PNG file."""

import numpy as np

from polyak.bench.plots import error_curves, plot_test_error


def test_error_curves_against_numpy():
    accs = np.array([[0.5, 0.8, 0.9], [0.6, 0.7, 0.95], [0.4, 0.9, 0.93]])
    runs = [[{"test_acc": float(a)} for a in row] for row in accs]
    runs[0].append({"test_acc": 0.99})  # a longer run is cut to the common length
    epochs, mean, low, high = error_curves(runs)
    assert epochs == [1, 2, 3]
    np.testing.assert_allclose(mean, 100 * (1 - accs).mean(axis=0))
    np.testing.assert_allclose(low, 100 * (1 - accs).min(axis=0))
    np.testing.assert_allclose(high, 100 * (1 - accs).max(axis=0))


def test_plot_writes_a_png(tmp_path):
    runs = {"a": [[{"test_acc": 0.5}, {"test_acc": 0.9}]], "b": [], "c": [
        [{"test_acc": 0.6}, {"test_acc": 0.7}], [{"test_acc": 0.65}, {"test_acc": 0.8}]]}
    path = plot_test_error(runs, "title", tmp_path / "sub" / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_single_run_has_an_empty_band():
    assert error_curves([[{"test_acc": 0.75}]]) == ([1], [25.0], [25.0], [25.0])


def test_panels_group_each_paper_with_its_baselines_and_keep_the_rest():
    from polyak.bench.plots import PANELS, panels

    chosen = panels(["sgdm", "pwa", "my-method+ema"])
    assert chosen["PWA (Kobayashi)"] == ["sgdm", "pwa"]
    assert chosen["other"] == ["my-method+ema"]
    assert all(members for members in chosen.values())
    from polyak.recipes import PAPER_METHODS

    placed = {m for members in PANELS.values() for m in members}
    assert set(PAPER_METHODS) <= placed
