"""``polyak posthoc DIR``: choose a run's average after training, from its snapshots.

``DIR`` is a snapshot directory written by ``polyak bench --posthoc`` (under
``--checkpoint-dir``: ``<task>/<method>/seed<k>/snapshots-<epochs>ep-<hash>/``) or by
``polyak train --snapshots DIR``. The command rebuilds the run's task from the directory's meta,
reconstructs every average of the family (the bench's :data:`~polyak.bench.posthoc.DEFAULT_FAMILY`
unless the options say otherwise), evaluates each on the validation and test splits as the bench
does (BatchNorm recalibrated on the training split), writes ``posthoc.md``, ``posthoc.csv``,
``posthoc.json`` and ``landscape.png`` to ``--out``, and prints the table and the average
chosen on ``--choose-on`` (validation by default: the test split is only read to report).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import typer

from polyak.cli import app, fail
from polyak.cli.bench import DATA_DIR_HELP, _data_dir, _device

COLUMNS = ("name", "family", "param", "width", "error", "val_loss", "val_acc", "test_loss",
           "test_acc")
SPLITS = {"val": "validation", "test": "test"}


def _numbers(text: str | None, name: str, cast: Any = float) -> tuple | None:
    """``"0,0.5,0.75"`` -> a tuple of numbers (``None`` -> None: the default)."""
    if text is None:
        return None
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        kind = "integers" if cast is int else "numbers"
        fail(f"Invalid {name}: {text!r} (comma-separated {kind})")
    return values


def _family(windows, half_lives, latest, sigma_rels, pwa: bool) -> Any:
    from dataclasses import replace

    from polyak.bench.posthoc import DEFAULT_FAMILY

    given = {"windows": _numbers(windows, "windows"),
             "half_lives": _numbers(half_lives, "half-lives"),
             "latest": _numbers(latest, "latest", int),
             "sigma_rels": _numbers(sigma_rels, "sigma-rels")}
    return replace(DEFAULT_FAMILY, pwa=pwa, **{k: v for k, v in given.items() if v is not None})


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A task config without where it ran (a GPU run may be evaluated on the CPU)."""
    return {k: v for k, v in config.items() if k not in ("device", "autocast")}


def _task_of(snaps: Any, device: str, data_dir: str | None) -> Any:
    from polyak.bench.tasks import get_task

    meta = snaps.meta
    if not isinstance(meta.get("task"), str) or not isinstance(meta.get("seed"), int):
        fail(f"Invalid snapshot directory {snaps.directory}: its meta names no benchmark task "
             "and seed (written by `polyak bench --posthoc` or `polyak train --snapshots`; "
             "your own Snapshots: reconstruct with polyak.averaging, docs/posthoc.md)")
    task = get_task(meta["task"]).replace(device=device, data_dir=data_dir)
    if meta.get("task_config") is not None and \
            _comparable(task.config()) != _comparable(meta["task_config"]):
        fail(f"Invalid snapshot directory {snaps.directory}: task {task.name} is not configured "
             "as when the run trained (its data, model or batch sizes changed)")
    if snaps.every != "epoch":
        fail(f"Invalid snapshot directory {snaps.directory}: snapshots every {snaps.every} steps "
             "(this command reads per-epoch snapshots)")
    return task


