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
non-IID clients' masks are not one Gaussian blob. The select_rule study in ``benchmarks/RESULTS.md``.

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
min_max 0.989 / 0.019 against 0.967 / 0.023 (``benchmarks/results/gmm_restarts.parquet``).

``spectral`` (opt-in) first cuts a graph instead of the 2-D coordinates: every mask is linked to its
``neighbors`` nearest masks (distance sqrt(Hamming), exact from the Gram matrix: |b_i - b_j|^2 =
G_ii + G_jj - 2 G_ij), and the symmetrised graph is cut in two by spectral clustering (scikit-learn's
``SpectralClustering``, the normalised-cut relaxation); the server's side is benign. The cut is kept
only if it is clean: its conductance (weight of the edges it crosses over the smaller side's volume)
at most ``max_conductance`` (0.1). Otherwise the rule is ``silhouette``: the paper's mixture split if
its mean silhouette is at least ``min_silhouette``, else one cluster. Why: under lie with distinct
attackers at 20 % every attacker's nearest masks are attackers (94-100 % of its 5 nearest, from
round 1), yet all masks lie about equally far apart (sqrt-Hamming 131-148 within and between the
groups) and the two directions of largest variance belong to the non-IID benign clients (bias 0.5:
~8 clients per dominant class), so the paper's split of the 2-D coordinates misses the attackers in
rounds 1-3 whatever the mixture fit. With more neighbours than a class group has members the benign
groups link to one another, and the attackers' group, larger than ``neighbors``, mostly to itself.
Re-clustering recorded Gram matrices (Fashion-MNIST cnn, 100 clients, seed 0 unless said): lie 20 %
spread 1 (seeds 0-1, rounds 1-8) was cut exactly in every round for ``neighbors`` 10-20 at
conductance 0-0.04, and wrongly at 3-8 (a class group cut off) and sometimes at 30; with no attack
every cut crossed 0.21-0.32 of the edges at 16 neighbours (0.03-0.08 at 10, which is why the
default is larger). The graph alone fails where the attackers are not each other's neighbours yet:
min_max at 50 % and 80 % in round 1 (conductance 0.28-0.34; 80 %: 0.12 in round 4 too) and identical
attackers (spread 0) in round 2 (0.145: benign masks take the identical mask as a neighbour), all
rounds that the mixture split with silhouette 0.65-0.84; the fallback takes those. ``neighbors``
None is ceil(0.15 K) (at least 3): more than a class group of (1 - f) K / 10 clients at 10 classes,
fewer than the attackers from f = 0.16 on; measured only at K = 101 (16 neighbours). Known misses
(``benchmarks/results/spectral.parquet``): min_max at 20 % in rounds 1-2, where the attackers are outliers
each in its own direction, not each other's neighbours (1 % of their 5 nearest masks are attackers
in round 1). The server's side is the one holding most of the server's own nearest masks: under lie
~20 attackers count the server's mask among their neighbours (both sit near the mean update), and
the embedding's label of the server followed them in 6 of 30 rounds of seed 2.
Cohorts (N = 1000, K = 50 and 200, pool attackers, seeds 0-2; development Grams re-clustered by
``benchmarks/spectral_neighbours.py``, recorded with ``skymask.keep_gram``): the rule misses the rounds
in which the attackers are not each other's nearest masks, under lie 57-60 % of the rounds, those with
few attackers in the cohort, whose z (from K and the cohort's attackers) is 0.20-0.55 against 0.47-0.77
where they group: their common shift is no larger than their own noise. No neighbour count from
0.06 K to 0.2 K, nor the largest count in a range whose cut is clean, catches them (TPR 0.00 in those
rounds), and fewer neighbours cut class groups off without an attack (FPR up to 0.25), so
ceil(0.15 K) stays (``benchmarks/results/spectral_neighbours.md``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from ..config import SELECT_RULES, SkyMaskConfig
from ..seeding import child_seed

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture


def load_sklearn() -> None:
    """Import what clustering uses from scikit-learn (about a second): the functions below import it on first
    use, so a process that never clusters (the driver, a client worker) never pays; the mask trainer pays at
    set-up."""
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.mixture  # noqa: F401
    import sklearn.neighbors  # noqa: F401


@dataclass
class Clustering:
    """Result of clustering K masks; index 0 is the server."""

    benign: np.ndarray  # (K,) bool, benign[0] is True
    coords: np.ndarray  # (K, 2) PCA coordinates
    labels: np.ndarray  # (K,) GMM component, or side of the graph cut, 0 the server's (rule spectral)
    degenerate: bool  # all masks (nearly) identical: everyone is benign
    single_component: bool = False  # rule bic / silhouette / spectral found one cluster: everyone is benign


def two_components(coords: np.ndarray, seed: int, restarts: int = 1) -> GaussianMixture:
    """The 2-component mixture of highest likelihood: the k-means-initialised fit and ``restarts - 1`` more."""
    from sklearn.mixture import GaussianMixture

    best = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-6).fit(coords)
    if restarts > 1:
        more = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-6, n_init=restarts - 1,
                               init_params="random_from_data").fit(coords)
        if more.score(coords) > best.score(coords):
            best = more
    return best


def mask_distances(gram: np.ndarray) -> np.ndarray:
    """(K, K) Euclidean distances between the binary masks, sqrt of their Hamming distances, from B B^T."""
    g = np.asarray(gram, dtype=np.float64)
    d = np.diag(g)
    return np.sqrt(np.maximum(d[:, None] + d[None, :] - 2.0 * g, 0.0))


