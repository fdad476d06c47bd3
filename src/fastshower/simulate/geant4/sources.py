"""Shower sources: what the fast-simulation hook calls for the e+/e-/gamma it kills.

A shower source is any callable

    source(primary_energy_gev: np.ndarray (m,), incident_angle_rad: np.ndarray (m,), seed: int)
        -> np.ndarray (m, *geometry.shape) float, GeV deposited in the active material per cell,
           in model cells (entry point at the grid centre; see placement.py)

called once per batch with all the primaries of that batch (one or several events). A source may
carry ``source.entry_offset(primary_energy, incident_angle) -> (m, 2)``: where the particle enters
the face in its model frame, relative to the grid centre (mm); without it, (0, 0). The sources
made here for the project's models and GFlash use :func:`gflash_entry_offset` (the convention of
the training data: a tilted axis crosses the grid centre at the mean shower maximum). Sources here:
the GFlash reference parametrisation (:func:`gflash_source`), a trained generator through
``fastshower.infer`` (:func:`generator_source`), a raw ``ShowerGenerator`` module
(:func:`module_source`, e.g. an untrained small-width model in tests), and an ONNX session
(:func:`onnx_source`). :func:`resolve_source` maps the ``--model`` option to one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastshower.geometry import Geometry, load_geometry

ShowerSource = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed the run passes to the shower source for its ``batch_index``-th call."""
    return int(np.random.default_rng([int(seed), 1, int(batch_index)]).integers(2**31 - 1))


