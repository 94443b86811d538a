"""Split a training set into a clean root set and per-client shards.

* root (SPEC section 3): ``root_size`` samples drawn first and removed from the
  clients' pool; label 1 takes fraction ``p``, the rest is spread evenly.
* bias (the paper's non-IID split): clients form C groups; a sample of label y
  goes to group y with probability b, to each other group with (1-b)/(C-1),
  then to a uniform client of the group; client order is then permuted.
* dirichlet(alpha) label skew, iid, and subject (natural ids, e.g. HAR).

Each sample goes to one client. A population whose N * samples_per_client
exceeds the training set is not split but seeded: each client draws its
samples from its own seed when it is trained (:mod:`.shards`).
"""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError


def split_root(
    labels: np.ndarray, root_size: int, root_p: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return (root indices, remaining indices); label 1 gets round(p*root_size) of the root."""
    if root_size >= len(labels):
        raise ConfigError(f"root_size {root_size} must be smaller than the training set ({len(labels)})")
    counts = np.zeros(num_classes, dtype=np.int64)
    special = 1 if num_classes > 1 else 0
    counts[special] = int(round(root_p * root_size))
    rest = root_size - counts[special]
    others = [c for c in range(num_classes) if c != special]
    if others:
        counts[others] = rest // len(others)
        for c in others[: rest % len(others)]:
            counts[c] += 1
    else:
        counts[special] = root_size
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if counts[c] > len(pool):
            raise ConfigError(f"root set wants {counts[c]} samples of class {c}, the data has {len(pool)}")
        chosen.append(rng.choice(pool, size=counts[c], replace=False))
    root = np.sort(np.concatenate(chosen)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[root] = False
    return root, np.flatnonzero(mask)


def bias_split(
    labels: np.ndarray, idx: np.ndarray, n_clients: int, bias: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The paper's non-IID split (bias b; b = 1/C is IID)."""
    groups = [g for g in np.array_split(np.arange(n_clients), num_classes)]
    nonempty = [g for g in range(num_classes) if len(groups[g])]
    y = labels[idx]
    c = num_classes
    probs = np.full((c, c), (1.0 - bias) / max(c - 1, 1))
    np.fill_diagonal(probs, bias if c > 1 else 1.0)
    u = rng.random(len(idx))
    cdf = np.cumsum(probs, axis=1)
    group = np.minimum((u[:, None] > cdf[y]).sum(axis=1), c - 1)
    empty = np.array([len(groups[g]) == 0 for g in group])
    if empty.any():
        group[empty] = rng.choice(nonempty, size=int(empty.sum()))
    sizes = np.array([len(groups[g]) for g in group])
    offset = (rng.random(len(idx)) * sizes).astype(np.int64)
    starts = np.array([groups[g][0] for g in group])
    client = starts + np.minimum(offset, sizes - 1)
    out = [np.sort(idx[client == k]) for k in range(n_clients)]
    perm = rng.permutation(n_clients)
    return [out[p] for p in perm]


def dirichlet_split(
    labels: np.ndarray, idx: np.ndarray, n_clients: int, alpha: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: for every class, client shares ~ Dirichlet(alpha)."""
    y = labels[idx]
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in range(num_classes):
        pool = rng.permutation(idx[y == c])
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares) * len(pool)).astype(np.int64)[:-1]
        for k, chunk in enumerate(np.split(pool, cuts)):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def iid_split(idx: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform random split into near-equal shards."""
    return [np.sort(s) for s in np.array_split(rng.permutation(idx), n_clients)]


def subject_split(groups: np.ndarray, idx: np.ndarray, n_clients: int) -> list[np.ndarray]:
    """One client per natural group id (HAR: subject); needs exactly that many clients."""
    ids = np.unique(groups[idx])
    if len(ids) != n_clients:
        raise ConfigError(f"partition 'subject' needs clients = {len(ids)} (one per subject), got {n_clients}")
    return [idx[groups[idx] == s] for s in ids]


def split_clients(
    labels: np.ndarray,
    idx: np.ndarray,
    n_clients: int,
    cfg: DataConfig,
    num_classes: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split ``idx`` by the configured partition, then cap each client at ``samples_per_client``.

    Every sample goes to one client (N x S beyond the data leaves clients short of S: such a
    population is seeded instead, :func:`~skymask_ray.data.shards.client_shards`)."""
    if cfg.partition == "bias":
        parts = bias_split(labels, idx, n_clients, cfg.bias, num_classes, rng)
    elif cfg.partition == "dirichlet":
        parts = dirichlet_split(labels, idx, n_clients, cfg.alpha, num_classes, rng)
    elif cfg.partition == "iid":
        parts = iid_split(idx, n_clients, rng)
    elif cfg.partition == "subject":
        if groups is None:
            raise ConfigError(f"partition 'subject' needs a dataset with subject ids (har), got {cfg.dataset!r}")
        parts = subject_split(groups, idx, n_clients)
    else:
        raise ConfigError(f"unknown partition {cfg.partition!r}")
    if cfg.samples_per_client is not None:
        parts = [p if len(p) <= cfg.samples_per_client else np.sort(rng.choice(p, cfg.samples_per_client, replace=False))
                 for p in parts]
    return parts
