import subprocess
import sys

import polyak


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "polyak", *args], capture_output=True, text=True)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"polyak {polyak.__version__}"


def test_list_names_the_trigger():
    out = run_cli("list")
    assert out.returncode == 0, out.stderr
    assert "Plateau" in out.stdout


def test_unknown_command_exits_2_without_traceback():
    out = run_cli("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
