"""FLDetector: flag clients whose updates are inconsistent with an L-BFGS prediction across rounds.

Reference: Zhang, Cao, Gong, Chen, Wang, "FLDetector: Defending Federated
Learning Against Model Poisoning Attacks via Detecting Malicious Clients",
KDD 2022.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..params import bounded
from .base import Aggregate, Defense, all_accepted, mean_of, register_defense


def lbfgs_hvp(s: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""Hessian-vector product :math:`\hat H v` from the L-BFGS compact form (Byrd, Nocedal, Schnabel 1994).

    ``s``, ``y``: (m, P) past model differences :math:`\Delta w` and global-update differences
    :math:`\Delta g`, oldest first. With :math:`A = S^\top Y = L + R` (:math:`R` upper triangular,
    :math:`D = \mathrm{diag}(A)`), :math:`\sigma = y_m^\top s_m / s_m^\top s_m`:

    .. math:: \hat H v = \sigma v - [\sigma S\;\; Y]
        \begin{bmatrix}\sigma S^\top S & L\\ L^\top & -D\end{bmatrix}^{-1}
        \begin{bmatrix}\sigma S^\top v\\ Y^\top v\end{bmatrix}
    """
    s64, y64, v64 = s.double(), y.double(), v.double()
    sy = s64 @ y64.T
    lower = sy.tril(-1)
    sigma = float(y64[-1] @ s64[-1]) / max(float(s64[-1] @ s64[-1]), 1e-300)
    mat = torch.cat(
        [torch.cat([sigma * (s64 @ s64.T), lower], dim=1), torch.cat([lower.T, -torch.diag(sy.diagonal())], dim=1)]
    )
    rhs = torch.cat([sigma * (s64 @ v64), y64 @ v64])
    coef = torch.linalg.lstsq(mat, rhs[:, None]).solution[:, 0]
    m = len(s64)
    out = sigma * v64 - (sigma * coef[:m] @ s64 + coef[m:] @ y64)
    return out.to(v.dtype)


def gap_statistic(scores: np.ndarray, k_max: int, samples: int, seed: int, rtol: float = 1e-4) -> int:
    r"""Number of clusters by the gap statistic (Tibshirani, Walther, Hastie 2001) on 1-D scores.

    Scores are scaled to [0, 1]; :math:`W_k` is the k-means inertia, the reference is uniform on
    [0, 1]: :math:`\mathrm{Gap}(k) = \overline{\log W^*_k} - \log W_k`; the answer is the smallest k
    with :math:`\mathrm{Gap}(k) \ge \mathrm{Gap}(k+1) - s_{k+1}`, :math:`s_k = \mathrm{sd}(\log W^*_k)\sqrt{1 + 1/B}`.
    Scores whose range is below ``rtol`` times their mean are one group (the scaling would
    otherwise blow float noise up into clusters).
    """
    from sklearn.cluster import KMeans

    n = len(scores)
    span = float(scores.max() - scores.min())
    if n < 2 or span <= rtol * abs(float(scores.mean())):
        return 1
    x = ((scores - scores.min()) / span).reshape(-1, 1)
    rng = np.random.default_rng(seed)
    refs = rng.uniform(size=(samples, n, 1))
    k_max = min(k_max, n)
    tiny = 1e-12 * n
    gap, sd = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(1, k_max + 1):
            w = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x).inertia_
            ref = np.log([max(KMeans(n_clusters=k, n_init=1, random_state=seed).fit(r).inertia_, tiny) for r in refs])
            gap.append(float(ref.mean() - math.log(max(w, tiny))))
            sd.append(float(ref.std() * math.sqrt(1 + 1 / samples)))
            if k >= 2 and gap[k - 2] >= gap[k - 1] - sd[k - 1]:
                return k - 1
    return k_max


