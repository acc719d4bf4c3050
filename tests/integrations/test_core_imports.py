"""The core never imports the frameworks: they are optional extras."""

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
import polyak, polyak.integrations
for info in pkgutil.walk_packages(polyak.__path__, "polyak."):
    if not info.name.startswith(("polyak.integrations.", "polyak.__main__")):
        importlib.import_module(info.name)
loaded = sorted(m for m in ("lightning", "pytorch_lightning", "transformers", "accelerate")
                if m in sys.modules)
print(",".join(loaded) or "none")
"""


@pytest.mark.slow   # imports every module of polyak in a fresh interpreter
def test_core_modules_import_no_framework():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "none"
