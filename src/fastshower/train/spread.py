"""The shower-to-shower spread term of the generator loss (``loss_weights.spread``; 0 = off, the
originals' recipes).

A GAN trained only with the 3DGAN terms learns the mean shower of each energy well but can
collapse its fluctuations: the showers of one energy all look alike (too narrow distributions of
depth, width and layer energies). This term compares, for a batch of generated showers and the real
batch of the same step, the distributions of per-shower observables after removing their energy
dependence:

1. :func:`shower_features` (differentiable, showers in GeV): the response ln(E_dep / E), the
   longitudinal centre and spread (layers), ln(layer energy / E) for every layer, ln(energy / E) in
   every x and every y slice (the lateral profiles), the x and y widths of every layer (cells,
   energy weighted), and ln(1 + cells hit) above the readout threshold and above 0.2 MeV (soft
   counts, so that their gradient reaches the cells).
2. :class:`FeatureStandardizer`: each feature's mean and standard deviation as cubic polynomials in
   ln(E / 100 GeV), fitted once on training showers; ``z = (feature - mean(E)) / std(E)``.
3. :func:`spread_loss`: per feature the squared 1-d Wasserstein-2 distance between the generated z
   (sorted) and the real z at the same quantiles, within slices of similar primary energy (by rank
   in each batch), averaged in each group of features, the groups averaged. It is zero when the
   generated showers fluctuate like the real ones at every energy, and large for a collapsed
   generator (z spread near 0 against 1).

Only the generator sees this term; the discriminator and its losses are those of the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: the groups of :func:`shower_features`, each given the same weight in :func:`spread_loss`
GROUPS = ("response", "longitudinal", "layer_energy", "lateral_profile", "layer_width", "hits")
#: cell energies (GeV) above which cells count as hit: the readout threshold of the clic25 ECAL and the
#: hit threshold of fastshower.validate's ``hits`` observable
HIT_THRESHOLDS_GEV = (1e-6, 2e-4)
#: softness of the hit counts, in units of ln(cell energy)
HIT_SOFTNESS = 0.5
#: z values are clipped to +-Z_CLIP so that one wild shower cannot dominate a batch
Z_CLIP = 8.0
POLYNOMIAL_DEGREE = 3
#: slices of similar primary energy each batch is cut into by :func:`spread_loss` in training
ENERGY_GROUPS = 4


def shower_features(showers_gev: torch.Tensor, primary_energy_gev: torch.Tensor,
                    hit_thresholds_gev: tuple[float, ...] = HIT_THRESHOLDS_GEV) -> dict[str, torch.Tensor]:
    """Per-shower observables ``{group: (B, k)}`` of showers ``(B, x, y, z)`` in GeV (see the module
    docstring); differentiable in the cell energies. Positions in cell and layer units."""
    s = showers_gev.float().clamp_min(0)
    nx, ny, nz = s.shape[1:]
    e = primary_energy_gev.float().view(-1, 1)
    layer = s.sum(dim=(1, 2))  # (B, nz)
    total = layer.sum(dim=1, keepdim=True)
    z = torch.arange(nz, dtype=s.dtype, device=s.device)
    frac = layer / (total + 1e-9)
    depth = (frac * z).sum(dim=1, keepdim=True)
    depth_rms = torch.sqrt(((frac * z**2).sum(dim=1, keepdim=True) - depth**2).clamp_min(0) + 1e-4)

    def widths(projection: torch.Tensor, n: int) -> torch.Tensor:  # projection (B, n, nz) -> (B, nz)
        c = torch.arange(n, dtype=s.dtype, device=s.device).view(1, -1, 1)
        w = projection / (projection.sum(dim=1, keepdim=True) + 1e-7)  # empty layers: width 0
        mean = (w * c).sum(dim=1, keepdim=True)
        return torch.sqrt(((w * (c - mean) ** 2).sum(dim=1)).clamp_min(0) + 1e-4)

    log_cells = torch.log(s.flatten(1) + 1e-12)
    hits = [torch.log1p(torch.sigmoid((log_cells - float(np.log(t))) / HIT_SOFTNESS).sum(dim=1, keepdim=True))
            for t in hit_thresholds_gev]
    return {
        "response": torch.log(total / e + 1e-9),
        "longitudinal": torch.cat([depth, depth_rms], dim=1),
        "layer_energy": torch.log(layer / e + 1e-7),
        "lateral_profile": torch.log(torch.cat([s.sum(dim=(2, 3)), s.sum(dim=(1, 3))], dim=1) / e + 1e-7),
        "layer_width": torch.cat([widths(s.sum(dim=2), nx), widths(s.sum(dim=1), ny)], dim=1),
        "hits": torch.cat(hits, dim=1),
    }


@dataclass(frozen=True)
class FeatureStandardizer:
    """Mean and variance of every feature as polynomials in ln(E / 100 GeV): ``{group: (degree + 1,
    k)}`` coefficients, highest power first (numpy.polyval order); the variance is floored at
    ``variance_floor`` ``{group: (k,)}``."""

    mean: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]
    variance_floor: dict[str, np.ndarray]

    @classmethod
    def fit(cls, showers_gev: np.ndarray, primary_energy_gev: np.ndarray, degree: int = POLYNOMIAL_DEGREE,
            chunk_size: int = 500) -> FeatureStandardizer:
        """Least-squares fits on real showers: the mean of each feature, then its variance (the
        squared residuals), floored at (1% of the feature's overall standard deviation)**2."""
        x = np.log(np.asarray(primary_energy_gev, dtype=np.float64) / 100.0)
        if len(x) <= 4 * (degree + 1):
            raise ValueError(f"the spread standardizer needs more than {4 * (degree + 1)} showers, got {len(x)}")
        parts: list[dict[str, np.ndarray]] = []
        with torch.no_grad():
            for i in range(0, len(x), chunk_size):
                f = shower_features(torch.from_numpy(np.ascontiguousarray(showers_gev[i:i + chunk_size])),
                                    torch.from_numpy(np.asarray(primary_energy_gev[i:i + chunk_size])))
                parts.append({g: v.double().numpy() for g, v in f.items()})
        mean, variance, floor = {}, {}, {}
        for g in GROUPS:
            y = np.concatenate([p[g] for p in parts])
            mean[g] = np.polyfit(x, y, degree)
            variance[g] = np.polyfit(x, (y - _polyval(mean[g], x)) ** 2, degree)
            floor[g] = (0.01 * y.std(axis=0)) ** 2 + 1e-12
        return cls(mean, variance, floor)

    def standardize(self, features: dict[str, torch.Tensor], primary_energy_gev: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """``{group: z}``, z clipped to +-Z_CLIP."""
        x = np.log(primary_energy_gev.detach().double().cpu().numpy() / 100.0)
        out = {}
        for g, f in features.items():
            mu = torch.as_tensor(_polyval(self.mean[g], x), dtype=f.dtype, device=f.device)
            variance = np.maximum(_polyval(self.variance[g], x), self.variance_floor[g])
            sd = torch.as_tensor(np.sqrt(variance), dtype=f.dtype, device=f.device)
            out[g] = ((f - mu) / sd).clamp(-Z_CLIP, Z_CLIP)
        return out

    def z_scores(self, showers_gev: torch.Tensor, primary_energy_gev: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{group: z}`` of showers ``(B, x, y, z)`` in GeV: :func:`shower_features`, standardised."""
        return self.standardize(shower_features(showers_gev, primary_energy_gev), primary_energy_gev)


def _polyval(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(n, k)`` values of k polynomials (columns of ``coefficients``, highest power first) at x (n,)."""
    powers = np.vander(x, len(coefficients))  # (n, degree + 1), highest power first
    return powers @ coefficients


def _distances(z_generated: dict[str, torch.Tensor], z_real: dict[str, torch.Tensor],
               pairs: list[tuple[torch.Tensor | slice, torch.Tensor | slice]]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over the groups of the mean over ``pairs`` (generated rows, real rows) of the mean squared
    1-d Wasserstein-2 distance per feature (real z taken at the generated rows' quantiles)."""
    per_group = {}
    for g in GROUPS:
        distances = []
        for ig, ir in pairs:
            fake = torch.sort(z_generated[g][ig], dim=0).values
            n = fake.shape[0]
            q = (torch.arange(n, dtype=fake.dtype, device=fake.device) + 0.5) / n
            real = torch.quantile(z_real[g][ir].detach().to(fake.dtype), q, dim=0)
            distances.append(((fake - real) ** 2).mean())
        per_group[g] = torch.stack(distances).mean()
    return torch.stack(list(per_group.values())).mean(), per_group


def spread_loss(z_generated: dict[str, torch.Tensor], z_real: dict[str, torch.Tensor],
                energy_generated: torch.Tensor | None = None, energy_real: torch.Tensor | None = None,
                energy_groups: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over the groups of features of the mean squared 1-d Wasserstein-2 distance per feature
    between generated and real z (the real z taken at the generated showers' quantiles, so the two
    batches may differ in size); returns it and the per-group values.

    With ``energy_groups`` k > 1 both batches are cut by primary-energy rank into k slices (the
    lowest energies of each together, ...) and the distance is averaged over the slices: a
    generator whose mean is off in opposite directions at low and high energy then cannot pass its
    bias off as spread in the mixture of energies.
    """
    if energy_groups > 1:
        if energy_generated is None or energy_real is None:
            raise ValueError("energy_groups > 1 needs the primary energies of both batches")
        pairs = list(zip(torch.tensor_split(torch.argsort(energy_generated), energy_groups),
                         torch.tensor_split(torch.argsort(energy_real), energy_groups), strict=True))
    else:
        pairs = [(slice(None), slice(None))]
    return _distances(z_generated, z_real, pairs)


def spread_loss_against_bank(z_generated: dict[str, torch.Tensor], energy_generated: torch.Tensor,
                             z_bank: dict[str, torch.Tensor], energy_bank: torch.Tensor, energy_groups: int,
                             min_bank_showers: int = 16) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`spread_loss` of generated showers at any energies against a bank of real showers: the
    generated batch is cut by energy rank into ``energy_groups`` slices, each compared with the bank
    showers inside its energy range (at least the ``min_bank_showers`` nearest in ln E)."""
    log_bank = torch.log(energy_bank.double())
    pairs = []
    for ig in torch.tensor_split(torch.argsort(energy_generated), energy_groups):
        log_e = torch.log(energy_generated[ig].double())
        inside = torch.nonzero((log_bank >= log_e.min()) & (log_bank <= log_e.max())).flatten()
        if len(inside) < min_bank_showers:
            inside = torch.argsort((log_bank - log_e.median()).abs())[:min_bank_showers]
        pairs.append((ig, inside))
    return _distances(z_generated, z_bank, pairs)
