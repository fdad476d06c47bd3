"""Start a campaign folder from another one's checkpoint with the minibatch-std feature added to the
discriminator (``--group``: ``minibatch_std_group``, fastshower.models.layers.minibatch_std) and/or
the spread term added to the generator loss (``--spread``: ``recipe.loss_weights.spread``,
fastshower.train.spread; ``--spread-energies``: ``recipe.spread_energies``) and/or the training
energy spectrum changed (``--energy-spectrum``: ``recipe.energy_spectrum``) and/or the generator's
latent widened (``--latent scaled_and_raw``, fastshower.models.conv2d) and/or training files added
(``--extra-train``, paths relative to the new folder, e.g. the low-energy Geant4 showers of
scripts/make_g4_lowe.sh) and/or both learning rates multiplied (``--lr-scale``: a cool-down of a
run whose validation metrics have stopped improving; the recipe's decay schedule goes on from the
scaled rates): the generator, the
discriminator, both optimizers, RNG states and counters are carried over; a new input of the
discriminator's Dense(10) or of the generator's first Dense starts with zero weight (zero Adam first
moment, second moment from its row's mean: ``widen_input``), so that the forked run continues the
source run exactly until the network learns to use the new input.

    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_power/latest \\
        campaigns/conv2d_g1_mbstd --group 4
    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_mbstd/latest \\
        campaigns/conv2d_g1_spread --spread 1
    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_spread3_log/latest \\
        campaigns/conv2d_g1_lowe --energy-spectrum log_uniform
    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_lowe/latest \\
        campaigns/conv2d_g1_latent --latent scaled_and_raw
    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_mixed/latest \\
        campaigns/conv2d_g1_g4lowe --energy-spectrum mixed \\
        --extra-train '../../data/g4-clic25-lowe/train_lowe_*.h5'
    PYTHONPATH=src python campaigns/conv2d_g1/fork.py campaigns/conv2d_g1_g4lowe_ld/latest \\
        campaigns/conv2d_g1_g4lowe_ld_cool --lr-scale 0.2

Writes TARGET/config.yaml (the source config with the option set), TARGET/latest/ and
TARGET/learning_curve.csv (the source's rows up to the fork step); then resume TARGET with run.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

import torch
import yaml
from safetensors.torch import save_file

from fastshower.models import registry
from fastshower.train import checkpoint as ckpt
from fastshower.train.campaign import CURVE, read_curve
from fastshower.train.config import EnergySpectrum

#: the discriminator parameter that gains one input column
HIDDEN_WEIGHT = "hidden.0.weight"
#: the generator parameter that gains the latent's new input columns
DENSE_WEIGHT = "dense.weight"


def widen_columns(tensor: torch.Tensor, columns: int, fill_with_row_mean: bool = False) -> torch.Tensor:
    """``tensor`` (out, in) with ``columns`` columns appended: zeros, or each row's mean."""
    if fill_with_row_mean:
        new = tensor.mean(dim=1, keepdim=True).expand(-1, columns)
    else:
        new = tensor.new_zeros(tensor.shape[0], columns)
    return torch.cat([tensor, new], dim=1)


def widen_input(weights: dict[str, torch.Tensor], module: torch.nn.Module, name: str,
                optimizer_state: dict) -> dict[str, torch.Tensor]:
    """``weights`` with parameter ``name`` widened by zero input columns to ``module``'s shape, and
    its Adam moments in ``optimizer_state`` (in place): first moment 0, second moment the row's mean
    over the old columns. (With a zero second moment, Adam's first updates of the new weights would be
    about 3 lr each whatever their gradient, as the bias correction of a long run is ~1: 17 steps
    of a 201-column fork doubled the validation profile MSE.)"""
    added = module.state_dict()[name].shape[1] - weights[name].shape[1]
    if not added:
        return weights
    moments = optimizer_state["state"][[n for n, _ in module.named_parameters()].index(name)]
    moments["exp_avg"] = widen_columns(moments["exp_avg"], added)
    moments["exp_avg_sq"] = widen_columns(moments["exp_avg_sq"], added, fill_with_row_mean=True)
    return {**weights, name: widen_columns(weights[name], added)}


