"""ONNX export of a shower generator, and the ONNX Runtime session that runs it.

The exported graph (the contract a C++ / Geant4 application relies on; see docs/inference.md):

- inputs ``primary_energy`` [B] float32 in GeV, ``incident_angle`` [B] float32 polar angle in rad
  (pi/2 = normal incidence; fixed-angle models accept it and ignore it), ``noise``
  [B, noise_dim] float32 standard-normal;
- output ``showers`` [B, nx, ny, nz] float32, energy deposited in the active material per cell in
  **GeV** (the model's post-processing, e.g. ``x ** (1/0.85) / 50``, is inside the graph);
- the batch dimension B is dynamic;
- ``metadata_props``: ``model``, ``geometry``, ``shape``, ``noise_dim``, ``energy_range_gev``,
  ``angle_range_rad`` (JSON lists), ``conditions_on_angle``, ``opset``, ``units``,
  ``fastshower_version``.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastshower
from fastshower.fileio import atomic_path
# the graph's input and output names and the one ONNX Runtime session factory live with the back-ends
from fastshower.infer.backends import INPUT_NAMES, OUTPUT_NAME, open_session  # noqa: F401
from fastshower.models.base import ShowerGenerator

#: Tolerances of the export check: relative error of each shower's summed energy, and elementwise
#: ``|onnx - torch| <= ELEMENT_ATOL_FRACTION * max|torch| + RTOL * |torch|``.
RTOL = 1e-4
ELEMENT_ATOL_FRACTION = 1e-5


def _as_module(generator: Any) -> ShowerGenerator:
    """A float32 CPU copy of the network behind ``generator`` (a ShowerGenerator, an
    :class:`~fastshower.infer.generator.Generator` on the torch back-end, or a model name / path)."""
    if isinstance(generator, (str, Path)):
        from fastshower.models.registry import load_generator

        return load_generator(generator)
    module = getattr(generator, "module", generator)
    if not isinstance(module, ShowerGenerator):
        raise ValueError(f"cannot export {type(generator).__name__}: need a ShowerGenerator, a torch-backend "
                         f"Generator or a model name/path")
    return copy.deepcopy(module).float().cpu().eval()


def check_inputs(module: ShowerGenerator, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` float32 input sets spanning the model's trained range (energies log-spaced, GeV;
    angles evenly spaced, rad; seeded standard-normal noise)."""
    e_lo, e_hi = module.energy_range_gev
    a_lo, a_hi = module.angle_range_rad
    rng = np.random.default_rng(seed)
    return {"primary_energy": np.geomspace(e_lo, e_hi, n).astype(np.float32),
            "incident_angle": np.linspace(a_lo, a_hi, n).astype(np.float32),
            "noise": rng.standard_normal((n, module.noise_dim)).astype(np.float32)}


def _metadata(module: ShowerGenerator, opset: int) -> dict[str, str]:
    return {"model": module.name, "geometry": module.geometry, "shape": json.dumps(list(module.shape)),
            "noise_dim": str(module.noise_dim), "energy_range_gev": json.dumps(list(module.energy_range_gev)),
            "angle_range_rad": json.dumps(list(module.angle_range_rad)),
            "conditions_on_angle": str(bool(module.conditions_on_angle)).lower(), "opset": str(opset),
            "units": "inputs: primary_energy GeV, incident_angle rad, noise N(0,1); output: GeV per cell",
            "fastshower_version": fastshower.__version__}


def _restore_inputs(model, module: ShowerGenerator) -> None:
    """Put back graph inputs the tracer dropped because the network ignores them (the angle of a
    fixed-angle model), so every exported generator has the same three inputs."""
    import onnx
    from onnx import TensorProto, helper

    present = {i.name for i in model.graph.input}
    shapes = {"primary_energy": ["batch"], "incident_angle": ["batch"], "noise": ["batch", module.noise_dim]}
    for position, name in enumerate(INPUT_NAMES):
        if name not in present:
            model.graph.input.insert(position, helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]))
    onnx.checker.check_model(model)


