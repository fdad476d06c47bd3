"""Model registry: name -> builders, default configuration, geometry and published sizes; saving and
loading generators as safetensors + JSON (never pickles).

A saved generator is two files with a common stem: ``<stem>.safetensors`` (the state dict,
BatchNorm moving statistics included) and ``<stem>.json`` (the model card: model name, config,
geometry, condition ranges, preprocessing, parameter counts, the caller's ``metadata`` and
``weights_sha256``, the checksum of the weights file, verified at load: a weights file changed after
saving, or truncated, is refused with a one-line :class:`~fastshower.errors.DataFileError`).
Weights shipped with the package live in ``fastshower/weights/<name>.{safetensors,json}`` and are
found by name: ``load_generator("conv2d_g1")``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from fastshower.errors import ChecksumError, DataFileError, UserInputError, brief, validation_details
from fastshower.fileio import atomic_path, file_sha256
from fastshower.geometry import Geometry, load_geometry
from fastshower.models.base import ModelConfig, ShowerDiscriminator, ShowerGenerator
from fastshower.models.conv2d import (
    Conv2dConfig,
    Conv2dG1Discriminator,
    Conv2dG1Generator,
    Conv2dG2Discriminator,
    Conv2dG2Generator,
    Conv2dG3Discriminator,
    Conv2dG3Generator,
)
from fastshower.models.gan3d import (
    Gan3dClic25Config,
    Gan3dClic25Discriminator,
    Gan3dClic25Generator,
    Gan3dClic51Config,
    Gan3dClic51Discriminator,
    Gan3dClic51Generator,
)

#: Folder of the weights shipped with the package.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: ``format`` field of the model-card JSON.
CARD_FORMAT = "fastshower-generator/1"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. ``published_parameters``: sizes of the published networks at
    ``width=1`` in the Keras convention (BN moving statistics counted), keys ``generator`` and
    ``discriminator``; ``source`` says where the figures come from."""

    name: str
    description: str
    geometry: Geometry
    config_class: type[ModelConfig]
    generator: Callable[[Any], ShowerGenerator]
    discriminator: Callable[[Any], ShowerDiscriminator]
    published_parameters: dict[str, int]
    source: str

    def default_config(self) -> ModelConfig:
        return self.config_class()


def _spec(generator: type[ShowerGenerator], discriminator: type[ShowerDiscriminator],
          config_class: type[ModelConfig], published: tuple[int, int], description: str, source: str) -> ModelSpec:
    """A spec named after, and on the geometry of, its generator class; ``published`` = (G, D) sizes."""
    return ModelSpec(name=generator.name, description=description, geometry=generator.geometry,
                     config_class=config_class, generator=generator, discriminator=discriminator,
                     published_parameters={"generator": published[0], "discriminator": published[1]},
                     source=source)


#: Where the published sizes come from: the Keras 3DGAN code (svalleco/3Dgan@Anglegan) and F. Rehm's
#: TF2/Keras Conv2D code (svalleco/3Dgan@frehm/Conv2D); the Conv2D models share their conditioning.
_KERAS_3DGAN = "computed from the Keras layer list (svalleco/3Dgan@Anglegan keras/{})"
_CONV2D_TF2 = "computed from the TF2/Keras code ({})"
_CONV2D = "Conv2D GAN {} (Rehm), 25x25x25: latent 200, (E/100)*noise, cells in GeV"

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    _spec(Gan3dClic25Generator, Gan3dClic25Discriminator, Gan3dClic25Config, (872_948, 73_450),
          "3DGAN, fixed angle, 25x25x25 (Keras EcalEnergyGan): latent 200, (E/100)*noise, cells x100",
          _KERAS_3DGAN.format("EcalEnergyGan.py")),
    _spec(Gan3dClic51Generator, Gan3dClic51Discriminator, Gan3dClic51Config, (1_365_047, 87_402),
          "3DGAN, variable angle 60-120 deg, 51x51x25 (Keras AngleArch3dGAN): latent [E/100, theta, "
          "254 noise], cells (50 x GeV)^0.85", _KERAS_3DGAN.format("AngleArch3dGAN.py")),
    _spec(Conv2dG1Generator, Conv2dG1Discriminator, Conv2dConfig, (2_055_324, 714_114),
          _CONV2D.format("G1, three branches"),
          _CONV2D_TF2.format("svalleco/3Dgan@frehm/Conv2D Conv2D/Models_m4_1_ReLU.py")),
    _spec(Conv2dG2Generator, Conv2dG2Discriminator, Conv2dConfig, (2_131_000, 714_114),
          _CONV2D.format("G2, 25 branches"),
          _CONV2D_TF2.format("Conv2D_25_branches/PTF_m1_25path.py") + "; reference note: ~2.13 M"),
    _spec(Conv2dG3Generator, Conv2dG3Discriminator, Conv2dConfig, (2_397_022, 902_658),
          _CONV2D.format("G3, single branch with residual sums"),
          _CONV2D_TF2.format("Conv2D_1_branch_residual/PTF_m1_2_fullK_1path_residual.py")
          + "; reference note: G ~2.40 M; its '~714 k' D figure is the shared design without the G3 extra blocks"),
]}


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; ValueError listing the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def make_config(name: str, **config_overrides: Any) -> ModelConfig:
    """The config of model ``name`` with ``config_overrides`` applied (validated; an invalid value is
    a :class:`~fastshower.errors.UserInputError` naming each field and why)."""
    from pydantic import ValidationError

    try:
        return get_spec(name).config_class(**config_overrides)
    except ValidationError as exc:
        raise UserInputError(f"model {name!r} config: {validation_details(exc)}") from None


