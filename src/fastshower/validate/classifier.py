"""Binary classifier test (CaloChallenge ``cls-low`` / ``cls-high`` recipe, sized for a CPU).

A DNN learns to tell reference showers (label 1) from candidate showers (label 0). Per class the
events are split once (fixed permutation, independent of the training seed) into train / test /
val = 60 / 20 / 20 %. The network trains on train; the epoch with the lowest BCE on test is kept
(early stopping, ``patience`` epochs); an isotonic regression fitted on the test predictions
calibrates the output; AUC and JSD = (ln 2 - BCE) / ln 2 are measured on val. The training is
repeated for several seeds and the mean and standard deviation are reported. A perfect generator
gives AUC 0.5 and JSD 0.

Deviations from CaloChallenge ``evaluate.py`` (documented in docs/metrics.md): hidden layers are
narrower (default 2 x 256 LeakyReLU for high-level features, 2 x 128 for voxels, instead of
3 x 2048), inputs are standardised with the train-split mean and std, Adam lr 1e-3, batch 256, at
most 30 epochs with early stopping on the test-split loss (instead of 50 epochs and the best test
accuracy), so that 10k + 10k 25^3 showers train in about a minute per seed on two CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from torch import nn


def low_level_inputs(showers: np.ndarray, primary_energy: np.ndarray, sampling_fraction: float) -> np.ndarray:
    """CaloChallenge ``cls-low`` inputs: [log10(E_inc / MeV), voxel / E_inc], float32 (n, 1 + n_cells).

    Voxels are scaled to the full shower energy (active / sampling fraction), as CaloChallenge
    files store them, so the ratios are the ones the challenge's classifier saw.
    """
    e = np.asarray(primary_energy, dtype=np.float64)
    vox = showers.reshape(len(showers), -1) / (sampling_fraction * e[:, None])
    return np.concatenate([np.log10(e * 1e3)[:, None], vox], axis=1).astype(np.float32)


def high_level_inputs(obs: dict[str, np.ndarray], primary_energy: np.ndarray, sampling_fraction: float
                      ) -> np.ndarray:
    """CaloChallenge ``cls-high`` feature vector, float32 (n, 2 + 8 n_layers).

    [log10 E_inc, log10(E_layer + 1e-8), EC_x/100, EC_y/100, w_x/100, w_y/100, log10(E_tot + 1e-8),
    layer sparsity, EC_r/100, w_r/100] with energies in MeV of full shower energy (active / sampling
    fraction) and positions in mm; x and y are CaloChallenge's eta and phi for cylindrical data.
    """
    to_mev = 1e3 / sampling_fraction
    e_inc = np.asarray(primary_energy, dtype=np.float64) * 1e3
    cols = [np.log10(e_inc)[:, None], np.log10(obs["layer_energy"] * to_mev + 1e-8),
            obs["centre_x"] / 100, obs["centre_y"] / 100, obs["width_x"] / 100, obs["width_y"] / 100,
            np.log10(obs["energy_deposited"] * to_mev + 1e-8)[:, None], obs["layer_sparsity"],
            obs["centre_r"] / 100, obs["width_r"] / 100]
    return np.concatenate(cols, axis=1).astype(np.float32)


def fixed_split(n: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / test / val for ``n`` events: one fixed permutation (seed 0 by default)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_test = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train:n_train + n_test], perm[n_train + n_test:]


def _mlp(n_in: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.LeakyReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, 1))
    return nn.Sequential(*layers)


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(x[i:i + batch])).squeeze(1) for i in range(0, len(x), batch)]).numpy()


def binary_cross_entropy(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mean BCE (nats) of probabilities ``prob`` for 0/1 ``labels``, probabilities clipped to [1e-7, 1-1e-7]."""
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def train_classifier_once(x_train, y_train, x_test, y_test, x_val, y_val, seed: int,
                          hidden: tuple[int, ...], max_epochs: int = 30, patience: int = 3,
                          batch_size: int = 256, lr: float = 1e-3) -> dict[str, float]:
    """One training (seed ``seed``); returns ``auc``, ``jsd`` on val after isotonic calibration, ``epochs``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _mlp(x_train.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    x_test_t, x_val_t = torch.from_numpy(x_test), torch.from_numpy(x_val)
    best_loss, best_state, bad, epoch = math.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007 (the last epoch is reported after the loop)
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]).squeeze(1), yt[idx]).backward()
            opt.step()
        test_loss = binary_cross_entropy(y_test, _predict(model, x_test_t))
        if test_loss < best_loss - 1e-5:
            best_loss, bad = test_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(_predict(model, x_test_t), y_test)
    prob_val = iso.predict(_predict(model, x_val_t))
    bce = binary_cross_entropy(y_val, prob_val)
    return {"auc": float(roc_auc_score(y_val, prob_val)), "jsd": (math.log(2) - bce) / math.log(2),
            "epochs": epoch}


def classifier_test(reference_inputs: np.ndarray, candidate_inputs: np.ndarray, seeds: tuple[int, ...] = (0, 1, 2),
                    hidden: tuple[int, ...] = (256, 256), max_epochs: int = 30, patience: int = 3,
                    progress: bool = False, label: str = "classifier") -> dict:
    """AUC and JSD of a classifier separating reference (1) from candidate (0) inputs.

    Both classes are cut to the same size. Returns ``auc_mean``, ``auc_std``, ``jsd_mean``,
    ``jsd_std``, the per-seed ``aucs`` and ``jsds``, and ``n_per_class``.
    """
    from tqdm import tqdm

    n = min(len(reference_inputs), len(candidate_inputs))
    if n < 50:
        raise ValueError(f"classifier test needs at least 50 events per sample, got {n}")
    splits_r = fixed_split(n, seed=0)
    splits_c = fixed_split(n, seed=1)
    parts = []
    for idx_r, idx_c in zip(splits_r, splits_c):
        x = np.concatenate([reference_inputs[idx_r], candidate_inputs[idx_c]])
        y = np.concatenate([np.ones(len(idx_r)), np.zeros(len(idx_c))])
        parts.append((x, y))
    mean = parts[0][0].mean(axis=0)
    std = parts[0][0].std(axis=0)
    std[std == 0] = 1.0
    (xtr, ytr), (xte, yte), (xva, yva) = [(((x - mean) / std).astype(np.float32), y) for x, y in parts]
    runs = [train_classifier_once(xtr, ytr, xte, yte, xva, yva, seed=s, hidden=hidden, max_epochs=max_epochs,
                                  patience=patience)
            for s in tqdm(seeds, desc=label, disable=not progress, leave=False)]
    aucs = np.array([r["auc"] for r in runs])
    jsds = np.array([r["jsd"] for r in runs])
    return {"auc_mean": float(aucs.mean()), "auc_std": float(aucs.std()), "jsd_mean": float(jsds.mean()),
            "jsd_std": float(jsds.std()), "aucs": aucs.tolist(), "jsds": jsds.tolist(),
            "epochs": [r["epochs"] for r in runs], "n_per_class": n}
