"""The published training recipes as named presets (see docs/training.md and the 3DGAN reference
notes, section 3).

A preset is a plain mapping of :class:`fastshower.train.config.RecipeConfig` fields; a config's
``recipe:`` block names one and overrides any of its fields.

- ``gan3d_clic25``: fixed-angle 25^3 3DGAN (``EcalEnergyTrain.py``): BCE + MAPE(E/100) + MAPE(ECAL
  sum) with weights [2, 0.1, 0.1]; RMSprop lr 1e-3, rho 0.9, eps 1e-7 (Keras defaults) for G and D;
  batch 128; 5% label flips (Keras BitFlip) on D's labels, G trained toward 1 without flips; D real
  and D fake as separate updates, the fake batch made by ``generator.predict`` (inference mode),
  then 2 G updates; fake samples get fresh energies uniform in 10-500 GeV (``uniform(0.1, 5)``) and
  an ECAL-sum target from a fit of the training data; cells below 1e-6 GeV zeroed.
- ``gan3d_clic51``: variable-angle 51x51x25 3DGAN (``AngleTrain3dGAN.py``): weights
  [3, 0.1, 25, 0.1] for (BCE, MAPE(E/100), MAE(angle), MAPE(ECAL sum)); batch 64; fake samples
  reuse the real batch's conditions and ECAL sums; 2 G updates.
- ``conv2d``: the Conv2D generators G1/G2/G3 (``PTF_k_v6_1_ReLU.py``, ``Models_m4_1_ReLU.py``):
  weights [6, 0.2, 0.1]; Adam lr_G 5e-4, lr_D 1e-4; batch 128; labels as ``bit_flip_tf``: real 0.9
  (5% flipped to 0), fake ``zeros * 0.1`` = 0 (5% flipped to 1), generator target 0.9 (5% flipped
  to 0); 1 G update; fake energies uniform in 100-400 GeV for the first two epochs, then 2-500 GeV
  (``uniform(0.02, 5)``); cells below 1e-6 GeV zeroed; the learning rate decays by exp(-0.012) per
  data file (9000 training events = 70 steps of 128) once 81 files (about 4 epochs of 20 files) are
  done, here as exp(-0.012 / 70) per reference step after 81 x 70 = 5670 steps, counted over the
  run; LeakyReLU output head switched to ReLU at epoch index 2 (``ReLU_epoch=3``). The original
  created a new Adam for every file (moments reset); here one Adam runs through.
"""

from __future__ import annotations

from typing import Any

#: The Conv2D learning-rate decay (``l_dec``): exp(-0.012) per data file once 81 files are done;
#: a file is 10 000 events, 90% of them for training, i.e. 70 steps of batch 128.
CONV2D_DECAY_PER_FILE = 0.012
CONV2D_DECAY_START_FILES = 81
CONV2D_STEPS_PER_FILE = 70

RMSPROP_KERAS = {"name": "rmsprop", "lr_generator": 1e-3, "lr_discriminator": 1e-3, "rho": 0.9, "eps": 1e-7}

RECIPES: dict[str, dict[str, Any]] = {
    "gan3d_clic25": {
        "loss_weights": {"real": 2.0, "energy": 0.1, "ecal_sum": 0.1, "angle": 0.0},
        "optimizer": RMSPROP_KERAS,
        "batch_size": 128,
        "generator_steps": 2,
        "label_flip": 0.05,
        "real_label": 1.0,
        "fake_label": 0.0,
        "fake_conditions": "sampled",
        "fake_energy_range_gev": (10.0, 500.0),
        "cell_threshold_gev": 1e-6,
    },
    "gan3d_clic51": {
        "loss_weights": {"real": 3.0, "energy": 0.1, "ecal_sum": 0.1, "angle": 25.0},
        "optimizer": RMSPROP_KERAS,
        "batch_size": 64,
        "generator_steps": 2,
        "label_flip": 0.05,
        "real_label": 1.0,
        "fake_label": 0.0,
        "fake_conditions": "real",
    },
    "conv2d": {
        "loss_weights": {"real": 6.0, "energy": 0.2, "ecal_sum": 0.1, "angle": 0.0},
        "optimizer": {"name": "adam", "lr_generator": 5e-4, "lr_discriminator": 1e-4, "betas": (0.9, 0.999),
                      "eps": 1e-7},
        "batch_size": 128,
        "generator_steps": 1,
        "label_flip": 0.05,
        "generator_label_flip": 0.05,
        "real_label": 0.9,
        "fake_label": 0.0,
        "generator_label": 0.9,
        "fake_conditions": "sampled",
        "early_fake_energy_range_gev": (100.0, 400.0),
        "early_fake_energy_epochs": 2,
        "cell_threshold_gev": 1e-6,
        "lr_decay_rate": CONV2D_DECAY_PER_FILE / CONV2D_STEPS_PER_FILE,
        "lr_decay_start": CONV2D_DECAY_START_FILES * CONV2D_STEPS_PER_FILE,
        "relu_epoch": 2,
    },
}

#: The preset a model trains with when the config names none.
DEFAULT_RECIPE = {
    "gan3d_clic25": "gan3d_clic25",
    "gan3d_clic51": "gan3d_clic51",
    "conv2d_g1": "conv2d",
    "conv2d_g2": "conv2d",
    "conv2d_g3": "conv2d",
}


def recipe_for_model(model_name: str) -> str:
    """The default preset of ``model_name``; ValueError for a model without one."""
    try:
        return DEFAULT_RECIPE[model_name]
    except KeyError:
        raise ValueError(f"model {model_name!r} has no default training recipe; name one with "
                         f"'recipe: {{preset: ...}}' ({', '.join(RECIPES)})") from None