def gflash_entry_offset(geometry: Geometry | str, particle: str = "e-") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Model-frame entry point of GFlash-convention showers: (0, -z_p cot(theta)) mm, with z_p the
    depth where GFlash's tilted axis crosses the grid centre (the mean shower maximum). Zero at
    normal incidence."""
    g = load_geometry(geometry)
    try:
        from fastshower.simulate.gflash import _pivot_depth_mm, stack_parameters
    except ImportError as exc:
        raise RuntimeError(f"the GFlash entry-point convention needs fastshower.simulate.gflash: {exc}") from exc
    stack = stack_parameters(g)
    kind = "gamma" if particle == "gamma" else "e-"

    def entry_offset(primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
        e = np.asarray(primary_energy, np.float64).reshape(-1)
        t = np.asarray(incident_angle, np.float64).reshape(-1)
        pivot = _pivot_depth_mm(stack, e, np.sin(t), kind)
        return np.stack([np.zeros_like(e), -pivot * np.cos(t) / np.sin(t)], axis=1)

    return entry_offset


def entry_offset_of(source: ShowerSource, primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
    """``source.entry_offset(...)`` if the source has one, else zeros ``(m, 2)``."""
    fn = getattr(source, "entry_offset", None)
    if fn is None:
        return np.zeros((len(primary_energy), 2))
    return np.asarray(fn(primary_energy, incident_angle), np.float64).reshape(len(primary_energy), 2)


def with_entry_offset(source: ShowerSource, geometry: Geometry | str, convention: str = "gflash",
                      particle: str = "e-") -> ShowerSource:
    """Attach the model-frame entry convention: ``gflash`` (:func:`gflash_entry_offset`) or
    ``centre`` (showers centred on the entry point)."""
    if convention == "gflash":
        source.entry_offset = gflash_entry_offset(geometry, particle)  # type: ignore[attr-defined]
    elif convention == "centre":
        source.entry_offset = None  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown entry convention {convention!r}; expected gflash or centre")
    return source


def gflash_source(geometry: Geometry | str, particle: str = "e-") -> ShowerSource:
    """The GFlash reference parametrisation (``fastshower.simulate.gflash``) as a shower source."""
    try:
        from fastshower.simulate.gflash import simulate_showers
    except ImportError as exc:
        raise RuntimeError(f"the gflash shower source needs fastshower.simulate.gflash, which cannot be "
                           f"imported here: {exc}") from exc

    g = load_geometry(geometry)

    def source(primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        return simulate_showers(g, np.asarray(primary_energy, np.float64), np.asarray(incident_angle, np.float64),
                                np.random.default_rng(seed), particle=particle)

    source.description = f"gflash ({particle})"  # type: ignore[attr-defined]
    return with_entry_offset(source, g, "gflash", particle)


def generator_source(name_or_path: str | Path, geometry: Geometry | str | None = None,
                     device: str = "cpu", **load_kwargs) -> ShowerSource:
    """A trained generator loaded with ``fastshower.infer.generator.Generator.load``."""
    try:
        from fastshower.infer.generator import Generator
    except ImportError as exc:
        raise RuntimeError(f"a model shower source needs fastshower.infer.generator, which cannot be imported "
                           f"here: {exc}") from exc

    gen = Generator.load(str(name_or_path), device=device, **load_kwargs)
    if geometry is not None:
        want = load_geometry(geometry).name
        have = getattr(gen, "geometry", None)
        have = getattr(have, "name", have)
        if have is not None and str(have) != want:
            raise ValueError(f"model {name_or_path} generates showers for geometry {have!r}, not {want!r}")

    def source(primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        return gen.generate(np.asarray(primary_energy, np.float32), np.asarray(incident_angle, np.float32),
                            seed=seed).showers

    source.description = f"generator {name_or_path}"  # type: ignore[attr-defined]
    return source


def module_source(module, device: str = "cpu") -> ShowerSource:
    """A ``ShowerGenerator`` nn.Module (``fastshower.models``): noise from a seeded torch.Generator."""
    import torch

    module = module.to(device).eval()

    def source(primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        gen = torch.Generator(device=device).manual_seed(int(seed))
        e = torch.as_tensor(np.asarray(primary_energy, np.float32), device=device)
        a = torch.as_tensor(np.asarray(incident_angle, np.float32), device=device)
        with torch.no_grad():
            noise = module.sample_noise(len(e), generator=gen, device=device)
            return module(e, a, noise).float().cpu().numpy()

    source.description = f"module {getattr(module, 'name', type(module).__name__)}"  # type: ignore[attr-defined]
    return source


def onnx_source(path: str | Path, noise_dim: int | None = None) -> ShowerSource:
    """An ONNX model exported by ``fastshower.infer.onnx_export`` (inputs primary_energy,
    incident_angle, noise; output showers in GeV)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    if noise_dim is None:
        noise_dim = int(inputs["noise"].shape[-1])

    def source(primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = len(primary_energy)
        feed = {"primary_energy": np.asarray(primary_energy, np.float32),
                "incident_angle": np.asarray(incident_angle, np.float32),
                "noise": rng.standard_normal((n, noise_dim), dtype=np.float32)}
        return session.run(None, feed)[0]

    source.description = f"onnx {path}"  # type: ignore[attr-defined]
    return source


def resolve_source(model: str, geometry: Geometry | str, particle: str = "e-",
                   entry_convention: str = "gflash") -> ShowerSource:
    """``gflash`` -> :func:`gflash_source`; ``*.onnx`` -> :func:`onnx_source`; otherwise a model
    name or weights path for :func:`generator_source`. Models get ``entry_convention`` (default
    ``gflash``: the convention of the project's training data; ``centre`` for showers centred on the
    entry point)."""
    if model == "gflash":
        return gflash_source(geometry, "gamma" if particle == "gamma" else "e-")
    if str(model).endswith(".onnx"):
        if not Path(model).exists():
            raise FileNotFoundError(f"ONNX model not found: {model}")
        return with_entry_offset(onnx_source(model), geometry, entry_convention)
    return with_entry_offset(generator_source(model, geometry), geometry, entry_convention)


def call_source(source: ShowerSource, geometry: Geometry, primary_energy: np.ndarray,
                incident_angle: np.ndarray, seed: int) -> np.ndarray:
    """Call ``source`` and check what it returns: float array ``(m, *geometry.shape)``."""
    out = np.asarray(source(primary_energy, incident_angle, seed))
    if out.ndim != 4 or out.shape[0] != len(primary_energy) or tuple(out.shape[1:]) != geometry.shape:
        raise ValueError(f"shower source returned shape {out.shape}, expected ({len(primary_energy)}, "
                         f"{', '.join(map(str, geometry.shape))}) for geometry {geometry.name!r}")
    return out
