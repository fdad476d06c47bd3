"""The ``fastshower`` command: one sub-command per pipeline stage, one module per stage
(:mod:`.simulate`, :mod:`.validate`, :mod:`.train`, :mod:`.infer`; shared helpers in :mod:`.common`).

Each command is a thin wrapper: it parses options, calls one library function and prints. Bad input ends
with a one-line ``error: ...`` on stderr and exit code 2 (see :func:`main`). Nothing imports this
package.
"""

from __future__ import annotations

import sys

import typer

from fastshower.cli import infer, simulate, train, validate  # noqa: F401  (registers the commands)
from fastshower.cli.common import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app. Expected failures (:mod:`fastshower.errors`) become ``error: <message>``
    and their exit code (2 for bad input); Ctrl-C exits 130; any other exception keeps its traceback."""
    from fastshower.errors import user_message

    try:
        app(args=argv, prog_name="fastshower")
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        reported = user_message(exc)
        if reported is None:
            raise
        typer.echo(f"error: {reported[0]}", err=True)
        _exit(reported[1])


def _exit(code: int) -> None:
    """sys.exit, or os._exit when HDF5 holds a file it could not close (it would crash at exit)."""
    from fastshower.data.io import hdf5_file_left_open

    if hdf5_file_left_open():
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