NEIGHBOUR_FRACTION = 0.15  # the default neighbour count's share of K (module doc)


def neighbour_count(k: int, neighbors: int | None, fraction: float = NEIGHBOUR_FRACTION) -> int:
    """The neighbours each mask links to: ``neighbors`` (None: ceil(fraction K), at least 3), at most K - 1."""
    return min(k - 1, neighbors if neighbors is not None else max(3, math.ceil(fraction * k)))


def nearest_neighbours(gram: np.ndarray, neighbors: int | None = None) -> np.ndarray:
    """(K, K) 0/1 matrix, row i marking mask i's ``neighbour_count`` nearest masks (not symmetric)."""
    from sklearn.neighbors import kneighbors_graph

    return kneighbors_graph(mask_distances(gram), neighbour_count(gram.shape[0], neighbors), metric="precomputed",
                            include_self=False).toarray()


def conductance(graph: np.ndarray, side: np.ndarray) -> float:
    """Weight of the edges the cut crosses over the smaller side's volume (0: no edge crosses, at most 1)."""
    volume = min(graph[side].sum(), graph[~side].sum())
    return float(graph[side][:, ~side].sum() / volume) if volume > 0 else 0.0


def server_side(nearest: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The side of a two-way cut the server (row 0) belongs to, server included: the side holding most of
    the server's own nearest masks, its label's side on a tie. Masks that link to the server (in-edges,
    which attackers near the mean update add) do not count, only the masks the server itself is near."""
    own = labels == labels[0]
    near = nearest[0].astype(bool)
    if near[~own].sum() <= near[own].sum():
        return own
    side = ~own
    side[0] = True
    return side


def spectral_split(gram: np.ndarray, seed: int, neighbors: int | None = None) -> tuple[np.ndarray, float]:
    """The normalised cut of the masks' neighbour graph: the server's side (:func:`server_side`) and
    the cut's conductance."""
    from sklearn.cluster import SpectralClustering

    nearest = nearest_neighbours(gram, neighbors)
    graph = 0.5 * (nearest + nearest.T)
    with warnings.catch_warnings():  # a graph in parts (identical attackers) is what the cut should find
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        labels = SpectralClustering(n_clusters=2, affinity="precomputed", random_state=seed,
                                    assign_labels="cluster_qr").fit_predict(graph)
    side = server_side(nearest, labels)
    return side, conductance(graph, side)


def cluster_from_gram(gram: np.ndarray, seed: int, rule: str = "gmm2", min_silhouette: float = 0.5,
                      restarts: int = 1, neighbors: int | None = None, max_conductance: float = 0.1) -> Clustering:
    """PCA(2) via KernelPCA(precomputed) and the best of ``restarts`` 2-component GMM fits, or with
    ``rule`` spectral first the cut of the ``neighbors``-nearest-neighbour graph, kept at a conductance
    of ``max_conductance`` or below; ``rule`` see module doc."""
    from sklearn.decomposition import KernelPCA
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    if rule not in SELECT_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(SELECT_RULES)}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if neighbors is not None and neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    k = gram.shape[0]
    g = np.asarray(gram, dtype=np.float64)
    centred = g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()
    if k < 3 or np.trace(centred) <= 1e-9 * max(np.trace(g), 1.0):
        return Clustering(np.ones(k, dtype=bool), np.zeros((k, 2)), np.zeros(k, dtype=np.int64), True)
    coords = KernelPCA(n_components=2, kernel="precomputed", random_state=seed).fit_transform(g)
    if np.unique(np.round(coords, 9), axis=0).shape[0] < 2:
        return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), True)
    if rule == "spectral":
        side, cut = spectral_split(g, seed, neighbors)
        if cut <= max_conductance:
            return Clustering(side, coords, (~side).astype(np.int64), False)
    gmm2 = two_components(coords, seed, restarts)
    labels = gmm2.predict(coords)
    if rule == "bic":
        gmm1 = GaussianMixture(n_components=1, random_state=seed, reg_covar=1e-6).fit(coords)
        if gmm1.bic(coords) <= gmm2.bic(coords):
            return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), False, True)
    if rule in ("silhouette", "spectral"):  # spectral: its cut was not clean, the mixture's split must be
        if len(np.unique(labels)) < 2 or silhouette_score(coords, labels) < min_silhouette:
            return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), False, True)
    return Clustering(labels == labels[0], coords, labels, False)


def cluster_state(seed: int, round_idx: int) -> int:
    """The clustering's scikit-learn ``random_state`` in round ``round_idx`` of seed ``seed``: its own child
    stream, so every (seed, round) pair gets a different state (``seed + round`` gave seed s, round r + 1
    the state of seed s + 1, round r)."""
    return child_seed(seed, "cluster", round_idx) % 2**32


def select_masks(gram: np.ndarray, seed: int, cfg: SkyMaskConfig, round_idx: int | None = None) -> Clustering:
    """:func:`cluster_from_gram` under the config's rule, threshold, restarts and neighbours: the server's
    selection, which the white-box attacks replay exactly. With ``round_idx`` the random state is
    :func:`cluster_state` (seed, round) (the server); without it ``seed`` is the state itself (callers that
    draw their own states, such as the adaptive attack)."""
    state = seed if round_idx is None else cluster_state(seed, round_idx)
    return cluster_from_gram(gram, state, rule=cfg.select, min_silhouette=cfg.min_silhouette, restarts=cfg.gmm_restarts,
                             neighbors=cfg.neighbors, max_conductance=cfg.max_conductance)
