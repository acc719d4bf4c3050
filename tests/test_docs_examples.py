"""The runnable examples of the README and the docs pages: every ```python block of a page, run in
order in one namespace, in an empty directory, as a reader would paste them (```py blocks are
fragments and are not run). The printed values the pages quote are checked too."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / page).read_text(), re.S | re.M)


def run_page(page: str, tmp_path, monkeypatch) -> dict:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no runnable example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # a page's example warns nobody
        warnings.filterwarnings("ignore", module="lightning")   # the framework's own notes
        warnings.filterwarnings("ignore", module="transformers")
        warnings.filterwarnings("ignore", module="torch.utils.data")
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page} block {i + 1}", "exec"), namespace)
    return namespace


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    ns = run_page("README.md", tmp_path, monkeypatch)
    assert ns["method"].averaging.n_averaged > 0          # gadamx reports its average
    assert re.fullmatch(r"test loss of the average: \d\.\d{3}\n", capsys.readouterr().out)


def test_the_own_loop_examples_run_and_print_what_the_page_says(tmp_path, monkeypatch, capsys):
    ns = run_page("docs/own-loop.md", tmp_path, monkeypatch)
    out = capsys.readouterr().out.splitlines()
    assert "2 2" in out                                  # accumulation: steps, collections
    count, decay = out[-1].split()                       # the EMA's warm-up: "8 0.769..."
    assert count == "8" and float(decay) == pytest.approx(0.769, abs=5e-4)
    lrs = next(line for line in out if line.startswith("[0.025"))   # warm-up, then PWA's steps
    first, last = lrs.rsplit(" ", 1)
    assert eval(first) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert float(last) == pytest.approx(0.001)
    assert ns["method"].optimizer.param_groups


@pytest.mark.slow   # a Lightning fit and a Hugging Face Trainer run: about 20 s together
def test_the_integration_examples_run(tmp_path, monkeypatch):
    ns = run_page("docs/integrations.md", tmp_path, monkeypatch)
    assert (tmp_path / "hf-out" / "final").is_dir()
    assert ns["trainer"].state.epoch == 4
