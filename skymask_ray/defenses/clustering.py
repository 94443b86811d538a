"""Filtering by clustering or spectral outlier scores: flame, pca_kmeans, dnc and signguard.

Clustering is scikit-learn's (HDBSCAN, KMeans, MeanShift, PCA), seeded from
the run seed and the round. When a filter leaves nobody, the aggregate is
zero (no step) and the round is marked as a fallback.

References: Nguyen et al., "FLAME: Taming Backdoors in Federated Learning",
USENIX Security 2022; Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks
Against Federated Learning Systems", ESORICS 2020; Shejwalkar, Houmansadr,
"Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses
for Federated Learning", NDSS 2021; Xu, Huang, Zhang, Liu, Cui, "Byzantine-
robust Federated Learning through Collaborative Malicious Gradient
Filtering", ICDCS 2022 (SignGuard).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError
from ..linalg import centred_gram, pairwise_sq_distances
from ..params import bounded
from .base import Aggregate, Defense, mean_of, register_defense
from .statistics import coordinate_median


def _no_step(updates: torch.Tensor, accepted: torch.Tensor, info: dict[str, Any]) -> Aggregate:
    """The documented fallback when a filter accepts nobody: a zero update."""
    return Aggregate(torch.zeros_like(updates[0]), accepted, None, info, fallback=True)


def median_norm(norms: torch.Tensor) -> float:
    """The median of the (N,) norms (mean of the two middle values for even N)."""
    return float(coordinate_median(norms[:, None])[0])


def cosine_distances(updates: torch.Tensor) -> torch.Tensor:
    r"""Pairwise cosine distances :math:`1 - \cos(g_i, g_j) = \tfrac12\|u_i - u_j\|^2` of the unit rows :math:`u`."""
    unit = updates / updates.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return pairwise_sq_distances(unit) / 2


@dataclass
class FlameParams:
    # lambda: noise std is lambda * S_t (paper: 0.001 for image classification)
    noise_lambda: float = bounded(0.001, ge=0)
    min_cluster_size: int | None = bounded(None, ge=2)  # None: N // 2 + 1


@register_defense("flame")
class Flame(Defense):
    r"""FLAME (Nguyen et al., USENIX Security 2022).

    1. HDBSCAN (min_cluster_size :math:`\lfloor N/2\rfloor + 1`, min_samples 1, single cluster
       allowed) on the cosine distances of the updates; clients in the majority cluster are admitted.
       With a minimum size above N/2 the root is the only cluster, and HDBSCAN's single-cluster
       labelling (scikit-learn's, like the ``hdbscan`` package of the reference code) keeps only
       its densest core: about min_cluster_size clients are admitted, the rest count as rejected.
    2. Clip to the median norm :math:`S_t = \mathrm{med}_k \|g_k\|` (the distance of each local
       model to the global one): :math:`\tilde g_k = g_k \min(1, S_t/\|g_k\|)`.
    3. :math:`\mathrm{AGG} = \frac{1}{|A|}\sum_{k\in A}\tilde g_k + \mathcal N(0, \sigma^2 I)`,
       :math:`\sigma = \lambda S_t` (the reference code squares :math:`\sigma`; not here).

    The noise is drawn from ``ctx.generator`` and lives in update space (the model moves by
    ``global_lr`` times it). No cluster: zero update, fallback.
    """

    Params = FlameParams

    @classmethod
    def check(cls, cfg) -> None:
        p = cls.parse(cfg.defense_params)
        if p.min_cluster_size is not None and p.min_cluster_size > cfg.cohort_size:
            raise ConfigError(
                f"defense 'flame' needs min_cluster_size <= N; got {p.min_cluster_size} with N={cfg.cohort_size}"
            )

    def aggregate(self, updates, ctx):
        from sklearn.cluster import HDBSCAN

        n = len(updates)
        if n < 2:
            return Aggregate(updates.mean(dim=0), torch.ones(n, dtype=torch.bool, device=updates.device), None,
                             {"skipped": "one client: nothing to cluster"})
        mcs = min(self.p.min_cluster_size or n // 2 + 1, n)
        dist = cosine_distances(updates).double().cpu().numpy()
        labels = HDBSCAN(
            min_cluster_size=max(mcs, 2), min_samples=1, metric="precomputed", allow_single_cluster=True, copy=True
        ).fit_predict(dist)
        found = labels[labels >= 0]
        admitted = np.zeros(n, dtype=bool)
        if found.size:
            admitted = labels == np.bincount(found).argmax()
        accepted = torch.as_tensor(admitted, device=updates.device)
        norms = updates.norm(dim=1)
        s_t = median_norm(norms)
        info: dict[str, Any] = {"clusters": int(len(set(found.tolist()))), "clip_norm": s_t}
        if not accepted.any():
            return _no_step(updates, accepted, info)
        scale = (s_t / norms.clamp_min(1e-12)).clamp(max=1.0)
        clipped_mean = (scale * accepted) @ updates / accepted.sum()
        sigma = self.p.noise_lambda * s_t
        noise = torch.randn(updates.shape[1], generator=ctx.generator, device=ctx.generator.device)
        info["noise_std"] = sigma
        return Aggregate(clipped_mean + sigma * noise.to(updates.device, updates.dtype), accepted, None, info)


@dataclass
class PcaKmeansParams:
    layer: str | None = None  # use only parameters whose name starts with this (e.g. the last layer)


@register_defense("pca_kmeans")
class PcaKmeans(Defense):
    r"""PCA + k-means filtering (Tolpegin et al., ESORICS 2020).

    Project the updates (optionally only the parameters named by ``layer``, e.g. the output
    layer as in the paper) to 2 principal components (exact, from the N x N centred Gram
    matrix), split them with 2-means and average the larger cluster:
    :math:`\mathrm{AGG} = \frac{1}{|C|}\sum_{k\in C} g_k`. On a tie the cluster with the
    smaller mean update norm is kept.
    """

    Params = PcaKmeansParams

    def _columns(self, updates: torch.Tensor, ctx) -> torch.Tensor:
        if self.p.layer is None:
            return updates
        slices = [s for name, s in ctx.spec.slices().items() if name.startswith(self.p.layer)]
        if not slices:
            raise ValueError(f"pca_kmeans: no parameter name starts with {self.p.layer!r}; known: {', '.join(ctx.spec.names)}")
        return torch.cat([updates[:, s] for s in slices], dim=1)

    def aggregate(self, updates, ctx):
        from sklearn.cluster import KMeans
        from sklearn.decomposition import KernelPCA

        if len(updates) < 2:
            return Aggregate(updates.mean(dim=0), torch.ones(1, dtype=torch.bool, device=updates.device), None,
                             {"skipped": "one client: nothing to cluster"})
        seed = self.random_state(ctx, "pca_kmeans")
        gram = centred_gram(self._columns(updates, ctx)).cpu().numpy()
        coords = KernelPCA(n_components=2, kernel="precomputed", random_state=seed).fit_transform(gram)
        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(coords)
        sizes = np.bincount(labels, minlength=2)
        keep = int(sizes.argmax())
        if sizes[0] == sizes[1]:
            norms = updates.norm(dim=1).cpu().numpy()
            keep = int(norms[labels == 1].mean() < norms[labels == 0].mean())
        accepted = torch.as_tensor(labels == keep, device=updates.device)
        return Aggregate(mean_of(updates, accepted), accepted, None, {"cluster_sizes": sizes.tolist()})


@dataclass
class DncParams:
    subsample: int = bounded(10000, ge=1)  # b: coordinates per iteration
    niters: int = bounded(5, ge=1)
    c: float = bounded(1.0, ge=0)  # filtering fraction: drop the c * f highest scores


def dnc_scores(sub: torch.Tensor) -> torch.Tensor:
    r"""Outlier scores :math:`s_k = \langle g_k - \mu, v\rangle^2` with :math:`v` the top right singular
    vector of the centred rows; equal to :math:`\lambda_1 u_k^2` with :math:`(\lambda_1, u)` the top
    eigenpair of their N x N Gram matrix, which is how it is computed (only that eigenpair, by
    SciPy's ``eigh`` with ``subset_by_index``: a full eigendecomposition costs several times more)."""
    import scipy.linalg

    gram = centred_gram(sub.double()).cpu().numpy()
    n = len(gram)
    evals, evecs = scipy.linalg.eigh(gram, subset_by_index=[n - 1, n - 1])
    top = torch.from_numpy(evecs[:, 0]).to(sub.device)
    return max(float(evals[0]), 0.0) * top**2


@register_defense("dnc")
class DivideAndConquer(Defense):
    r"""Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021, Algorithm 2).

    ``niters`` times: draw :math:`b` random coordinates, centre the sub-updates, score
    :math:`s_k = \langle g_k^{(b)} - \mu, v\rangle^2` along the top right singular vector :math:`v`
    (:func:`dnc_scores`) and keep the :math:`N - \lfloor c f\rfloor` lowest; the accepted set is the
    intersection over iterations and :math:`\mathrm{AGG}` its mean.
    """

    Params = DncParams

    @classmethod
    def check(cls, cfg) -> None:
        p = cls.parse(cfg.defense_params)
        if cfg.cohort_size - int(p.c * cfg.num_declared_f) < 1:
            raise ConfigError(
                f"defense 'dnc' drops c*f = {int(p.c * cfg.num_declared_f)} updates, which needs c*f < N (N={cfg.cohort_size})"
            )

    def aggregate(self, updates, ctx):
        n, p = updates.shape
        drop = min(int(self.p.c * ctx.declared_f), n - 1)
        b = min(self.p.subsample, p)
        accepted = torch.ones(n, dtype=torch.bool, device=updates.device)
        for _ in range(self.p.niters):
            coords = torch.randperm(p, generator=ctx.generator, device=ctx.generator.device)[:b].to(updates.device)
            scores = dnc_scores(updates[:, coords])
            keep = torch.zeros(n, dtype=torch.bool, device=updates.device)
            keep[scores.argsort()[: n - drop]] = True
            accepted &= keep
        info = {"dropped_per_iter": drop}
        if not accepted.any():
            return _no_step(updates, accepted, info)
        return Aggregate(mean_of(updates, accepted), accepted, None, info)


@dataclass
class SignGuardParams:
    lower: float = bounded(0.1, ge=0)  # L: keep norms >= L * median norm
    upper: float = bounded(3.0, ge=0)  # R: keep norms <= R * median norm
    coord_fraction: float = bounded(0.1, gt=0, le=1)  # fraction of coordinates whose signs are counted
    cluster: Literal["meanshift", "kmeans"] = "meanshift"

    def validate(self) -> None:
        """Cross-field: the norm band [lower, upper] must not be empty."""
        if self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got {self.lower} > {self.upper}")


def sign_features(updates: torch.Tensor) -> torch.Tensor:
    """(N, 3) fractions of positive, zero and negative coordinates per row."""
    p = updates.shape[1]
    return torch.stack([(updates > 0).sum(1), (updates == 0).sum(1), (updates < 0).sum(1)], dim=1).double() / p


def _largest_cluster(features: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Boolean mask of the largest cluster of the rows of ``features``."""
    from sklearn.cluster import KMeans, MeanShift, estimate_bandwidth

    n = len(features)
    if n < 2 or np.ptp(features, axis=0).max() == 0:
        return np.ones(n, dtype=bool)
    if method == "kmeans":
        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(features)
    else:
        bandwidth = estimate_bandwidth(features, quantile=0.5, n_samples=min(n, 50), random_state=seed)
        if bandwidth <= 0:
            return np.ones(n, dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit_predict(features)
    found = labels[labels >= 0]
    if not found.size:
        return np.zeros(n, dtype=bool)
    return labels == np.bincount(found).argmax()


@register_defense("signguard")
class SignGuard(Defense):
    r"""SignGuard (Xu et al., ICDCS 2022).

    1. Norm filter: :math:`S_1 = \{k : L \le \|g_k\| / M \le R\}`, :math:`M = \mathrm{med}_k \|g_k\|`.
    2. Sign filter: on a random ``coord_fraction`` of the coordinates, the fractions of positive,
       zero and negative entries of each update are clustered (MeanShift, or 2-means);
       :math:`S_2` is the largest cluster.
    3. :math:`\mathrm{AGG} = \frac{1}{|S|}\sum_{k\in S} g_k \min(1, M/\|g_k\|)`, :math:`S = S_1 \cap S_2`.
    """

    Params = SignGuardParams

    def aggregate(self, updates, ctx):
        n, p = updates.shape
        norms = updates.norm(dim=1)
        med = median_norm(norms)
        ratio = norms / max(med, 1e-12)
        s1 = (ratio >= self.p.lower) & (ratio <= self.p.upper)
        b = max(1, int(round(self.p.coord_fraction * p)))
        coords = torch.randperm(p, generator=ctx.generator, device=ctx.generator.device)[:b].to(updates.device)
        feats = sign_features(updates[:, coords]).cpu().numpy()
        s2 = torch.as_tensor(_largest_cluster(feats, self.p.cluster, self.random_state(ctx, "signguard")), device=updates.device)
        accepted = s1 & s2
        info = {"norm_rejected": int((~s1).sum()), "sign_rejected": int((~s2).sum()), "clip_norm": med}
        if not accepted.any():
            return _no_step(updates, accepted, info)
        scale = (med / norms.clamp_min(1e-12)).clamp(max=1.0) * accepted
        return Aggregate(scale @ updates / accepted.sum(), accepted, None, info)
