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
