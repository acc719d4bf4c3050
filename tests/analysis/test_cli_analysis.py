import pytest
from cli_run import run

import polyak.cli.analysis  # noqa: F401  (registers the commands on the app)

PNG = b"\x89PNG\r\n\x1a\n"


def test_igd_prints_bounds_and_writes_png(capsys, tmp_path):
    code, out, err = run(capsys, "igd", "--rows", "6", "--dim", "3", "--epochs", "4",
                         "--out", str(tmp_path / "igd.png"))
    assert code == 0, err
    assert "critical" in out and "2N/rho" in out
    assert (tmp_path / "igd.png").read_bytes()[:8] == PNG


def test_nqm_prints_a_table_and_writes_png(capsys, tmp_path):
    code, out, err = run(capsys, "nqm", "--dim", "5", "--epochs", "8", "--steps-per-epoch", "2",
                         "--out", str(tmp_path / "nqm.png"))
    assert code == 0, err
    assert "tail average" in out and "phase-wise" in out
    assert (tmp_path / "nqm.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv", [
    ("igd", "--rows", "0"),
    ("igd", "--dim", "-3"),
    ("nqm", "--dim", "0"),
    ("nqm", "--noise", "pink"),
    ("nqm", "--lr", "-1"),
    ("igd", "--out", "/no/such/dir/igd.png"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("polyak: error:")
