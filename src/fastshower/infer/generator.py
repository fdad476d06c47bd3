"""The generation API: a trained generator, loaded once, producing showers in the shared convention.

``Generator.load(name_or_path)`` takes a shipped model name (``gan3d_clic25``), a saved stem /
``.json`` / ``.safetensors`` (``fastshower.models.registry``) or an exported ``.onnx`` file (ONNX
Runtime back-end); :meth:`Generator.from_module` wraps a network in memory. ``generate`` returns a
:class:`~fastshower.showers.ShowerSet` (float32 GeV per cell, conditions in GeV and rad);
``generate_to_file`` streams batches into an HDF5 file with constant memory.

A Generator is a back-end (:mod:`fastshower.infer.backends`: torch or ONNX Runtime, which runs a
batch) plus the one noise convention: the noise comes from a ``torch.Generator`` on the CPU seeded
with ``seed`` (drawn batch after batch, then moved to the device), so the same seed, conditions and
batch size give the same showers on every back-end and device up to floating-point rounding.
"""

from __future__ import annotations

import math
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastshower.geometry import Geometry, load_geometry
from fastshower.infer.backends import PRECISIONS, Backend, OnnxBackend, TorchBackend, draw_noise, noise_rng
from fastshower.models.base import ShowerGenerator
from fastshower.showers import ShowerSet

BACKENDS = ("torch", "onnx")
#: Relative slack on the trained energy range and absolute slack on the angle range (rad).
ENERGY_SLACK = 1e-6
ANGLE_SLACK_RAD = 1e-6
#: Showers per back-end call of :meth:`Generator.generate` unless told otherwise.
DEFAULT_BATCH_SIZE = 256