def export_onnx(generator: Any, path: str | Path, opset: int = 17, check: bool = True,
                n_check: int = 8, fold: bool = True, form: str = "auto") -> dict[str, Any]:
    """Export ``generator`` to ``path`` (written atomically) and, with ``check``, compare ONNX
    Runtime with PyTorch on ``n_check`` showers over the trained range (same noise).

    ``fold`` (default): export the network after :func:`fastshower.infer.fold.fold_generator`
    (upsampling + convolution as transposed convolutions in ``form``, BatchNorm folded; the same
    function with fewer FLOPs); the check then compares ONNX Runtime with the *unfolded* PyTorch
    model, so it covers the fold and the export together. Metadata ``folded``: what was folded
    (JSON; ``{}`` without ``fold``).

    Returns a dict: ``path``, ``opset``, ``inputs``, ``output``, ``metadata``, ``bytes``,
    ``export_s``, and with ``check`` ``max_rel_err_sum`` (largest relative difference of a
    shower's summed energy), ``max_abs_err`` (GeV, elementwise), ``atol`` (GeV) and ``n_check``.
    ValueError when the check fails (relative error of a sum above 1e-4, or a cell beyond
    ``atol + 1e-4 |torch|`` with ``atol = 1e-5 max|torch|``).
    """
    import onnx

    module = _as_module(generator)
    exported = module
    if fold:
        from fastshower.infer.fold import fold_generator

        exported = fold_generator(module, form=form)
    path = Path(path)
    inputs = check_inputs(module, n_check)
    args = tuple(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)
    t0 = time.perf_counter()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter (constant folding of Slice, ...)
        torch.onnx.export(exported, args, str(tmp), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes={**{k: {0: "batch"} for k in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
        model = onnx.load(str(tmp))
        _restore_inputs(model, module)
        meta = _metadata(module, opset)
        meta["folded"] = json.dumps(getattr(exported, "folded", {}))
        del model.metadata_props[:]
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        model.doc_string = f"fastshower {module.name} shower generator ({module.geometry}), showers in GeV per cell"
        onnx.save(model, str(tmp))
    result: dict[str, Any] = {"path": str(path), "opset": opset, "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
                              "metadata": meta, "bytes": path.stat().st_size,
                              "export_s": time.perf_counter() - t0}
    if check:
        with torch.inference_mode():
            expected = module(*args).numpy()
        got = open_session(path).run([OUTPUT_NAME], inputs)[0]
        result.update(compare_showers(expected, got), n_check=n_check)
        if not result["ok"]:
            path.unlink(missing_ok=True)
            raise ValueError(f"ONNX export of {module.name} disagrees with PyTorch: summed energy rel. error "
                             f"{result['max_rel_err_sum']:.3g}, max cell error {result['max_abs_err']:.3g} GeV "
                             f"(atol {result['atol']:.3g} GeV); file removed")
    return result


def compare_showers(expected: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Agreement of two shower batches (GeV) with the export tolerances: ``max_rel_err_sum``,
    ``max_abs_err`` (GeV), ``atol`` (GeV), ``ok``."""
    sums_e = expected.reshape(len(expected), -1).sum(1, dtype=np.float64)
    sums_g = got.reshape(len(got), -1).sum(1, dtype=np.float64)
    rel_sum = float(np.max(np.abs(sums_g - sums_e) / np.maximum(np.abs(sums_e), 1e-30)))
    diff = np.abs(got.astype(np.float64) - expected)
    atol = ELEMENT_ATOL_FRACTION * float(np.abs(expected).max())
    ok = rel_sum <= RTOL and bool(np.all(diff <= atol + RTOL * np.abs(expected)))
    return {"max_rel_err_sum": rel_sum, "max_abs_err": float(diff.max()), "atol": atol, "ok": ok}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The exporter's metadata of an ONNX generator, decoded: ``model``, ``geometry``, ``shape``
    (list), ``noise_dim`` (int), ``energy_range_gev`` / ``angle_range_rad`` (tuples), ..."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    model = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in ("model", "geometry", "noise_dim", "energy_range_gev", "angle_range_rad") if k not in meta]
    if missing:
        raise ValueError(f"{path} is not a fastshower generator export (metadata lacks {', '.join(missing)})")
    meta["noise_dim"] = int(meta["noise_dim"])
    meta["energy_range_gev"] = tuple(json.loads(meta["energy_range_gev"]))
    meta["angle_range_rad"] = tuple(json.loads(meta["angle_range_rad"]))
    if "shape" in meta:
        meta["shape"] = json.loads(meta["shape"])
    return meta
