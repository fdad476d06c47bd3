"""What every sub-command shares: the Typer app and the option / input helpers."""

from __future__ import annotations

import typer

from fastshower.errors import UserInputError

app = typer.Typer(
    name="fastshower",
    help="Fast calorimeter shower simulation with deep generative models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Fast calorimeter shower simulation with deep generative models."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _overwrite_option():
    return typer.Option(False, "--overwrite", help="Replace an existing output file.")


def _require_onnx(*models: str) -> None:
    """A one-line DataFileError for a ``.onnx`` model argument that is not a readable ONNX generator."""
    from fastshower.errors import DataFileError, FastshowerError

    for model in models:
        if not str(model).endswith(".onnx"):
            continue
        from fastshower.infer.onnx_export import read_metadata

        try:
            read_metadata(model)
        except (FastshowerError, FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # protobuf DecodeError, onnx errors: not an ONNX file
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataFileError(f"{model} is not a readable ONNX file ({type(exc).__name__}: {detail})") from None


def _check_condition_count(n: int) -> None:
    """Refuse -n whose conditions (2 float64 per shower) do not fit in the available memory."""
    import os

    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    if 16 * n > available:
        raise UserInputError(f"-n {n}: its conditions alone need {16 * n / 2**30:.1f} GiB, more than the "
                             f"{available / 2**30:.1f} GiB of free memory; split the run (several files with "
                             f"different --seed)")


def _model_option(help: str):
    """The required ``--model/-m`` option of the inference commands."""
    return typer.Option(..., "--model", "-m", help=help)


def _output_option(help: str):
    """The required ``-o/--output`` option of the inference commands."""
    return typer.Option(..., "-o", "--output", help=help)
