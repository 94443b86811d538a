r"""Model-poisoning attacks: the malicious rows of the N x P update matrix are crafted, not trained.

Every attack here has ``trains = False`` (the round loop skips the malicious
clients' local SGD) and writes the malicious rows in place, so the defense
still sees N updates (SPEC section 11). Updates follow the convention
:math:`g_k = w_t - w_k` and the server steps :math:`w_{t+1} = w_t -
\eta\,\mathrm{AGG}` with :math:`\eta` = ``train.global_lr``; where a paper
writes model changes (:math:`\Delta = w_k - w_t`, added to the model), the
formulas are translated and what the model does is the same.

Two kinds:

* one-round attacks on :class:`ModelPoisoning` (lie, min_max, min_sum,
  fang_trim, fang_krum, sign_flip, ipm, gaussian): each round they read only
  the benign rows (the omniscient threat model of the papers);
* ``poisonedfl`` (:class:`PoisonedFL`): reads no benign update, but keeps
  state across rounds (a fixed sign vector, its own previous update, the
  global model's history).

``spread`` (every :class:`ModelPoisoning` attack, default 0): with :math:`\sigma` the benign
per-coordinate standard deviation, attacker k adds its own noise
:math:`e_k = \text{spread}\cdot\sigma\odot\xi_k`, :math:`\xi_k \sim
\mathcal{N}(0, I)` drawn from ``ctx.generator``, so attackers are not
identical copies (identical rows are trivially clustered by SkyMask, FLAME or
Krum-like rules). With a single benign update :math:`\sigma = 0` and
:math:`|\mu|` is the scale instead. Where an attack has a constraint
(min_max, min_sum, fang_krum), the noisy variants are what the search checks,
so every variant satisfies it; if the noise alone breaks a min-max/min-sum
bound it is halved until it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch

from ..linalg import krum_scores, pairwise_sq_distances
from ..params import bounded
from ..seeding import torch_generator
from .base import Attack, benign_stats, register_attack, round_start

if TYPE_CHECKING:
    from ..config import ExperimentConfig
    from ..context import AttackContext


@dataclass
class SpreadParams:
    """Parameters every :class:`ModelPoisoning` attack shares."""

    spread: float = bounded(0.0, ge=0)  # per-attacker noise, in units of the benign per-coordinate std


def spread_noise(
    spread: float, f: int, mu: torch.Tensor, sigma: torch.Tensor, num_benign: int, generator: torch.Generator
) -> torch.Tensor | None:
    """Independent per-attacker noise ``spread * scale * N(0, I)`` (f x P), or None when spread is 0."""
    if spread == 0 or f == 0:
        return None
    scale = sigma if num_benign > 1 else mu.abs()
    xi = torch.randn(f, mu.numel(), generator=generator, device=generator.device, dtype=torch.float32)
    return spread * scale * xi.to(device=mu.device, dtype=mu.dtype)


def _rows(point: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """The malicious rows: one shared point, plus each attacker's noise if any."""
    return point[None] if noise is None else point + noise


class ModelPoisoning(Attack):
    """Template: benign statistics and spread noise in, malicious rows out (:meth:`craft`)."""

    Params = SpreadParams
    trains = False

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        benign, mu, sigma = benign_stats(updates, malicious)
        f = int(malicious.sum())
        noise = spread_noise(self.p.spread, f, mu, sigma, len(benign), ctx.generator)
        rows = self.craft(updates, malicious, benign, mu, sigma, noise, ctx)
        out = updates.clone()
        out[malicious] = rows.to(out.dtype).expand(f, -1)
        return out

    def craft(
        self,
        updates: torch.Tensor,
        malicious: torch.Tensor,
        benign: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
        noise: torch.Tensor | None,
        ctx: "AttackContext",
    ) -> torch.Tensor:
        """The malicious rows, (f x P) or (1 x P) shared by all attackers."""
        raise NotImplementedError


@dataclass
class LieParams(SpreadParams):
    z: float | None = None  # None: the paper's z from N and f