def fork(source: Path, target: Path, group: int | None = None, spread: float | None = None,
         recipe: dict[str, str] | None = None, latent: str | None = None,
         extra_train: list[str] | None = None, lr_scale: float | None = None) -> int:
    """Write ``target`` (see the module docstring); returns the step it starts from."""
    where, state, meta = ckpt.load_checkpoint(source)
    gen, disc = ckpt.load_weights(where)
    assert disc is not None
    config = yaml.safe_load((source.parent / "config.yaml").read_text())
    run_config = yaml.safe_load(meta["config"])
    model_config = dict(meta["model_config"])
    changes = []
    if group is not None:
        model_config["minibatch_std_group"] = group
        config["model"]["config"]["minibatch_std_group"] = group
        run_config["model"]["config"]["minibatch_std_group"] = group
        changes.append(f"minibatch_std_group {group}")
    if spread is not None:
        config["recipe"].setdefault("loss_weights", {})["spread"] = spread
        run_config["recipe"]["loss_weights"]["spread"] = spread
        changes.append(f"loss_weights.spread {spread}")
    for key, value in (recipe or {}).items():
        config["recipe"][key] = value
        run_config["recipe"][key] = value
        changes.append(f"{key} {value}")
    if latent is not None:
        model_config["latent"] = latent
        config["model"]["config"]["latent"] = latent
        run_config["model"]["config"]["latent"] = latent
        changes.append(f"latent {latent}")
    if extra_train:
        for c, prefix in ((config, ""), (run_config, f"{target}/")):  # the run's config: paths from the cwd
            train = c["data"]["train"]
            c["data"]["train"] = (train if isinstance(train, list) else [train]) + [prefix + p for p in extra_train]
        changes.append(f"training files {', '.join(extra_train)} added")
    if lr_scale is not None:
        rates = {k: run_config["recipe"]["optimizer"][k] * lr_scale for k in ("lr_generator", "lr_discriminator")}
        config["recipe"]["optimizer"] = {**config["recipe"].get("optimizer", {}), **rates}
        run_config["recipe"]["optimizer"].update(rates)
        changes.append(f"learning rates x{lr_scale:g} (generator {rates['lr_generator']:.3g}, "
                       f"discriminator {rates['lr_discriminator']:.3g})")
    discriminator = registry.build_discriminator(meta["model"], **model_config)
    disc = widen_input(disc, discriminator, HIDDEN_WEIGHT, state["optimizer_discriminator"])
    discriminator.load_state_dict(disc)  # strict: everything else has the same shape
    generator = registry.build_generator(meta["model"], **model_config)
    gen = widen_input(gen, generator, DENSE_WEIGHT, state["optimizer_generator"])
    generator.load_state_dict(gen)
    meta = {**meta, "model_config": model_config, "config": yaml.safe_dump(run_config, sort_keys=False)}

    latest = target / "latest"
    if latest.exists():
        raise FileExistsError(f"{latest} exists: the fork would replace a campaign")
    latest.mkdir(parents=True)
    save_file({**{f"generator.{k}": v.contiguous() for k, v in generator.state_dict().items()},
               **{f"discriminator.{k}": v.contiguous() for k, v in discriminator.state_dict().items()}},
              str(latest / ckpt.MODELS_FILE))
    torch.save(state, latest / ckpt.STATE_FILE)
    (latest / ckpt.META_FILE).write_text(json.dumps(meta))
    header = f"# Forked from {source} at step {meta['step']} with {', '.join(changes)} (fork.py).\n"
    (target / "config.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    rows = [r for r in read_curve(source.parent / CURVE) if int(r["step"]) <= meta["step"]]
    lines = (source.parent / CURVE).read_text().splitlines()[: len(rows) + 1]  # header + rows to the fork
    (target / CURVE).write_text("\n".join(lines) + "\n")
    return int(meta["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a campaign's checkpoint folder (e.g. .../latest)")
    parser.add_argument("target", type=Path, help="the new campaign folder")
    parser.add_argument("--group", type=int, default=None, help="minibatch-std group size (showers)")
    parser.add_argument("--spread", type=float, default=None, help="weight of the generator's spread term")
    parser.add_argument("--spread-energies", choices=["batch", "log_uniform"], default=None,
                        help="energies of the spread term's fake showers")
    parser.add_argument("--energy-spectrum", choices=get_args(EnergySpectrum), default=None,
                        help="primary-energy spectrum of the real and fake training showers")
    parser.add_argument("--latent", choices=["scaled", "scaled_and_raw"], default=None,
                        help="the generator's latent (model.config.latent)")
    parser.add_argument("--extra-train", nargs="+", default=None,
                        help="training files or globs to add to data.train (relative to the target folder)")
    parser.add_argument("--lr-scale", type=float, default=None,
                        help="multiply both base learning rates (recipe.optimizer) by this factor")
    args = parser.parse_args()
    recipe = {key: value for key, value in (("spread_energies", args.spread_energies),
                                            ("energy_spectrum", args.energy_spectrum)) if value is not None}
    if args.lr_scale is not None and not args.lr_scale > 0:
        parser.error(f"--lr-scale must be positive, got {args.lr_scale}")
    if args.group is None and args.spread is None and not recipe and args.latent is None and not args.extra_train \
            and args.lr_scale is None:
        parser.error("nothing to change: give --group, --spread, --spread-energies, --energy-spectrum, --latent, "
                     "--extra-train and/or --lr-scale")
    step = fork(args.source, args.target, args.group, args.spread, recipe, args.latent, args.extra_train,
                args.lr_scale)
    print(f"{args.target}: forked at step {step}; resume with campaigns/conv2d_g1/run.py --folder {args.target}")


if __name__ == "__main__":
    main()
