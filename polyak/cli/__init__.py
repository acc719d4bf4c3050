"""The ``polyak`` command. Thin: parses, calls the library, prints.

Bad input (a ``ValueError``, ``FileNotFoundError`` or :class:`UserError` raised anywhere below)
becomes one line on stderr and exit status 2, never a traceback. Each command group lives in
its own module of this package and registers itself on :data:`app`.
"""

from __future__ import annotations

import sys

import typer

import polyak

app = typer.Typer(
    name="polyak",
    help="Parameter averaging, adaptive-to-SGD switching and learning-rate choice for PyTorch.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# typer >= 0.20 vendors click; reach its exception base through a public subclass.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class UserError(Exception):
    """An error in what the user asked for; the CLI prints it as one line and exits with 2."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"polyak {polyak.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """polyak: better SGD training by averaging, switching and learning-rate choice."""


def fail(message: str) -> None:
    """Raise the error the CLI turns into ``polyak: error: <message>`` and exit status 2."""
    raise UserError(message)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    try:
        result = app(args=argv, prog_name="polyak", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("polyak: aborted", file=sys.stderr)
        sys.exit(130)
    except ClickException as exc:
        exc.show()
        sys.exit(2)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"polyak: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("polyak: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


# Command groups register themselves on `app` when imported.
from polyak.cli import analysis, bench, data, listing, posthoc, train  # noqa: E402,F401,I001