def build_generator(name: str, **config_overrides: Any) -> ShowerGenerator:
    """A freshly initialised generator of model ``name`` (e.g. ``build_generator("gan3d_clic25", width=0.25)``)."""
    return get_spec(name).generator(make_config(name, **config_overrides))


def build_discriminator(name: str, **config_overrides: Any) -> ShowerDiscriminator:
    """A freshly initialised discriminator of model ``name``; takes the same config as the generator."""
    return get_spec(name).discriminator(make_config(name, **config_overrides))


def save_generator(generator: ShowerGenerator, path_stem: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (each atomically; the JSON last, so a card
    always has its weights). ``metadata`` (JSON-serialisable) is stored under ``"metadata"``; the
    card records ``weights_sha256``, the checksum of the weights file. Returns the JSON path."""
    stem = _stem(Path(path_stem))
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"model": generator.name, "format": CARD_FORMAT})
        digest = file_sha256(tmp)
    card = {"format": CARD_FORMAT, **generator.metadata(), "metadata": dict(metadata or {}), "weights_sha256": digest}
    json_path = stem.with_suffix(".json")
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return json_path



def verify_weights(card: dict[str, Any], weights: Path) -> None:
    """:class:`~fastshower.errors.ChecksumError` when ``weights`` does not match the card's
    ``weights_sha256`` (cards written before checksums were recorded have none: not checked)."""
    expected = card.get("weights_sha256")
    if expected is None:
        return
    found = file_sha256(weights)
    if found != expected:
        raise ChecksumError(f"{weights} does not match its model card (sha256 {found[:12]}..., card "
                            f"{str(expected)[:12]}...): the weights were changed or damaged after saving")


def read_safetensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` on the CPU; a truncated or foreign file is a one-line
    :class:`~fastshower.errors.DataFileError`."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise DataFileError(f"{path} is not a readable {what} ({brief(str(exc), 0)})") from None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``; mismatching tensors are a :class:`~fastshower.errors.DataFileError`
    that names them (missing, unexpected, shape mismatches: a few lines at most)."""
    missing, unexpected, shapes = [], [], []
    own = module.state_dict()
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            shapes.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)} in the model")
    missing = [key for key in own if key not in state]
    if missing or unexpected or shapes:
        def listed(what: str, items: list[str]) -> str:
            shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            return f"{len(items)} {what}: {shown}"

        details = [listed(w, i) for w, i in (("size mismatches", shapes), ("missing tensors", missing),
                                             ("unexpected tensors", unexpected)) if i]
        raise DataFileError(f"{source} does not fit {type(module).__name__} (another model or config?):\n"
                            + "\n".join(details))
    module.load_state_dict(state)


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def list_shipped() -> list[str]:
    """Names of the generators shipped with the package (``fastshower/weights/*.json`` with weights)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if p.with_suffix(".safetensors").is_file())


#: What :func:`resolve` can find.
ModelKind = Literal["shipped", "saved", "onnx", "untrained"]


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name or path stands for (:func:`resolve`). ``kind``: ``shipped`` (weights in
    the package), ``saved`` (a saved stem / .json / .safetensors), ``onnx`` (an exported file) or
    ``untrained`` (a registry name without weights, optionally ``name@width``: a freshly
    initialised network, for timing only). ``path``: the stem (shipped, saved), the .onnx file, or
    None (untrained). ``name``: the registry model; ``geometry``: its geometry (None when an ONNX
    file or card does not name one); ``width``:
    the untrained network's width (1.0 unless ``@width``), else None."""

    kind: ModelKind
    path: Path | None
    name: str
    geometry: Geometry | None
    width: float | None = None


