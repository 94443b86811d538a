"""Cluster binarised masks: PCA to 2-D from the Gram matrix, then a seeded 2-component GMM.

PCA of the K binary vectors (K = N + 1) is computed by scikit-learn's
``KernelPCA`` on the precomputed linear kernel B B^T, which equals PCA of B
(the kernel is centred inside) but needs only the K x K Gram matrix; that
matrix is a sum over parameter shards, so clustering never gathers K x P bits.
The component holding row 0 (the server's mask) is the benign one.

``rule`` (``skymask.select``): ``gmm2`` (default, the paper) always splits into two components.
``bic`` (opt-in) also fits a 1-component mixture to the same 2-D coordinates and keeps the split
only if the 2-component model has the lower BIC (Schwarz criterion, scikit-learn's ``bic``);
when one component wins, every client is benign and ``single_component`` says so. The paper's
rule always rejects someone, even in a round without attackers; ``bic`` need not. Measured on
planted masks (31 masks, seeds 0-29): two groups were always kept apart (several sizes, 2 vs 29
included), and one group of independent uniform random bits was kept whole in 29 of 30 seeds;
but one group of sparse variations of a shared mask (1-5 % of the bits flipped per mask) was
still split in about half of the seeds or more: the top two principal directions of such noise
single out the few most distinct masks and two Gaussians fit that better. Covariance type and
regularisation did not change this much (full, tied, spherical, diag were tried). On real masks
(Fashion-MNIST cnn, 100 clients, bias 0.5, no attack) ``bic`` still split 8 of 10 rounds:
non-IID clients' masks are not one Gaussian blob. ``benchmarks/results/select_rule.md``.

``silhouette`` (opt-in) keeps the 2-component split only if its mean silhouette (scikit-learn's
``silhouette_score`` on the same 2-D coordinates) is at least ``min_silhouette`` (default 0.5).
The threshold is Kaufman & Rousseeuw's (1990) reading of the mean silhouette: 0.51-0.70 a
reasonable structure was found, 0.26-0.50 weak structure that could be artificial. Measured on
the mask coordinates recorded by SkyMask runs (Fashion-MNIST cnn, 100 clients, bias 0.5, 10
rounds, spread 0): with no attack 0.29-0.53 per round; under every attack that the paper's rule
catches (TPR >= 0.8) 0.72-0.99 once the attack has separated (round 2 on), lie_backdoor 0.44-0.68;
under the attacks that it cannot catch (adaptive, layer, parameter: TPR/FPR ~0.3-0.5, a coin
flip) 0.25-0.53, where accepting everyone loses less. On planted masks it keeps one group of
uniform random bits whole in every seed (mean silhouette of the forced split 0.25-0.40), but, like
``bic``, it splits off the one to four most distinct masks of a group of sparse variations of one
mask (0.5-0.8): a far, small group is what a lone attacker looks like too.

``restarts`` (``skymask.gmm_restarts``, default 1 = the paper: one fit from scikit-learn's k-means
initialisation) fits the 2-component mixture ``restarts - 1`` more times from random data points
(``init_params="random_from_data"``) and keeps the fit of highest likelihood, never a worse fit than
the paper's. One EM run often stops in a local optimum: re-clustering the mask coordinates recorded
by the 30-round spread-1 runs at 20 % (lie, seeds 0-2), the k-means-initialised fit split off a
tail of benign clients in rounds where the attackers' masks sat in a tight, linearly separable
group (benign spread ~20 in PCA units, attackers ~0.5), which the best of 10 fits found with a
higher likelihood; every rule (gmm2, bic, silhouette) then works on the better split. Run with
10 restarts (30 rounds, seeds 0-2): lie TPR 0.900 / FPR 0.054 against 0.822 / 0.090 with one fit,
min_max 0.989 / 0.019 against 0.967 / 0.023 (``benchmarks/results/gmm_restarts/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import KernelPCA
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from ..config import SkyMaskConfig


@dataclass
class Clustering:
    """Result of clustering K masks; index 0 is the server."""

    benign: np.ndarray  # (K,) bool, benign[0] is True
    coords: np.ndarray  # (K, 2) PCA coordinates
    labels: np.ndarray  # (K,) GMM component
    degenerate: bool  # all masks (nearly) identical: everyone is benign
    single_component: bool = False  # rule bic / silhouette found one cluster: everyone is benign


SELECT_RULES = ("gmm2", "bic", "silhouette")


def two_components(coords: np.ndarray, seed: int, restarts: int = 1) -> GaussianMixture:
    """The 2-component mixture of highest likelihood: the k-means-initialised fit and ``restarts - 1`` more."""
    best = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-6).fit(coords)
    if restarts > 1:
        more = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-6, n_init=restarts - 1,
                               init_params="random_from_data").fit(coords)
        if more.score(coords) > best.score(coords):
            best = more
    return best


def cluster_from_gram(gram: np.ndarray, seed: int, rule: str = "gmm2", min_silhouette: float = 0.5,
                      restarts: int = 1) -> Clustering:
    """PCA(2) via KernelPCA(precomputed) and the best of ``restarts`` 2-component GMM fits; ``rule`` see module doc."""
    if rule not in SELECT_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(SELECT_RULES)}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    k = gram.shape[0]
    g = np.asarray(gram, dtype=np.float64)
    centred = g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()
    if k < 3 or np.trace(centred) <= 1e-9 * max(np.trace(g), 1.0):
        return Clustering(np.ones(k, dtype=bool), np.zeros((k, 2)), np.zeros(k, dtype=np.int64), True)
    coords = KernelPCA(n_components=2, kernel="precomputed", random_state=seed).fit_transform(g)
    if np.unique(np.round(coords, 9), axis=0).shape[0] < 2:
        return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), True)
    gmm2 = two_components(coords, seed, restarts)
    labels = gmm2.predict(coords)
    if rule == "bic":
        gmm1 = GaussianMixture(n_components=1, random_state=seed, reg_covar=1e-6).fit(coords)
        if gmm1.bic(coords) <= gmm2.bic(coords):
            return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), False, True)
    if rule == "silhouette":
        if len(np.unique(labels)) < 2 or silhouette_score(coords, labels) < min_silhouette:
            return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), False, True)
    return Clustering(labels == labels[0], coords, labels, False)


def select_masks(gram: np.ndarray, seed: int, cfg: SkyMaskConfig) -> Clustering:
    """:func:`cluster_from_gram` under the config's rule, threshold and restarts: the server's selection,
    which the white-box attacks replay exactly."""
    return cluster_from_gram(gram, seed, rule=cfg.select, min_silhouette=cfg.min_silhouette, restarts=cfg.gmm_restarts)
