import numpy as np

from polyak.analysis.least_squares import random_least_squares
from polyak.analysis.plots import plot_igd, plot_nqm, plot_probe
from polyak.analysis.probes import Probe

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    p = random_least_squares(4, 2, 0.1, seed=0)
    out = plot_igd(p, tmp_path / "igd.png", ts=np.linspace(0.1, 3.0, 6), epochs=3)
    assert out.read_bytes()[:8] == PNG
    out = plot_nqm({"a": np.array([1.0, 0.5, 0.2]), "b": np.array([1.0, np.inf, np.inf])},
                   tmp_path / "nqm.png")
    assert out.read_bytes()[:8] == PNG
    probe = Probe(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.8, 1.1]),
                  np.array([0.5, 0.6, 0.4]))
    out = plot_probe({"train": probe}, tmp_path / "probe.png")
    assert out.read_bytes()[:8] == PNG


def captured(monkeypatch):
    """The figures the plot functions save (they close them afterwards)."""
    import polyak.analysis.plots as plots

    figures = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    return figures


def test_probe_figure_names_the_run_alpha_and_shows_all_three_probes(tmp_path, monkeypatch):
    """Issue 14: probe.png had no title, no run, no meaning of alpha and two of three probes."""
    figures = captured(monkeypatch)
    a = np.linspace(0, 1, 3)
    seg = {"train": Probe(a, np.array([1.0, 0.8, 0.9]), np.array([0.5, 0.6, 0.7])),
           "test": Probe(a, np.array([1.1, 0.9, 1.0]), np.array([0.4, 0.5, 0.6]))}
    pairs = Probe(np.array([4.0, 2.0, 0.0]), np.array([0.5, 0.4, 0.9]),
                  np.array([0.8, 0.85, 0.5]))
    plot_probe(seg, tmp_path / "probe.png", title="t: probes of the run in runs/t/pwa/seed0\n"
               "alpha: the point (1 - alpha) theta_first + alpha theta_last", pairs=pairs,
               pairs_label="epoch of theta_k", diversity="diversity: symmetric KL 0.1")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert "runs/t/pwa/seed0" in title and "alpha: the point" in title and "KL 0.1" in title
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["along the segment: loss", "along the segment: accuracy",
                      "two-point averages (theta_last + theta_k)/2"]


def test_nqm_subtitle_says_what_is_plotted_and_why_every_curve_rises(tmp_path, monkeypatch):
    figures = captured(monkeypatch)
    rising = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 1.5, 1.6])}
    plot_nqm(rising, tmp_path / "a.png", subtitle="d=3, lr 0.5")
    plot_nqm({**rising, "c": np.array([1.0, 0.5, 0.2])}, tmp_path / "b.png")
    first, second = (fig.axes[0].get_title() for fig in figures)
    assert "exact expected loss" in first and "d=3, lr 0.5" in first
    assert "every curve rises" in first and "every curve rises" not in second
    labels = [t.get_text() for t in figures[0].axes[0].get_yticklabels() if t.get_text()]
    assert labels and all("10^" not in s and "times" not in s for s in labels), labels
