"""The runnable example of docs/posthoc.md: its ```python blocks, run in order, as a user would."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from polyak.averaging import SnapshotDir, reconstruct

DOC = Path(__file__).resolve().parents[2] / "docs" / "posthoc.md"


def test_the_posthoc_page_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_posthoc"}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert re.fullmatch(r".+: validation 0\.\d{3}, test 0\.\d{3}\n", out)
    run = SnapshotDir(tmp_path / "snapshots")
    assert len(run) == 40 and run.sigma_rels == [0.05, 0.10]       # as the page says
    assert run.disk_bytes() < 400_000
    best = namespace["best"]                     # the model now holds the chosen average
    want = reconstruct(run, namespace["candidates"][best])
    for p, w in zip(namespace["model"].parameters(), want.values()):
        assert torch.equal(p.detach(), w)
