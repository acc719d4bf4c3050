"""Test-error curves: mean and min-max band over seeds against numpy, and the PNG file."""

import numpy as np

from polyak.bench.plots import error_curves, plot_test_error


def test_error_curves_against_numpy():
    accs = np.array([[0.5, 0.8, 0.9], [0.6, 0.7, 0.95], [0.4, 0.9, 0.93]])
    runs = [[{"test_acc": float(a)} for a in row] for row in accs]
    runs[0].append({"test_acc": 0.99})  # a longer run is cut to the common length
    epochs, mean, low, high = error_curves(runs)
    assert epochs == [0, 1, 2]     # 0-based, as Method.end_epoch numbers them
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
    assert error_curves([[{"test_acc": 0.75}]]) == ([0], [25.0], [25.0], [25.0])


def test_panels_group_each_paper_with_its_baselines_and_keep_the_rest():
    from polyak.bench.plots import PANELS, panels

    many = ["sgdm@pwa", "pwa", "sgd@sgdl", "sgdl", "adam@tso-alra", "tso-alra",
            "my-method+ema"]
    chosen = panels(many)
    assert chosen["PWA (Kobayashi, Tables 1c and 2)"] == ["sgdm@pwa", "pwa"]
    assert chosen["SGDL (Wu et al.)"] == ["sgd@sgdl", "sgdl"]
    assert chosen["other"] == ["my-method+ema"]
    assert all(members for members in chosen.values())
    from polyak.bench.protocols import default_methods

    placed = {m for members in PANELS.values() for m in members}
    assert set(default_methods()) <= placed   # every arm of every protocol has its panel


def test_a_small_selection_shares_one_panel():
    from polyak.bench.plots import ONE_PANEL, panels

    # issue 14: gadamx and sgdl without their baselines were drawn in two different panels
    assert panels(["gadamx", "sgdl"]) == {"": ["gadamx", "sgdl"]}
    assert len(panels([f"m{i}" for i in range(ONE_PANEL + 1)])) == 1   # all in "other"


def test_log_ticks_are_plain_numbers_of_a_readable_series():
    from polyak.bench.plots import log_ticks

    assert log_ticks(3.1, 95.0) == [5, 10, 20, 50]
    for low, high in ((0.4, 3.0), (42.0, 75.0), (11.0, 13.0)):
        ticks = log_ticks(low, high)
        assert len(ticks) >= 3 and all(low <= t <= high for t in ticks)


def test_figure_labels_are_readable_and_epochs_integer(tmp_path):
    """Issue 14: log-axis labels like "6x10^1", ticks at epoch 1.25, a clipped figure."""
    import matplotlib.pyplot as plt

    from polyak.bench.plots import error_figure

    curves = {"gadamx": [[{"test_acc": a} for a in (0.30, 0.45, 0.52)]],
              "sgdl": [[{"test_acc": a} for a in (0.25, 0.40, 0.58)]]}
    fig = error_figure(curves, "mnist1d-cnn: test error (3 epochs)")
    fig.canvas.draw()
    (ax,) = [a for a in fig.axes if a.get_visible()]
    y_labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(y_labels) >= 3
    assert all(label.replace(".", "").isdigit() for label in y_labels), y_labels
    x_ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert x_ticks == [0, 1, 2]
    assert len(ax.get_legend().get_texts()) == 2
    low, high = ax.get_ylim()           # every point inside the axes
    assert low < 42 and high > 75
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for artist in (ax.title, ax.xaxis.label, ax.yaxis.label, fig._suptitle, ax.get_legend()):
        extent = artist.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1
    plt.close(fig)