def paper_z(n: int, f: int) -> float:
    r""":math:`z = \Phi^{-1}((N - s)/N)` with :math:`s = \lfloor N/2 + 1\rfloor - f` (Baruch et al.).

    For f >= N/2 the quantile leaves (0, 1) and is clamped to [1e-6, 1 - 1e-6].
    """
    s = math.floor(n / 2 + 1) - f
    q = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(q)


@register_attack("lie")
class Lie(ModelPoisoning):
    r"""A Little Is Enough (Baruch et al., NeurIPS 2019).

    .. math:: g_m = \mu - z\sigma,\quad s = \lfloor N/2 + 1\rfloor - f,\quad
              z = \Phi^{-1}\left(\frac{N - s}{N}\right)

    with :math:`\mu, \sigma` the per-coordinate mean and standard deviation of
    the benign updates, or a given ``z``.
    """

    Params = LieParams
    paper_z = staticmethod(paper_z)

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        z = self.p.z if self.p.z is not None else paper_z(len(updates), int(malicious.sum()))
        return _rows(mu - z * sigma, noise)


@dataclass
class ShejwalkarParams(SpreadParams):
    deviation: Literal["unit_vec", "sign", "std"] = "unit_vec"
    gamma_init: float = bounded(10.0, gt=0)
    tol: float = bounded(1e-5, gt=0)


