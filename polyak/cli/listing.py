"""``polyak list``: what the package offers, one line each; recipes with their hyper-parameters.

``polyak list --json`` prints the same catalogue as JSON: one object per entry with ``kind``,
``name`` and ``description``; recipes add ``base``, ``averaging``, ``paper``,
``hyperparameters`` (name -> default; budget rules as their formula) and ``tuning`` (the grid
the paper searched, or the recipe whose tuned values it reuses); the arms of the papers'
protocols (what ``polyak bench`` runs by default) add ``protocol``, ``paper``, ``recipe``,
``settings``, ``tuning`` and ``baseline``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from typing import Any

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
    ("polyak.bench.protocols", "protocol arms"),
    ("polyak.analysis", "analysis"),
    ("polyak.bench.tasks", "tasks"),
)

_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")   # :class:`~a.B` -> B (last part)


def plain(text: str) -> str:
    """Docstring markup removed: reST roles keep their target's last name, ````x```` is x."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "")


def first_line(obj: object) -> str:
    """The first sentence of ``obj``'s docstring (its first paragraph, up to the first period),
    without reST markup."""
    paragraph = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    text = plain(" ".join(paragraph.split()))
    match = re.search(r"\.\s+(?=[A-Z])", text)
    return text if match is None else text[: match.start() + 1]


def _recipe_entries(heading: str) -> list[dict[str, Any]]:
    from polyak.recipes import catalogue

    return [{"kind": heading, **entry} for entry in catalogue()]


def catalogue() -> list[dict[str, Any]]:
    """Every public object of the package: ``kind``, ``name``, ``description`` (recipes: more)."""
    rows: list[dict[str, Any]] = []
    for module_name, heading in SECTIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        if module_name == "polyak.recipes":
            rows += _recipe_entries(heading)
            continue
        if module_name == "polyak.bench.protocols":
            rows += [{"kind": heading, **entry} for entry in module.catalogue()]
            continue
        describe = getattr(module, "describe", None)
        if callable(describe):  # modules with a registry of named things (tasks)
            rows += [{"kind": heading, "name": n, "description": t} for n, t in describe()]
            continue
        for name in getattr(module, "__all__", []):
            rows.append({"kind": heading, "name": name,
                         "description": first_line(getattr(module, name))})
    return rows


def _text(entry: dict[str, Any]) -> str:
    """The table cell of an entry: the description, then a recipe's defaults and tuning."""
    text = entry["description"]
    if entry.get("available") is False:
        text += f" [unavailable: {entry['unavailable']}]"
    if "protocol" in entry:   # an arm of a paper's protocol
        settings = ", ".join(f"{k}={v}" for k, v in entry["settings"].items())
        text += f"\n  {entry['paper']}: {entry['recipe']}" + (f" with {settings}" if settings
                                                               else "")
        text += f"\n  tuning: {entry['tuning']}"
        return text
    if "hyperparameters" in entry:
        hps = ", ".join(f"{k}={v}" for k, v in entry["hyperparameters"].items())
        tuning = entry["tuning"]
        text += f"\n  defaults: {hps}"
        if tuning["grid"]:
            grid = "; ".join(f"{k} in {{{', '.join(vs)}}}" for k, vs in tuning["grid"].items())
            text += f"\n  tuned: {grid}" + (f" x {tuning['shares']}'s" if tuning["shares"] else "")
        elif tuning["shares"]:
            text += f"\n  tuned: {tuning['protocol']}"
        else:
            text += "\n  tuned: not (published defaults)"
    return text


@app.command("list")
def list_command(
    models: bool = typer.Option(
        False, "--models", help="List the benchmark's networks with their parameter counts."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON."),
) -> None:
    """List the optimizers, averages, schedules, triggers, recipes (with their hyper-parameters
    and defaults), tasks and tools of polyak."""
    if models:
        from polyak.bench.models.catalog import model_table

        rows = [{"name": n, "parameters": p, "description": t} for n, p, t in model_table()]
    else:
        rows = catalogue()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        raise typer.Exit(0)
    table = Table(show_header=True, header_style="bold")
    if models:
        for column in ("model", "parameters", "what it is"):
            table.add_column(column, justify="right" if column == "parameters" else "left")
        for row in rows:
            table.add_row(row["name"], f"{row['parameters']:,}", row["description"])
    else:
        for column in ("kind", "name", "what it is"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["kind"], row["name"], _text(row))
    Console(width=max(100, Console().width)).print(table)
    raise typer.Exit(0)
