"""``polyak list``: what the package offers, one line each."""

from __future__ import annotations

import importlib
import inspect
import re

import typer
from rich.console import Console
from rich.table import Table

from polyak.cli import app

# (module, heading) in the order a reader meets them. A module that is not there yet is skipped.
SECTIONS = (
    ("polyak.optim", "optimizers"),
    ("polyak.averaging", "averaging"),
    ("polyak.schedules", "schedules"),
    ("polyak.triggers", "triggers"),
    ("polyak.recipes", "recipes"),
    ("polyak.analysis", "analysis"),
    ("polyak.bench.tasks", "tasks"),
)


def first_line(obj: object) -> str:
    """The first sentence of ``obj``'s docstring (its first paragraph, up to the first period)."""
    paragraph = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = re.search(r"\.\s+(?=[A-Z])", text)
    return text if match is None else text[: match.start() + 1]


def catalogue() -> list[tuple[str, str, str]]:
    """(section, name, one-line description) for every public object of the package."""
    rows: list[tuple[str, str, str]] = []
    for module_name, heading in SECTIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        describe = getattr(module, "describe", None)
        if callable(describe):  # modules with a registry of named things (recipes, tasks)
            rows += [(heading, name, text) for name, text in describe()]
            continue
        for name in getattr(module, "__all__", []):
            rows.append((heading, name, first_line(getattr(module, name))))
    return rows


@app.command("list")
def list_command(
    models: bool = typer.Option(
        False, "--models", help="List the benchmark's networks with their parameter counts."),
) -> None:
    """List the optimizers, averages, schedules, triggers, recipes, tasks and tools of polyak."""
    table = Table(show_header=True, header_style="bold")
    if models:
        from polyak.bench.models.catalog import model_table

        for column in ("model", "parameters", "what it is"):
            table.add_column(column, justify="right" if column == "parameters" else "left")
        for name, params, text in model_table():
            table.add_row(name, f"{params:,}", text)
    else:
        for column in ("kind", "name", "what it is"):
            table.add_column(column)
        for section, name, text in catalogue():
            table.add_row(section, name, text)
    Console(width=max(100, Console().width)).print(table)
    raise typer.Exit(0)