def deviation_vector(kind: str, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The perturbation direction d of Shejwalkar & Houmansadr: unit vector of mu, sign of mu, or sigma."""
    if kind == "unit_vec":
        return mu / mu.norm().clamp(min=1e-12)
    if kind == "sign":
        return torch.sign(mu)
    return sigma


def max_gamma(ok: Callable[[float], bool], gamma_init: float, tol: float, max_doublings: int = 60) -> float:
    """Largest gamma >= 0 with ok(gamma), to within ``tol``, for ok true on [0, gamma*] and false beyond.

    The paper's search halves a step from ``gamma_init``; here the bracket is
    first doubled until ok fails (so gamma* > 2 * gamma_init is found too),
    then bisected until it is narrower than ``tol``. The result satisfies ok;
    ``result + tol`` does not (unless the doubling cap was hit).
    """
    if not ok(0.0):
        return 0.0
    lo, hi = 0.0, gamma_init
    for _ in range(max_doublings):
        if not ok(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return lo
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


class Shejwalkar(ModelPoisoning):
    """Shared search of min_max and min_sum: rows ``mu - gamma d (+ noise)`` with the largest feasible gamma.

    The squared distances of a candidate ``a - gamma d`` (``a = mu + noise``) to
    the benign rows are quadratic in gamma,
    ``|a - g_i|^2 - 2 gamma d.(a - g_i) + gamma^2 |d|^2``, so the N x P work is
    done once per noise level and every step of the search is O(f N).
    """

    Params = ShejwalkarParams
    last_gamma: float | None = None  # diagnostics: gamma of the latest round

    def bound(self, benign: torch.Tensor) -> float:
        """The attack's bound, from the benign updates alone."""
        raise NotImplementedError

    def within(self, sq_dists: torch.Tensor, bound: float) -> bool:
        """Do the candidate rows' squared distances to the benign rows (rows x N) satisfy the bound?"""
        raise NotImplementedError

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        d = deviation_vector(self.p.deviation, mu, sigma)
        bound = self.bound(benign)
        e = torch.zeros_like(mu)[None] if noise is None else noise
        for _ in range(30):  # halve the noise until mu + noise is feasible (nothing to halve without noise)
            base = pairwise_sq_distances(mu + e, benign).double()  # |a - g_i|^2
            if noise is None or self.within(base, bound):
                break
            e = e / 2
        else:
            e = torch.zeros_like(mu)[None]
            base = pairwise_sq_distances(mu + e, benign).double()
        a = mu + e
        cross = ((a @ d)[:, None] - (benign @ d)[None, :]).double()  # d.(a - g_i)
        dd = float(d.double() @ d.double())

        def ok(gamma: float) -> bool:
            return self.within((base - 2 * gamma * cross + gamma * gamma * dd).clamp_min(0.0), bound)

        gamma = max_gamma(ok, self.p.gamma_init, self.p.tol)
        self.last_gamma = gamma
        return a - gamma * d


@register_attack("min_max")
class MinMax(Shejwalkar):
    r"""Min-Max (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

    .. math:: g_m = \mu - \gamma d,\quad \gamma = \max\{\gamma :
              \max_i \|g_m - g_i\| \le \max_{i,j} \|g_i - g_j\|\}

    over benign updates :math:`g_i`, with d the unit vector of :math:`\mu`
    (``deviation: unit_vec``), :math:`\mathrm{sign}(\mu)` or :math:`\sigma`;
    gamma by binary search (:func:`max_gamma`).
    """

    def bound(self, benign):
        return float(pairwise_sq_distances(benign).max())

    def within(self, sq_dists, bound):
        return bool(sq_dists.max() <= bound)


@register_attack("min_sum")
class MinSum(Shejwalkar):
    r"""Min-Sum (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

    .. math:: g_m = \mu - \gamma d,\quad \gamma = \max\{\gamma :
              \sum_i \|g_m - g_i\|^2 \le \min_j \sum_i \|g_j - g_i\|^2\}

    over benign updates, with the same deviations and search as min_max.
    """

    def bound(self, benign):
        return float(pairwise_sq_distances(benign).sum(1).min())

    def within(self, sq_dists, bound):
        return bool(sq_dists.sum(1).max() <= bound)


@dataclass
class FangTrimParams(SpreadParams):
    b: float = bounded(2.0, ge=1)  # the push factor is drawn uniformly from [1, b]


@register_attack("fang_trim")
class FangTrim(ModelPoisoning):
    r"""Full-knowledge Trim attack (Fang et al., USENIX Security 2020).

    Per coordinate j, :math:`s_j = \mathrm{sign}(\sum_i g_{ij})` over benign
    updates. Where :math:`s_j > 0` the attackers send values below the benign
    minimum :math:`m_j`, where :math:`s_j \le 0` above the benign maximum
    :math:`M_j`, pushed by a factor :math:`k \sim U[1, b]` drawn per attacker
    and coordinate:

    .. math:: g_{mj} = \begin{cases} m_j / k & s_j > 0, m_j > 0\\
              k\, m_j & s_j > 0, m_j \le 0\\ k\, M_j & s_j \le 0, M_j > 0\\
              M_j / k & s_j \le 0, M_j \le 0 \end{cases}

    (the paper's intervals :math:`[w/b, w]` and :math:`[w, b w]`, b = 2).
    """

    Params = FangTrimParams

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        f = int(malicious.sum())
        down = benign.sum(0) > 0
        lo, hi = benign.min(0).values, benign.max(0).values
        u = torch.rand(f, mu.numel(), generator=ctx.generator, device=ctx.generator.device)
        k = 1 + u.to(device=mu.device, dtype=mu.dtype) * (self.p.b - 1)
        below = torch.where(lo > 0, lo / k, lo * k)
        above = torch.where(hi > 0, hi * k, hi / k)
        rows = torch.where(down, below, above)
        return rows if noise is None else rows + noise


@dataclass
class FangKrumParams(SpreadParams):
    threshold: float = bounded(1e-5, gt=0)  # stop halving lambda below this (the paper's value)


@register_attack("fang_krum")
class FangKrum(ModelPoisoning):
    r"""Full-knowledge Krum attack (Fang et al., USENIX Security 2020).

    All attackers send :math:`-\lambda s` with :math:`s = \mathrm{sign}(\sum_i g_i)`
    over benign updates (so the model moves against the benign direction).
    :math:`\lambda` starts at the paper's upper bound

    .. math:: \lambda_{\max} = \frac{1}{(N - 2f - 1)\sqrt{P}} \min_{i}
              \sum_{l \in \Gamma_i} \|g_l - g_i\| + \frac{1}{\sqrt{P}} \max_i \|g_i\|

    (:math:`\Gamma_i`: the N - f - 2 benign updates nearest to benign
    :math:`g_i`; N - 2f - 1 is clamped to >= 1 for f >= N/2) and is halved
    until Krum (:func:`~skymask_ray.linalg.krum_scores` with the true f)
    selects a malicious row, or until it falls below ``threshold``; then the
    last tried value is sent.
    """

    Params = FangKrumParams
    last_lambda: float | None = None  # diagnostics: lambda of the latest round

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        n, p = len(updates), mu.numel()
        f, nb = int(malicious.sum()), len(benign)
        s = torch.sign(benign.sum(0))
        d_bb = pairwise_sq_distances(benign)
        c = min(n - f - 2, nb - 1)
        term1 = 0.0
        if c >= 1:
            dist = d_bb.sqrt().fill_diagonal_(float("inf"))
            near = dist.topk(c, dim=1, largest=False).values.sum(1).min()
            term1 = float(near) / (max(n - 2 * f - 1, 1) * math.sqrt(p))
        lam = term1 + float(benign.norm(dim=1).max()) / math.sqrt(p)
        d2 = torch.zeros(n, n, dtype=d_bb.dtype, device=d_bb.device)
        d2[:nb, :nb] = d_bb
        while True:
            rows = _rows(-lam * s, noise)
            d2[nb:, :nb] = pairwise_sq_distances(rows, benign).expand(f, nb)
            d2[:nb, nb:] = d2[nb:, :nb].T
            d2[nb:, nb:] = pairwise_sq_distances(rows) if noise is not None else 0.0
            if int(krum_scores(d2, f).argmin()) >= nb or lam / 2 < self.p.threshold:
                break
            lam /= 2
        self.last_lambda = lam
        return rows


@dataclass
class SignFlipParams(SpreadParams):
    scale: float = bounded(1.0, gt=0)


@register_attack("sign_flip")
class SignFlip(ModelPoisoning):
    r"""Sign flipping: :math:`g_m = -c\,\mu` (c = ``scale``, default 1).

    The benign mean reversed, as ByzFL's SignFlipping does; after the
    sign-flipping attack of Li et al., "RSA: Byzantine-Robust Stochastic
    Aggregation Methods for Distributed Learning from Heterogeneous
    Datasets", AAAI 2019 (there each attacker negates its own gradient).
    """

    Params = SignFlipParams

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        return _rows(-self.p.scale * mu, noise)


@dataclass
class IpmParams(SpreadParams):
    eps: float = bounded(0.1, gt=0)


@register_attack("ipm")
class InnerProductManipulation(ModelPoisoning):
    r"""Inner-product manipulation: :math:`g_m = -\epsilon\,\mu`.

    Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation", UAI 2019. A small :math:`\epsilon`
    (default 0.1, the paper's setting against Krum and median) keeps the
    attackers close to the benign ones while making the inner product of the
    aggregate with the true gradient negative.
    """

    Params = IpmParams

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        return _rows(-self.p.eps * mu, noise)


@dataclass
class GaussianParams(SpreadParams):
    mean: float = 0.0
    std: float = bounded(1.0, ge=0)


@register_attack("gaussian")
class Gaussian(ModelPoisoning):
    r"""Gaussian noise: every attacker sends its own :math:`g_m \sim \mathcal{N}(\text{mean}, \text{std}^2 I)`.

    The Gaussian Byzantine behaviour of Blanchard et al., "Machine Learning
    with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """

    Params = GaussianParams

    def craft(self, updates, malicious, benign, mu, sigma, noise, ctx):
        f = int(malicious.sum())
        xi = torch.randn(f, mu.numel(), generator=ctx.generator, device=ctx.generator.device)
        rows = self.p.mean + self.p.std * xi.to(device=mu.device, dtype=mu.dtype)
        return rows if noise is None else rows + noise


def _tensor_or_none(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().cpu().clone()


@dataclass
class PoisonedFLParams:
    scaling_factor: float = bounded(8.0, gt=0)  # c: lambda_t = c * |previous aggregate| (authors' scripts: --sf 8)
    window: int = bounded(50, ge=1)  # rounds between two progress checks (reference code: e % 50 == 0)
    decay: float = bounded(0.7, gt=0, le=1)  # c <- decay * c when the model did not move along s over the window
    min_scaling: float = bounded(0.5, ge=0)  # ... unless decay * c would fall below this (reference code)
    # progress = aligned signs above the binomial(P, 1/2) quantile (k_99)
    confidence: float = bounded(0.99, ge=0.5, lt=1)


def binomial_threshold(d: int, confidence: float) -> float:
    """The ``confidence`` quantile of Binomial(d, 1/2) (scipy's ``binom.ppf``).

    The reference code hard-codes it for its four model sizes (k_95, k_99; e.g. 70415 at 99 % for
    d = 139,960); this reproduces all eight of those numbers exactly, for any d."""
    from scipy.stats import binom

    return float(binom.ppf(confidence, d, 0.5))


@register_attack("poisonedfl")
class PoisonedFL(Attack):
    r"""PoisonedFL (Xie, Fang and Gong, "Model Poisoning Attacks to Federated Learning via
    Multi-Round Consistency", CVPR 2025, arXiv 2404.15611; reference code github.com/xyq7/PoisonedFL,
    ``byzantine.poisonedfl``). No knowledge of the benign updates is used.

    A random sign vector :math:`s \in \{-1, 1\}^P` is drawn once (seeded by the run seed) and every
    malicious client pushes the model along it in every round, so that the attack accumulates
    across rounds instead of cancelling. With :math:`h_t = (w_{t-1} - w_t)/\eta` the aggregate the
    server applied last round and :math:`m_{t-1}` the malicious update of the previous round:

    .. math::

        v_t = \Bigl|\, h_t - m_{t-1}\,\frac{\|h_t\|}{\|m_{t-1}\|} \Bigr|, \qquad
        g_m = -\lambda_t\,\frac{v_t}{\|v_t\|} \odot s, \qquad \lambda_t = c_t \|h_t\|

    (the reference code's magnitude vector: last round's global change with the attack's own
    share removed; :math:`m_{t-1}` is the update the attackers sent the last time any of them was
    sampled, :math:`m_0 = 0`). Every attacker sends the same :math:`g_m`. The minus sign
    is this simulator's convention: the server's step :math:`-\eta g_m` moves the model along
    :math:`+s`. Every ``window`` rounds the attack checks its progress: it counts the coordinates
    where :math:`\mathrm{sign}(w_t - w_{\text{start}})` equals :math:`s` (a coordinate that did
    not move counts with the sign of :math:`w_t`, as in the reference code); below the
    ``confidence`` quantile of Binomial(P, 1/2) the model has not gone the attack's way
    significantly, and :math:`c \leftarrow` ``decay`` :math:`\cdot c` unless that would fall
    below ``min_scaling``. The first round has no history: the malicious rows are zero (the
    reference code sends zero updates then).

    Rounds are the run's rounds, not the attackers' (the reference's loop): :meth:`begin_round`,
    called every round whether or not the cohort holds an attacker, records :math:`h_t`, counts
    the round, runs the progress check in rounds :math:`e = \text{window}, 2\,\text{window},
    \ldots` (0-based) and restarts the window; as in the reference the window's start is the
    model after the window's first round (the reference stores it once round :math:`e` with
    :math:`e \bmod \text{window} = 0` is aggregated), so a check sees window - 1 rounds of
    change. Only :math:`m` waits for a round with attackers.

    Defaults are the reference code's: c = 8 (its scripts' ``--sf 8``), window 50, decay 0.7,
    floor 0.5, confidence 0.99. State (:meth:`state_dict`): s, c, the round count, the previous
    global weights, the previous malicious update and the weights at the start of the window.
    Not composable: s and the window live in the whole model's coordinates.
    """

    Params = PoisonedFLParams
    trains = False
    composable = False

    def __init__(self, params: dict[str, Any] | None, cfg: "ExperimentConfig", num_classes: int = 10) -> None:
        super().__init__(params, cfg, num_classes)
        self.sign: torch.Tensor | None = None  # (P,) int8, +1/-1: the direction the model is pushed
        self.scaling = float(self.p.scaling_factor)
        self.rounds = 0  # rounds begun so far (every round of the run, attackers sampled or not)
        self.prev_weights: torch.Tensor | None = None  # the global weights the latest round began from
        self.history: torch.Tensor | None = None  # h_t: the aggregate applied in the round before this one
        self.prev_update: torch.Tensor | None = None  # the malicious row sent the last time attackers were sampled
        self.window_start: torch.Tensor | None = None
        self.last_aligned: int | None = None  # diagnostics of the latest progress check

    def sign_vector(self, p: int) -> torch.Tensor:
        """s, drawn once from the run seed (int8 +1/-1)."""
        if self.sign is None or self.sign.numel() != p:
            gen = torch_generator(self.cfg.seed, "attack", "poisonedfl", "sign")
            self.sign = torch.where(torch.randn(p, generator=gen) >= 0, 1, -1).to(torch.int8)
        return self.sign

    def check_progress(self, w: torch.Tensor) -> None:
        """The window starts at the weights of round e (0-based) = 1, window + 1, ...; in round e = window,
        2 window, ... c shrinks when the model did not move along s significantly since then (the
        reference's order, see the class docstring)."""
        e = self.rounds
        if e > 0 and (e - 1) % self.p.window == 0:
            self.window_start = w.detach().cpu().clone()
        if e > 0 and e % self.p.window == 0 and self.window_start is not None:
            total = w - self.window_start.to(w.device, w.dtype)
            total = torch.where(total == 0, w, total)
            s = self.sign_vector(w.numel()).to(w.device)
            aligned = int((torch.sign(total).to(torch.int8) == s).sum())
            self.last_aligned = aligned
            if aligned < binomial_threshold(w.numel(), self.p.confidence) and \
                    self.scaling * self.p.decay >= self.p.min_scaling:
                self.scaling *= self.p.decay

    def begin_round(self, round_idx: int, global_weights: torch.Tensor) -> None:
        """Every round: h from the previous round's weights, the progress check, the round count."""
        self.history, self.prev_weights = round_start(self.prev_weights, global_weights, self.cfg.train.global_lr)
        self.check_progress(self.prev_weights)
        self.rounds += 1

    def apply(self, updates: torch.Tensor, malicious: torch.Tensor, ctx: "AttackContext") -> torch.Tensor:
        if not malicious.any():
            return updates
        p = updates.shape[1]
        s = self.sign_vector(p).to(updates.device, updates.dtype)
        h = None if self.history is None else self.history.to(updates.device, updates.dtype)
        out = updates.clone()
        if h is None:
            row = torch.zeros(p, dtype=updates.dtype, device=updates.device)
        else:
            h_norm = h.norm()
            v = h
            if self.prev_update is not None:
                m = self.prev_update.to(updates.device, updates.dtype)
                v = h - m * h_norm / (m.norm() + 1e-9)
            v = v.abs()
            row = -self.scaling * h_norm * v / (v.norm() + 1e-9) * s
        out[malicious] = row
        self.prev_update = row.detach().cpu().clone()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "sign": _tensor_or_none(self.sign), "scaling": float(self.scaling), "rounds": int(self.rounds),
            "prev_weights": _tensor_or_none(self.prev_weights), "prev_update": _tensor_or_none(self.prev_update),
            "window_start": _tensor_or_none(self.window_start),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sign = state.get("sign")
        self.scaling = float(state.get("scaling", self.p.scaling_factor))
        self.rounds = int(state.get("rounds", 0))
        self.prev_weights = state.get("prev_weights")
        self.prev_update = state.get("prev_update")
        self.window_start = state.get("window_start")
        self.history = None  # the next begin_round derives it from prev_weights
