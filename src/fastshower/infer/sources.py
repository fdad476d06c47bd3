"""Model-backed shower sources for the Geant4 fast-simulation hook (the
:class:`~fastshower.simulate.geant4.sources.ShowerSource` protocol).

Every model source is a :class:`GeneratorSource`: a :class:`~fastshower.infer.generator.Generator`
(torch or ONNX Runtime back-end) with its one noise convention, so a batch generated with seed
``s`` equals ``Generator.generate(E, theta, seed=s)`` whatever the back-end: ``g4run --model x``,
``g4run --model x.onnx`` and ``generate -m x[.onnx]`` give the same showers (ONNX up to export
rounding). :func:`resolve_source` maps the ``--model`` option (``gflash``, a model name or saved
path, an ``.onnx`` file) to a source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastshower.geometry import Geometry, load_geometry
from fastshower.infer.generator import DEFAULT_BATCH_SIZE, Generator
from fastshower.simulate.geant4.sources import (EntryOffset, FunctionSource, ShowerSource, centre_entry_offset,
                                                entry_offset_for, gflash_source)


class GeneratorSource:
    """A :class:`Generator` as a shower source. ``offset``: the model frame's entry convention
    (:func:`~fastshower.simulate.geant4.sources.entry_offset_for`); ``check_range``: refuse
    conditions outside the trained range (False: generate anyway, e.g. an untrained test model);
    ``batch_size``: showers per back-end call within one source call."""

    def __init__(self, generator: Generator, offset: EntryOffset = centre_entry_offset, description: str | None = None,
                 check_range: bool = True, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.generator = generator
        self.offset = offset
        self.description = description or f"generator {generator.name} ({generator.backend})"
        self.check_range = check_range
        self.batch_size = batch_size

    def __call__(self, primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        return self.generator.generate_arrays(np.asarray(primary_energy, np.float32),
                                              np.asarray(incident_angle, np.float32), seed=seed,
                                              batch_size=self.batch_size, check_range=self.check_range)

    def entry_offset(self, primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
        return self.offset(primary_energy, incident_angle)


def generator_source(name_or_path: str | Path, geometry: Geometry | str | None = None, device: str = "cpu",
                     entry_convention: str = "gflash", particle: str = "e-", **load_kwargs) -> GeneratorSource:
    """A trained generator (shipped name, saved path or ``.onnx`` file) loaded with
    :meth:`Generator.load`; ValueError when it generates for another geometry than ``geometry``.
    ``entry_convention``: ``gflash`` (the training data's) or ``centre``."""
    gen = Generator.load(str(name_or_path), device=device, geometry=geometry, **load_kwargs)
    if geometry is not None:
        want = load_geometry(geometry)
        if gen.geometry.name != want.name:
            raise ValueError(f"model {name_or_path} generates showers for geometry {gen.geometry.name!r}, "
                             f"not {want.name!r}")
    offset = entry_offset_for(entry_convention, gen.geometry, particle)
    kind = "onnx" if gen.backend == "onnx" else "generator"
    return GeneratorSource(gen, offset, f"{kind} {name_or_path}")


def module_source(module: torch.nn.Module, device: str = "cpu", entry_convention: str = "centre") -> GeneratorSource:
    """A ``ShowerGenerator`` network in memory (e.g. an untrained small-width model in tests), in
    eval mode, through :meth:`Generator.from_module`: the generators' noise convention, no range
    check; showers centred on the entry point unless ``entry_convention`` says otherwise."""
    gen = Generator.from_module(module.eval(), device)
    return GeneratorSource(gen, entry_offset_for(entry_convention, gen.geometry),
                           f"module {getattr(module, 'name', type(module).__name__)}", check_range=False)


def resolve_source(model: str, geometry: Geometry | str, particle: str = "e-",
                   entry_convention: str = "gflash") -> ShowerSource:
    """``gflash`` -> :func:`~fastshower.simulate.geant4.sources.gflash_source`; otherwise a
    model name, weights path or ``.onnx`` file (:func:`fastshower.models.registry.resolve`) for
    :func:`generator_source`. Models get ``entry_convention`` (default ``gflash``: the convention
    of the project's training data; ``centre`` for showers centred on the entry point)."""
    kind = "gamma" if particle == "gamma" else "e-"
    if model == "gflash":
        return gflash_source(geometry, kind)
    # a model's showers follow its training data's convention (e- showers), whatever the particle
    return generator_source(model, geometry, entry_convention=entry_convention)


__all__ = ["FunctionSource", "GeneratorSource", "generator_source", "module_source", "resolve_source"]
