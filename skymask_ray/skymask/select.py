"""Cluster binarised masks: PCA to 2-D from the Gram matrix, then a seeded 2-component GMM.

PCA of the K binary vectors (K = N + 1) is computed by scikit-learn's
``KernelPCA`` on the precomputed linear kernel B B^T, which equals PCA of B
(the kernel is centred inside) but needs only the K x K Gram matrix; that
matrix is a sum over parameter shards, so clustering never gathers K x P bits.
The component holding row 0 (the server's mask) is the benign one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import KernelPCA
from sklearn.mixture import GaussianMixture


@dataclass
class Clustering:
    """Result of clustering K masks; index 0 is the server."""

    benign: np.ndarray  # (K,) bool, benign[0] is True
    coords: np.ndarray  # (K, 2) PCA coordinates
    labels: np.ndarray  # (K,) GMM component
    degenerate: bool  # all masks (nearly) identical: everyone is benign


def cluster_from_gram(gram: np.ndarray, seed: int) -> Clustering:
    """PCA(2) via KernelPCA(precomputed) and GaussianMixture(2, random_state=seed)."""
    k = gram.shape[0]
    g = np.asarray(gram, dtype=np.float64)
    centred = g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()
    if k < 3 or np.trace(centred) <= 1e-9 * max(np.trace(g), 1.0):
        return Clustering(np.ones(k, dtype=bool), np.zeros((k, 2)), np.zeros(k, dtype=np.int64), True)
    coords = KernelPCA(n_components=2, kernel="precomputed", random_state=seed).fit_transform(g)
    if np.unique(np.round(coords, 9), axis=0).shape[0] < 2:
        return Clustering(np.ones(k, dtype=bool), coords, np.zeros(k, dtype=np.int64), True)
    labels = GaussianMixture(n_components=2, random_state=seed, reg_covar=1e-6).fit_predict(coords)
    return Clustering(labels == labels[0], coords, labels, False)