def _markdown(rows: list[dict[str, Any]], chosen: dict[str, Any], split: str) -> str:
    lines = ["| average | family | width | error | val acc (%) | val NLL | test acc (%) "
             "| test NLL |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = f"**{r['name']}**" if r is chosen else r["name"]
        lines.append(f"| {name} | {r['family']} | {r['width']:.3f} | {r['error']:.2g} | "
                     f"{100 * r['val_acc']:.2f} | {r['val_loss']:.4f} | "
                     f"{100 * r['test_acc']:.2f} | {r['test_loss']:.4f} |")
    lines += ["", f"Chosen on {SPLITS[split]} (bold): the highest {SPLITS[split]} accuracy, "
              "ties to the lower loss. Width: the standard deviation of the average's weights "
              "over training time relative to the run's length (sigma_rel for power EMAs); "
              "error: the reconstruction's bound (power EMAs; 0 = exact)."]
    return "\n".join(lines)


def _write(out: Path, rows: list[dict[str, Any]], payload: dict[str, Any], text: str) -> None:
    (out / "posthoc.md").write_text(text + "\n")
    with open(out / "posthoc.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    (out / "posthoc.json").write_text(json.dumps(payload, indent=1) + "\n")


@app.command("posthoc")
def posthoc_command(
    directory: str = typer.Argument(..., help="A run's snapshot directory (written by "
                                    "`polyak bench --posthoc` or `polyak train --snapshots`)."),
    windows: str = typer.Option(None, "--windows", help="Starts of the uniform windows "
                                "[a, end], fractions of the epochs trained (default "
                                "0,0.25,0.5,0.75,0.9)."),
    half_lives: str = typer.Option(None, "--half-lives", help="EMA half-lives in epochs "
                                   "(default 0.5,1,2,4,8)."),
    latest: str = typer.Option(None, "--latest", help="Means of the k latest snapshots "
                               "(default 1,2,4,8; 1 is the last iterate)."),
    sigma_rels: str = typer.Option(None, "--sigma-rels", help="Power-EMA widths, "
                                   "reconstructed from the stored profiles (default "
                                   "0.02,...,0.25)."),
    pwa: bool = typer.Option(True, "--pwa/--no-pwa", help="PWA's weighting of the last phase."),
    choose_on: str = typer.Option("val", "--choose-on", help="The split the choice is made "
                                  "on: val (default) or test."),
    out: str = typer.Option("polyak-posthoc", "--out", help="Directory of the table, the JSON "
                            "and CSV files and landscape.png."),
    device: str = typer.Option("auto", "--device", help="Where to evaluate: auto, cpu or "
                               "cuda[:N]."),
    data_dir: str = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> int:
    """Evaluate a family of post-hoc averages of one run and choose one on validation."""
    from polyak.averaging import SnapshotDir
    from polyak.bench.posthoc import evaluate, evaluation_parts
    from polyak.bench.posthoc_report import choose, plot_landscape
    from polyak.cli.bench import _writable_dir

    if choose_on not in SPLITS:
        fail(f"Invalid choose-on: {choose_on!r} (allowed: val, test)")
    if not Path(directory).is_dir():
        fail(f"Invalid directory: {directory} is not a directory")
    family = _family(windows, half_lives, latest, sigma_rels, pwa)
    snaps = SnapshotDir(directory)
    if not len(snaps):
        fail(f"Invalid snapshot directory {directory}: it holds no snapshot yet")
    task = _task_of(snaps, _device(device), _data_dir(data_dir))
    _writable_dir(out, "--out")
    model, score, splits, bn_loader = evaluation_parts(task, snaps.meta["seed"])
    rows = evaluate(snaps, family, model, score, splits, bn_loader)
    chosen = choose(rows, choose_on)
    methods = " + ".join(snaps.meta.get("methods") or ["?"])
    title = f"{task.name}, {methods}, seed {snaps.meta['seed']}"
    text = f"# Post-hoc averages: {title}\n\n{len(snaps)} snapshots in {directory}\n\n" + \
        _markdown(rows, chosen, choose_on)
    out_dir = Path(out)
    figure = plot_landscape({methods: [rows]}, out_dir / "landscape.png", title)
    _write(out_dir, rows, {"directory": str(directory), "meta": snaps.meta, "family":
                           {k: getattr(family, k) for k in ("windows", "half_lives", "latest",
                                                            "pwa", "sigma_rels")},
                           "chosen_on": choose_on, "chosen": chosen["name"], "averages": rows},
           text)
    typer.echo(text)
    typer.echo(f"\nchosen on {SPLITS[choose_on]}: {chosen['name']} (width "
               f"{chosen['width']:.3f}): validation accuracy {100 * chosen['val_acc']:.2f} %, "
               f"test accuracy {100 * chosen['test_acc']:.2f} %")
    if choose_on == "test":
        typer.echo("note: chosen on the test split, so its test accuracy is optimistic",
                   err=True)
    typer.echo(f"written to {out_dir} (posthoc.md, posthoc.csv, posthoc.json, {figure.name})",
               err=True)
    return 0
