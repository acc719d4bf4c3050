"""``polyak data``: where the benchmark's datasets are looked for, and downloading them."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polyak.bench.data import cifar, fashion_mnist, svhn
from polyak.bench.data.download import DATASETS, download
from polyak.cli import app, fail

data_app = typer.Typer(help="Datasets: where polyak looks for them; download them.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

Locator = Callable[[Path | None], tuple[list[Path], object]]

# name -> (what it is, locate(data_dir) -> (dirs searched, what was found or None), how to get it)
SOURCES: dict[str, tuple[str, Locator, str]] = {
    "fashion-mnist": ("Fashion-MNIST IDX files", fashion_mnist.locate,
                      "polyak data download fashion-mnist, "
                      "or apt-get install dataset-fashion-mnist"),
    "cifar10": ("CIFAR-10 binary version", lambda d: cifar.locate("cifar10", d),
                "polyak data download cifar10"),
    "cifar100": ("CIFAR-100 binary version", lambda d: cifar.locate("cifar100", d),
                 "polyak data download cifar100"),
    "svhn": ("SVHN cropped digits (format 2, .mat)", svhn.locate, "polyak data download svhn"),
    "kjv": ("King James Bible text (character LM)",
            lambda d: (["$PATH: bible"], shutil.which("bible")), "apt-get install bible-kjv"),
}


@data_app.command("list")
def list_command(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Also look in this directory.")] = None,
) -> None:
    """Each dataset, where it is looked for, and whether it was found."""
    table = Table(show_header=True, header_style="bold")
    for column in ("name", "what it is", "looked in", "status"):
        table.add_column(column, overflow="fold")
    for name, (title, locate, how) in SOURCES.items():
        dirs, found = locate(data_dir)
        if isinstance(found, dict):  # one path per file: show their folder
            found = next(iter(found.values())).parent
        status = f"found: {found}" if found else f"missing (get it: {how})"
        table.add_row(name, title, "\n".join(str(d) for d in dirs), status)
    Console(width=max(120, Console().width)).print(table)


@data_app.command("download")
def download_command(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(DATASETS)}.")],
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Directory to download into (files go to DIR/NAME).")] = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", envvar="POLYAK_DATA_URL",
        help="Mirror to fetch the files from instead of the official URL.")] = None,
) -> None:
    """Download a dataset from its official address, verifying its published SHA-256."""
    if name not in DATASETS:
        fail(f"Invalid dataset: {name!r} (allowed: {', '.join(DATASETS)})")
    try:
        target = download(name, data_dir, base_url=base_url,
                          report=lambda message: print(message, file=sys.stderr))
    except KeyboardInterrupt:
        print(f"polyak: download of {name} interrupted; the partial file was deleted",
              file=sys.stderr)
        raise typer.Exit(130) from None
    typer.echo(str(target))