@dataclass
class FLDetectorParams:
    window: int = bounded(10, ge=1)  # N: rounds of L-BFGS pairs and of suspicion scores kept
    k_max: int = bounded(10, ge=2)  # largest cluster count the gap statistic tries
    gap_samples: int = bounded(20, ge=1)  # B: uniform reference sets of the gap statistic


@register_defense("fldetector")
class FLDetector(Defense):
    r"""FLDetector (Zhang et al., KDD 2022).

    Round t, with global model :math:`w_t` (``ctx.global_weights``):

    1. Predict each client's update :math:`\hat g_k^t = g_k^{t-1} + \hat H_t (w_t - w_{t-1})`, with
       :math:`\hat H_t` the L-BFGS approximation (:func:`lbfgs_hvp`) from the last ``window`` pairs
       :math:`(w_r - w_{r-1},\ \bar g_r - \bar g_{r-1})` of global-model and aggregate differences.
    2. Normalised distance :math:`d_k^t = \|\hat g_k^t - g_k^t\| / \sum_j \|\hat g_j^t - g_j^t\|`;
       suspicion :math:`s_k = \frac{1}{W}\sum_{r=t-W+1}^{t} d_k^r` over the window :math:`W`.
    3. Once :math:`W` rounds are scored: if the gap statistic finds more than one cluster in
       :math:`s`, 2-means on :math:`s` flags the cluster with the larger mean score.

    :math:`\mathrm{AGG}` is the mean of the unflagged updates. State (on the instance): the last
    global model, aggregate and client updates, the pair and score windows. Histories are kept per
    client id (``ctx.client_ids``): a client missing from a round (its update was dropped as
    invalid) gets no score for that round or the next, and is scored over the rounds it has; a
    client with no score in the window is not flagged. Without ids, a change in the number of rows
    restarts the history (``info["history_reset"]``). Only the ids a round saw are stored (last
    round's updates, each window round's scores), so a sampled cohort's state is O(window x K),
    whatever the population.
    """

    Params = FLDetectorParams

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.prev_weights: torch.Tensor | None = None
        self.prev_aggregate: torch.Tensor | None = None
        self.prev_ids: torch.Tensor | None = None  # (K',) the ids of last round's clients
        self.prev_updates: torch.Tensor | None = None  # (K' x P) their updates, row i = prev_ids[i]
        self.s_hist: deque[torch.Tensor] = deque(maxlen=self.p.window)
        self.y_hist: deque[torch.Tensor] = deque(maxlen=self.p.window)
        self.dist_hist: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=self.p.window)  # (ids, scores)

    def _distances(self, updates: torch.Tensor, ids: torch.Tensor, hv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, prediction errors ||g_k^{t-1} + H v - g_k^t||) of the clients that have a previous update,
        normalised to sum 1; rows in blocks of 128."""
        pos = _positions(self.prev_ids, ids)
        have = pos >= 0
        rows, cur = pos[have], updates[have]
        err = torch.cat([
            (self.prev_updates[rows[i : i + 128]] + hv - cur[i : i + 128]).norm(dim=1)
            for i in range(0, len(rows), 128)
        ]) if len(rows) else cur.new_zeros(0)
        return ids[have], err / err.sum().clamp_min(1e-30)

    def _scores(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(window, len(ids)) scores of ``ids`` in each window round, NaN where a client had none."""
        out = torch.full((len(self.dist_hist), len(ids)), float("nan"), dtype=dtype, device=ids.device)
        for r, (seen, dist) in enumerate(self.dist_hist):
            pos = _positions(seen.to(ids.device), ids)
            out[r, pos >= 0] = dist.to(ids.device, dtype)[pos[pos >= 0]]
        return out

    def aggregate(self, updates, ctx):
        w = ctx.global_weights.to(updates.device, updates.dtype)
        info: dict[str, Any] = {}
        ids = ctx.client_ids
        if ids is None:
            ids = torch.arange(len(updates))
            if self.prev_ids is not None and len(self.prev_ids) != len(updates):
                self.prev_updates = self.prev_ids = None
                self.dist_hist.clear()
                info["history_reset"] = True
        ids = ids.to(updates.device)
        if self.prev_updates is not None and self.s_hist:
            hv = lbfgs_hvp(torch.stack(list(self.s_hist)), torch.stack(list(self.y_hist)), w - self.prev_weights)
            self.dist_hist.append(self._distances(updates, ids, hv))
        accepted = all_accepted(updates)
        if len(self.dist_hist) == self.p.window:
            scores = self._scores(ids, updates.dtype).nanmean(dim=0)
            known = ~scores.isnan()
            flagged = np.zeros(len(ids), dtype=bool)
            if int(known.sum()) > 1:
                flagged[known.cpu().numpy()] = self._flag(scores[known].double().cpu().numpy(), ctx)
            accepted = torch.as_tensor(~flagged, device=updates.device)
            info["suspicion"] = scores.cpu().tolist()
        else:
            info["warmup"] = True
        agg = mean_of(updates, accepted)
        if self.prev_weights is not None:
            self.s_hist.append(w - self.prev_weights)
            self.y_hist.append(agg - self.prev_aggregate)
        self.prev_ids, self.prev_updates = ids.clone(), updates.clone()
        self.prev_weights, self.prev_aggregate = w.clone(), agg.clone()
        info["flagged"] = int((~accepted).sum())
        return Aggregate(agg, accepted, None, info)

    def _flag(self, scores: np.ndarray, ctx) -> np.ndarray:
        """Boolean mask of flagged clients: none if the gap statistic sees one cluster."""
        from sklearn.cluster import KMeans

        seed = self.random_state(ctx, "fldetector")
        if gap_statistic(scores, self.p.k_max, self.p.gap_samples, seed) <= 1:
            return np.zeros(len(scores), dtype=bool)
        labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(scores.reshape(-1, 1))
        bad = int(scores[labels == 1].mean() > scores[labels == 0].mean())
        return labels == bad

    def state_dict(self) -> dict[str, Any]:
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        return {
            "prev_weights": cpu(self.prev_weights),
            "prev_aggregate": cpu(self.prev_aggregate),
            "prev_updates": cpu(self.prev_updates),
            "prev_ids": cpu(self.prev_ids),
            "s_hist": [t.cpu() for t in self.s_hist],
            "y_hist": [t.cpu() for t in self.y_hist],
            "dist_ids": [i.cpu() for i, _ in self.dist_hist],
            "dist_hist": [d.cpu() for _, d in self.dist_hist],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_weights = state.get("prev_weights")
        self.prev_aggregate = state.get("prev_aggregate")
        self.prev_updates = state.get("prev_updates")
        self.prev_ids = state.get("prev_ids")
        dist = state.get("dist_hist", [])
        if "dist_ids" in state:
            dist = list(zip(state["dist_ids"], dist))
        else:  # a checkpoint of the population-wide format: rows by client id, NaN where none
            seen = state.get("prev_seen")
            if self.prev_updates is not None:
                self.prev_ids = torch.arange(len(self.prev_updates)) if seen is None else seen.nonzero().flatten()
                self.prev_updates = self.prev_updates[self.prev_ids]
            dist = [((~d.isnan()).nonzero().flatten(), d[~d.isnan()]) for d in dist]
        for name, values in (("s_hist", state.get("s_hist", [])), ("y_hist", state.get("y_hist", [])),
                             ("dist_hist", dist)):
            getattr(self, name).clear()
            getattr(self, name).extend(values)


def _positions(keys: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
    """Index of each ``query`` id in ``keys`` (distinct ids), -1 where it is not there."""
    if keys is None or not len(keys):
        return torch.full_like(query, -1)
    order = torch.argsort(keys)
    where = torch.searchsorted(keys[order], query).clamp(max=len(keys) - 1)
    return torch.where(keys[order][where] == query, order[where], torch.full_like(query, -1))
