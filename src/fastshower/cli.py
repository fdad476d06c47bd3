"""The ``fastshower`` command: one sub-command per pipeline stage.

Each command is a thin wrapper: it parses options, calls the library and prints. Bad input ends
with a one-line ``error: ...`` on stderr and exit code 2 (see :func:`main`). Nothing imports this
module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="fastshower",
    help="Fast calorimeter shower simulation with deep generative models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exceptions that mean "bad input", reported as one line, not a traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, KeyError)


@app.callback()
def _root() -> None:
    """Fast calorimeter shower simulation with deep generative models."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def geometries(
    show: Optional[str] = typer.Argument(None, help="Preset name or YAML file to describe in full."),
) -> None:
    """List the detector geometry presets, or describe one (derived material properties included)."""
    from fastshower.geometry import PRESETS, load_geometry

    if show is None:
        for name, g in PRESETS.items():
            typer.echo(f"{name:10s} {g.kind:11s} {'x'.join(map(str, g.shape)):9s} {g.description}")
        return
    g = load_geometry(show)
    typer.echo(f"{g.name}: {g.description}")
    typer.echo(f"  kind {g.kind}, shape {g.shape}, layers {g.n_layers}, depth {g.layer_edges_mm()[-1]:.1f} mm "
               f"= {g.layer_radiation_lengths().sum():.1f} X0")
    typer.echo(f"  X0_eff {g.radiation_length_mm:.2f} mm, R_M_eff {g.moliere_radius_mm:.2f} mm, "
               f"E_c_eff {g.critical_energy_mev:.2f} MeV, sampling fraction {g.sampling_fraction:g} "
               f"(mip {g.mip_sampling_fraction:.4f})")


# ---------------------------------------------------------------- simulate / data (issue 2)


# ---------------------------------------------------------------- validate (issue 3)


# ---------------------------------------------------------------- train (issue 4)


# ---------------------------------------------------------------- infer: generate / export / benchmark / models (issue 5)


# ---------------------------------------------------------------- quantize (issue 6)


# ---------------------------------------------------------------- geant4 (issue 7)


# ---------------------------------------------------------------- demo (issue 8)


# ---------------------------------------------------------------- hpo (issue 9)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app; user errors become ``error: <one line>`` and exit code 2."""
    try:
        app(args=argv, prog_name="fastshower")
    except USER_ERRORS as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.echo(f"error: {msg.splitlines()[0] if msg else type(exc).__name__}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