def resolve(name_or_path: str | Path, untrained: bool = True) -> ResolvedModel:
    """The one place a model name or path is resolved, in this order: an ``.onnx`` path (the file
    must exist), a saved stem (``<stem>.json``), a shipped name (``fastshower/weights``), and with
    ``untrained`` a registry name or ``name@width``. FileNotFoundError naming what was looked for
    otherwise."""
    text = str(name_or_path)
    if text.endswith(".onnx"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        meta = _onnx_metadata(path)
        return ResolvedModel("onnx", path, meta.get("model", path.stem), _named_geometry(meta.get("geometry")))
    stem = _stem(Path(name_or_path))
    candidates: tuple[tuple[ModelKind, Path], ...] = (("saved", stem), ("shipped", WEIGHTS_DIR / text))
    for kind, candidate in candidates:
        if candidate.with_suffix(".json").is_file():
            card = _read_card_file(candidate)
            return ResolvedModel(kind, candidate, card["model"], _named_geometry(card.get("geometry")))
    name, _, width = text.partition("@")
    if untrained and name in MODELS:
        try:
            w = float(width or 1.0)
        except ValueError:
            raise ValueError(f"bad width in {text!r}; expected name@width, e.g. {name}@0.5") from None
        return ResolvedModel("untrained", None, name, MODELS[name].geometry, w)
    names = list_shipped()
    raise FileNotFoundError(
        f"no saved generator at {stem}.json and no shipped generator named {text!r}; "
        f"shipped: {', '.join(names) if names else 'none'}")


def _named_geometry(name: str | None) -> Geometry | None:
    """The geometry a model card or ONNX file names (files carry names; the library, objects)."""
    return load_geometry(name) if name else None


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def resolve_generator_path(path_stem_or_name: str | Path) -> Path:
    """The stem of a saved or shipped generator (:func:`resolve` without ONNX files or untrained
    names). FileNotFoundError when neither exists."""
    found = resolve(path_stem_or_name, untrained=False)
    if found.kind == "onnx" or found.path is None:
        raise FileNotFoundError(f"{path_stem_or_name} is an ONNX file, not a saved generator (safetensors + JSON)")
    return found.path


def read_card(path_stem_or_name: str | Path) -> dict[str, Any]:
    """The model card (JSON) of a saved or shipped generator."""
    return _read_card_file(resolve_generator_path(path_stem_or_name))


def _read_card_file(stem: Path) -> dict[str, Any]:
    try:
        card = json.loads(stem.with_suffix(".json").read_text())
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{stem}.json is not a readable model card ({exc})") from None
    if not isinstance(card, dict) or "model" not in card or "config" not in card:
        raise DataFileError(f"{stem}.json is not a fastshower generator card (no 'model' / 'config')")
    return card


def average_generators(stems: Sequence[str | Path]) -> ShowerGenerator:
    """The generator whose weights are the mean of those of ``stems`` (saved generators of one
    architecture and configuration, e.g. the checkpoints of one training run at successive steps):
    weight averaging over the last checkpoints damps the step-to-step oscillation of GAN training
    (Yazici et al., "The unusual effectiveness of averaging in GAN training", ICLR 2019). Floating
    tensors are averaged, except the output scale, which must agree; integer buffers (BatchNorm's
    batch counters) are taken from the last. Returns it in eval mode."""
    if not stems:
        raise ValueError("average_generators needs at least one saved generator")
    generators = [load_generator(stem) for stem in stems]
    first = generators[0]
    configs = {json.dumps(g.config.model_dump(), sort_keys=True) for g in generators}
    if len({g.name for g in generators}) > 1 or len(configs) > 1:
        raise ValueError("average_generators: the generators differ in model or configuration")
    states = [g.state_dict() for g in generators]
    averaged = {}
    for key, value in states[0].items():
        if key.rsplit(".", 1)[-1] == "output_scale":
            if any(not torch.equal(state[key], value) for state in states[1:]):
                raise ValueError(f"average_generators: {key} differs between the generators")
            averaged[key] = value
        elif value.is_floating_point():
            averaged[key] = torch.stack([state[key].float() for state in states]).mean(dim=0).to(value.dtype)
        else:
            averaged[key] = states[-1][key]
    first.load_state_dict(averaged)
    return first.eval()


def load_generator(path_stem_or_file: str | Path, device: str | torch.device = "cpu") -> ShowerGenerator:
    """Rebuild a generator from its JSON card and load its safetensors weights, in eval mode (the
    generator's BatchNorm layers use their moving statistics, as Keras at inference)."""
    stem = resolve_generator_path(path_stem_or_file)
    card = read_card(stem)
    generator = build_generator(card["model"], **card["config"])
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise FileNotFoundError(f"{stem}.json has no weights file {weights.name}")
    verify_weights(card, weights)
    load_state(generator, read_safetensors(weights), weights)
    return generator.to(device).eval()