class Generator:
    """A loaded shower generator: a back-end (``engine``) plus the noise convention. Build with
    :meth:`load` or :meth:`from_module`.

    Attributes: ``name`` (model), ``geometry`` (:class:`~fastshower.geometry.Geometry`),
    ``noise_dim``, ``energy_range_gev``, ``angle_range_rad``, ``engine`` (the
    :class:`~fastshower.infer.backends.Backend`), and from it ``device``, ``precision``,
    ``backend`` (``torch`` or ``onnx``), ``module`` (the torch network; None on ONNX) and
    ``session`` (ONNX Runtime; None on torch).
    """

    def __init__(self, engine: Backend, *, name: str, geometry: Geometry, noise_dim: int,
                 energy_range_gev: tuple[float, float], angle_range_rad: tuple[float, float],
                 allow_extrapolation: bool = False) -> None:
        self.engine = engine
        self.name = name
        self.geometry = geometry
        self.noise_dim = int(noise_dim)
        self.energy_range_gev = tuple(float(v) for v in energy_range_gev)
        self.angle_range_rad = tuple(float(v) for v in angle_range_rad)
        self.allow_extrapolation = allow_extrapolation

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def module(self) -> torch.nn.Module | None:
        return getattr(self.engine, "module", None)

    @property
    def session(self) -> Any:
        return getattr(self.engine, "session", None)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_module(cls, module: ShowerGenerator, device: str | torch.device = "cpu", precision: str = "fp32",
                    allow_extrapolation: bool = False) -> Generator:
        """A generator around a ``ShowerGenerator`` network in memory (e.g. a freshly built or
        training one): moved to ``device``; the caller sets eval/train mode."""
        dev = _device(device)
        return cls(TorchBackend(module.to(dev), dev, precision), name=module.name,
                   geometry=module.geometry, noise_dim=module.noise_dim,
                   energy_range_gev=module.energy_range_gev, angle_range_rad=module.angle_range_rad,
                   allow_extrapolation=allow_extrapolation)

    @classmethod
    def load(cls, name_or_path: str | Path, device: str = "cpu", precision: str = "fp32", backend: str = "torch",
             threads: int | None = None, allow_extrapolation: bool = False,
             geometry: Geometry | None = None, fold: bool = True, channels_last: bool | None = None,
             batch1_trace: bool = True) -> Generator:
        """Load a generator.

        ``device``: ``cpu`` or ``cuda[:N]``. ``precision``: ``fp32``, ``bf16`` or ``fp16`` (torch
        back-end; the network runs in that precision, the post-processing to GeV in fp32); the
        ONNX back-end runs the file's own precision (``fp32``, or ``fp16`` / ``int8`` files written
        by ``fastshower quantize``): ask for ``fp32`` or that precision.
        ``backend``: ``torch`` or ``onnx`` (a ``.onnx`` path always uses ONNX Runtime; a model
        name with ``onnx`` is exported to a temporary file first). ``threads``: intra-op threads
        (torch: ``torch.set_num_threads``, process-wide; ONNX: the session's own).
        ``allow_extrapolation``: conditions outside the trained range give a warning, not an error.
        ``geometry``: only for an ``.onnx`` file without fastshower metadata (a foreign export with
        the same three inputs and output): the geometry it generates for, whose ranges it gets.
        The name is resolved by :func:`fastshower.models.registry.resolve`.
        ``fold`` (default): run the network after :func:`fastshower.infer.fold.fold_generator`
        (same function, fewer FLOPs; the weights on disk are unchanged); a model name on the ONNX
        back-end is exported folded too. ``channels_last`` (torch back-end; None: with ``fold`` on
        the CPU): run the folded network in channels-last memory layout
        (:func:`fastshower.infer.fold.channels_last`; same values, faster oneDNN kernels).
        ``batch1_trace`` (torch, fp32, CPU): batch-1 calls run a frozen TorchScript trace, checked
        against the eager network at its first call (:class:`~fastshower.infer.backends.TorchBackend`).
        """
        from fastshower.models.registry import load_generator, resolve

        if precision not in PRECISIONS and precision != "int8":
            raise ValueError(f"unknown precision {precision!r}; expected {', '.join(PRECISIONS)} (int8: .onnx files)")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected {', '.join(BACKENDS)}")
        dev = _device(device)
        found = resolve(name_or_path, untrained=False)
        assert found.path is not None  # only untrained names have no path
        if found.kind == "onnx":
            backend = "onnx"
        if backend == "onnx":
            return cls._load_onnx(found.path, dev, precision, threads, allow_extrapolation, geometry, fold)
        if precision == "int8":
            raise ValueError(
                "int8 generators run on the onnx backend: make an int8 .onnx file with fastshower quantize")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        module = load_generator(found.path, device=dev)
        if fold:
            from fastshower.infer.fold import fold_generator

            module = fold_generator(module)
        if channels_last if channels_last is not None else (fold and dev.type == "cpu"):
            from fastshower.infer.fold import channels_last as to_channels_last

            module = to_channels_last(module)
        if precision != "fp32":
            _check_precision(dev, precision)
            module = module.to(PRECISIONS[precision])
        engine = TorchBackend(module.to(dev), dev, precision, batch1_trace=batch1_trace)
        return cls(engine, name=module.name, geometry=module.geometry, noise_dim=module.noise_dim,
                   energy_range_gev=module.energy_range_gev, angle_range_rad=module.angle_range_rad,
                   allow_extrapolation=allow_extrapolation)

    @classmethod
    def _load_onnx(cls, path: Path, dev, precision, threads, allow_extrapolation, geometry=None,
                   fold: bool = True) -> Generator:
        from fastshower.infer.onnx_export import export_onnx, read_metadata

        foreign: Geometry | None = None
        if path.suffix != ".onnx":  # a saved or shipped model: export it first
            with tempfile.TemporaryDirectory(prefix="fastshower-onnx-") as tmp:
                onnx_path = Path(tmp) / "generator.onnx"
                export_onnx(str(path), onnx_path, check=False, fold=fold)
                meta = read_metadata(onnx_path)
                engine = OnnxBackend.open(onnx_path, dev, threads, meta.get("precision", "fp32"))
        else:
            try:
                meta = read_metadata(path)
            except ValueError:
                if geometry is None:
                    raise
                foreign = geometry
                meta = _foreign_metadata(path, geometry)
            engine = OnnxBackend.open(path, dev, threads, meta.get("precision", "fp32"))
            if "noise_dim" not in meta:
                meta["noise_dim"] = int(engine.session.get_inputs()[engine.input_names.index("noise")].shape[-1])
        if precision not in ("fp32", engine.precision):
            raise ValueError(f"the onnx backend runs the file's own precision ({engine.precision}); ask for fp32 "
                             f"(the default) or {engine.precision}, not {precision} (other files: fastshower quantize)")
        # the file names its geometry (a preset); a foreign file's is the one given
        geo = foreign if foreign is not None else load_geometry(meta["geometry"])
        return cls(engine, name=meta["model"], geometry=geo, noise_dim=meta["noise_dim"],
                   energy_range_gev=meta["energy_range_gev"], angle_range_rad=meta["angle_range_rad"],
                   allow_extrapolation=allow_extrapolation)

    # ------------------------------------------------------------------------------ conditions
    def check_conditions(self, primary_energy: np.ndarray, incident_angle: np.ndarray) -> None:
        """ValueError (or, with ``allow_extrapolation``, a warning) when a primary energy (GeV) or
        incident angle (rad) lies outside the model's trained range."""
        problems = []
        e_lo, e_hi = self.energy_range_gev
        if primary_energy.size and (primary_energy.min() < e_lo * (1 - ENERGY_SLACK)
                                    or primary_energy.max() > e_hi * (1 + ENERGY_SLACK)):
            problems.append(f"primary energy {primary_energy.min():.4g}-{primary_energy.max():.4g} GeV outside "
                            f"the trained range {e_lo:g}-{e_hi:g} GeV")
        a_lo, a_hi = self.angle_range_rad
        if incident_angle.size and (incident_angle.min() < a_lo - ANGLE_SLACK_RAD
                                    or incident_angle.max() > a_hi + ANGLE_SLACK_RAD):
            problems.append(f"incident angle {math.degrees(incident_angle.min()):.4g}-"
                            f"{math.degrees(incident_angle.max()):.4g} deg outside the trained range "
                            f"{math.degrees(a_lo):.4g}-{math.degrees(a_hi):.4g} deg")
        if not np.all(primary_energy > 0):
            raise ValueError("primary energy must be positive (GeV)")
        if a_lo == a_hi and incident_angle.size and np.any(np.abs(incident_angle - a_lo) > ANGLE_SLACK_RAD):
            # a fixed-angle model does not take the angle: its showers would be mislabelled, not extrapolated
            raise ValueError(f"{self.name} is trained at the fixed angle {math.degrees(a_lo):.4g} deg only and "
                             f"cannot make showers at {math.degrees(incident_angle.min()):.4g}-"
                             f"{math.degrees(incident_angle.max()):.4g} deg (not an extrapolation; "
                             f"--allow-extrapolation does not apply)")
        if problems:
            message = f"{self.name}: " + "; ".join(problems)
            if not self.allow_extrapolation:
                raise ValueError(message + " (allow_extrapolation / --allow-extrapolation to go on)")
            warnings.warn(message + ": extrapolating", UserWarning, stacklevel=3)

    def _conditions(self, primary_energy, incident_angle, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        e = np.atleast_1d(np.asarray(primary_energy, dtype=np.float64))
        a = np.atleast_1d(np.asarray(incident_angle, dtype=np.float64))
        if e.ndim != 1 or a.ndim != 1:
            raise ValueError("primary_energy and incident_angle must be scalars or 1-d arrays")
        sizes = {len(x) for x in (e, a) if len(x) != 1}
        if n is not None:
            sizes.add(int(n))
        if len(sizes) > 1:
            raise ValueError(f"inconsistent numbers of showers: {sorted(sizes)} (primary_energy, incident_angle, n)")
        count = sizes.pop() if sizes else 1
        if count < 0:
            raise ValueError(f"n must be >= 0, got {count}")
        e, a = np.broadcast_to(e, (count,)).copy(), np.broadcast_to(a, (count,)).copy()
        self.check_conditions(e, a)
        return e, a

    # ------------------------------------------------------------------------------ generation
    def run_batch(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        """One batch on the back-end, no checks: float32 ``(B, *shape)`` showers in GeV for energies
        (GeV), angles (rad) and ``(B, noise_dim)`` CPU float32 noise."""
        return self.engine.run(primary_energy, incident_angle, noise)

    def iter_batches(self, primary_energy, incident_angle, n: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                     seed: int | None = None) -> Iterator[ShowerSet]:
        """:meth:`generate` batch by batch (constant memory)."""
        e, a = self._conditions(primary_energy, incident_angle, n)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        return self._batches(e, a, batch_size, seed)

    def _batches(self, e: np.ndarray, a: np.ndarray, batch_size: int, seed: int) -> Iterator[ShowerSet]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = noise_rng(seed)
        attrs = self._provenance(seed)
        for start in range(0, len(e), batch_size):
            stop = min(start + batch_size, len(e))
            noise = draw_noise(rng, stop - start, self.noise_dim)
            showers = self.run_batch(e[start:stop], a[start:stop], noise)
            yield ShowerSet(showers, e[start:stop], a[start:stop], self.geometry, dict(attrs))

    def _provenance(self, seed: int) -> dict[str, Any]:
        return {"simulator": f"fastshower:{self.name}", "model": self.name, "seed": seed, "backend": self.backend,
                "precision": self.precision, "device": str(self.device)}

    def generate_arrays(self, primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int,
                        batch_size: int = DEFAULT_BATCH_SIZE, check_range: bool = True) -> np.ndarray:
        """The showers of :meth:`generate` for 1-d arrays of conditions, as one float32 array
        ``(n, *shape)``; ``check_range=False`` skips the trained-range check (e.g. an untrained
        network in a test)."""
        e = np.atleast_1d(np.asarray(primary_energy, dtype=np.float64))
        a = np.atleast_1d(np.asarray(incident_angle, dtype=np.float64))
        if e.shape != a.shape or e.ndim != 1:
            raise ValueError(f"primary_energy and incident_angle must be 1-d arrays of one length, got "
                             f"{e.shape} and {a.shape}")
        if check_range:
            self.check_conditions(e, a)
        parts = [part.showers for part in self._batches(e, a, batch_size, int(seed))]
        return np.concatenate(parts) if parts else np.zeros((0, *self.geometry.shape), np.float32)

    def generate(self, primary_energy, incident_angle, n: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 seed: int | None = None) -> ShowerSet:
        """Showers for primary energies (GeV) and incident angles (rad), scalars or 1-d arrays; ``n``
        repeats scalars. ``seed`` None draws one (recorded in ``attrs["seed"]``)."""
        parts = list(self.iter_batches(primary_energy, incident_angle, n, batch_size, seed))
        if not parts:
            return ShowerSet(np.zeros((0, *self.geometry.shape), np.float32), [], [], self.geometry,  # type: ignore[arg-type]
                             {"model": self.name})
        return ShowerSet.concatenate(parts)

    def generate_to_file(self, path: str | Path, primary_energy, incident_angle, n: int | None = None,
                         format: str = "native", batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = None,
                         progress: bool = False, overwrite: bool = True) -> int:
        """Stream showers into ``path`` (HDF5, ``native``, ``3dgan`` or ``calochallenge``), batch
        by batch with constant memory; the file appears only when complete (``overwrite=False``:
        an existing file is refused). Returns the count."""
        from fastshower.data import ShowerWriter

        e, a = self._conditions(primary_energy, incident_angle, n)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        attrs = self._provenance(seed)
        geometry = self.geometry
        (e_lo, e_hi), (a_lo, a_hi) = geometry.energy_range_gev, geometry.angle_range_rad
        if len(e) and (e.min() < e_lo or e.max() > e_hi or a.min() < a_lo or a.max() > a_hi):
            # extrapolated showers: the file's geometry records the ranges it really covers
            geometry = geometry.model_copy(update={
                "energy_range_gev": (min(e_lo, float(e.min())), max(e_hi, float(e.max()))),
                "angle_range_rad": (min(a_lo, float(a.min())), max(a_hi, float(a.max())))})
            attrs["extrapolated"] = True
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(e), unit="shower", desc=f"generate {self.name}")
        try:
            with ShowerWriter(path, geometry, format=format, attrs=attrs, overwrite=overwrite) as writer:
                for part in self._batches(e, a, batch_size, seed):
                    writer.write(part)
                    if bar is not None:
                        bar.update(len(part))
        finally:  # an error message then starts on its own line
            if bar is not None:
                bar.close()
        return writer.n_events


def _foreign_metadata(path: Path, geometry: Geometry) -> dict[str, Any]:
    """Metadata for an ONNX file with the exporter's interface but without its metadata: the name
    of the file, the geometry given and its ranges (``noise_dim`` is read from the session)."""
    return {"model": path.stem, "geometry": geometry.name, "energy_range_gev": geometry.energy_range_gev,
            "angle_range_rad": geometry.angle_range_rad}


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device} asked for, but torch sees no CUDA GPU here")
    elif dev.type != "cpu":
        raise ValueError(f"unknown device {device!r}; expected cpu or cuda[:N]")
    return dev


def _check_precision(dev: torch.device, precision: str) -> None:
    """Clear error when ``precision`` cannot run on ``dev`` (a 3-d convolution probe)."""
    dtype = PRECISIONS[precision]
    if dev.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"{precision} is not supported on {torch.cuda.get_device_name(dev)}")
    try:
        with torch.inference_mode():
            conv = torch.nn.Conv3d(1, 1, 3).to(dev, dtype)
            conv(torch.ones(1, 1, 3, 3, 3, device=dev, dtype=dtype))
    except (RuntimeError, NotImplementedError) as exc:
        raise RuntimeError(f"{precision} 3-d convolutions are not supported on {dev.type} by this torch "
                           f"({torch.__version__}): {str(exc).splitlines()[0]}") from None
