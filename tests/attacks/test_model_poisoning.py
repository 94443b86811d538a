"""Defining properties of the model-poisoning attacks (lie, min_max, min_sum, fang_*, sign_flip, ipm, gaussian)."""

from __future__ import annotations

import math

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.attacks.model_poisoning import deviation_vector, max_gamma, paper_z
from skymask_ray.linalg import krum_scores, pairwise_sq_distances

from .helpers import make_cfg, make_ctx, make_updates

FRACTIONS = [0.2, 0.5, 0.8, 0.95]


def run(name: str, params: dict | None, updates: torch.Tensor, malicious: torch.Tensor, seed: int = 0):
    attack = ATTACKS.get(name)(params, make_cfg(name, params, clients=len(updates)), 10)
    return attack, attack.apply(updates, malicious, make_ctx(updates, malicious, seed=seed))


def split(n: int, fraction: float) -> int:
    return int(round(n * fraction))


def max_benign_distance(benign: torch.Tensor) -> float:
    return max(float((a - b).norm()) for a in benign for b in benign)


@pytest.mark.parametrize("z_case", [(10, 2, 0.2533471), (50, 10, 0.4676988), (20, 4, 0.3853205)])
def test_paper_z_matches_baruch_formula(z_case):
    n, f, expected = z_case
    assert paper_z(n, f) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_lie_is_mu_minus_z_sigma(fraction):
    n = 20
    updates, mal = make_updates(n, split(n, fraction), 30)
    _, out = run("lie", None, updates, mal)
    benign = updates[~mal]
    mu = benign.mean(0)
    sigma = benign.std(0) if len(benign) > 1 else torch.zeros_like(mu)
    s = math.floor(n / 2 + 1) - int(mal.sum())
    q = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64))
    torch.testing.assert_close(out[mal], (mu - z * sigma).expand(int(mal.sum()), -1))


def test_lie_with_given_z():
    updates, mal = make_updates(10, 3, 12)
    _, out = run("lie", {"z": 1.5}, updates, mal)
    benign = updates[~mal]
    torch.testing.assert_close(out[mal][0], benign.mean(0) - 1.5 * benign.std(0))


def test_max_gamma_finds_boundary_beyond_initial_bracket():
    g = max_gamma(lambda x: x <= 123.456, gamma_init=1.0, tol=1e-6)
    assert 123.456 - 1e-6 <= g <= 123.456


@pytest.mark.parametrize("deviation", ["unit_vec", "sign", "std"])
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_min_max_within_bound_and_gamma_maximal(deviation, fraction):
    n, p = 20, 40
    updates, mal = make_updates(n, split(n, fraction), p, seed=1)
    attack, out = run("min_max", {"deviation": deviation}, updates, mal)
    benign = updates[~mal]
    bound = max_benign_distance(benign)
    for row in out[mal]:
        assert max(float((row - b).norm()) for b in benign) <= bound + 1e-9
    mu, sigma = benign.mean(0), (benign.std(0) if len(benign) > 1 else torch.zeros(p, dtype=benign.dtype))
    d = deviation_vector(deviation, mu, sigma)
    torch.testing.assert_close(out[mal][0], mu - attack.last_gamma * d)
    if bound > 0:
        beyond = mu - (attack.last_gamma + 2 * attack.p.tol) * d
        assert max(float((beyond - b).norm()) for b in benign) > bound


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_min_sum_within_bound_and_gamma_maximal(fraction):
    n, p = 20, 40
    updates, mal = make_updates(n, split(n, fraction), p, seed=2)
    attack, out = run("min_sum", None, updates, mal)
    benign = updates[~mal]
    bound = min(sum(float((a - b).square().sum()) for b in benign) for a in benign)

    def cost(row: torch.Tensor) -> float:
        return sum(float((row - b).square().sum()) for b in benign)

    assert cost(out[mal][0]) <= bound + 1e-9
    mu = benign.mean(0)
    d = mu / mu.norm()
    if len(benign) > 1:
        assert attack.last_gamma > 0
        assert cost(mu - (attack.last_gamma + 2 * attack.p.tol) * d) > bound


def test_min_sum_is_stricter_than_min_max():
    updates, mal = make_updates(20, 4, 40, seed=3)
    mm, _ = run("min_max", None, updates, mal)
    ms, _ = run("min_sum", None, updates, mal)
    assert 0 < ms.last_gamma < mm.last_gamma


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_fang_trim_pushes_beyond_benign_extremes(fraction):
    n, p = 20, 50
    updates, mal = make_updates(n, split(n, fraction), p, seed=4)
    _, out = run("fang_trim", None, updates, mal)
    benign = updates[~mal]
    lo, hi = benign.min(0).values, benign.max(0).values
    down = benign.sum(0) > 0
    rows = out[mal]
    assert (rows[:, down] <= lo[down]).all()
    assert (rows[:, ~down] >= hi[~down]).all()
    assert (rows[:, down] >= torch.minimum(2 * lo[down], lo[down] / 2)).all()
    assert (rows[:, ~down] <= torch.maximum(2 * hi[~down], hi[~down] / 2)).all()
    if len(rows) > 1:
        assert not torch.equal(rows[0], rows[1])  # factors drawn per attacker


def brute_force_krum(updates: torch.Tensor, f: int) -> int:
    n = len(updates)
    m = min(max(n - f - 2, 1), n - 1)
    scores = []
    for i in range(n):
        d = sorted(float((updates[i] - updates[j]).square().sum()) for j in range(n) if j != i)
        scores.append(sum(d[:m]))
    return min(range(n), key=lambda i: scores[i])


def fang_lambda_max(benign: torch.Tensor, n: int, f: int) -> float:
    p = benign.shape[1]
    c = n - f - 2
    term1 = 0.0
    if c >= 1:
        sums = []
        for i, a in enumerate(benign):
            d = sorted(float((a - b).norm()) for j, b in enumerate(benign) if j != i)
            sums.append(sum(d[:c]))
        term1 = min(sums) / (max(n - 2 * f - 1, 1) * math.sqrt(p))
    return term1 + max(float(b.norm()) for b in benign) / math.sqrt(p)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.8])
def test_fang_krum_makes_krum_pick_a_malicious_update(fraction):
    n, p = 20, 30
    f = split(n, fraction)
    g = torch.Generator().manual_seed(5)
    updates = torch.randn(n, p, generator=g, dtype=torch.float64)
    mal = torch.zeros(n, dtype=torch.bool)
    mal[:f] = True
    updates[mal] = 0.0
    attack, out = run("fang_krum", None, updates, mal)
    assert mal[brute_force_krum(out, f)]
    benign = updates[~mal]
    s = torch.sign(benign.sum(0))
    torch.testing.assert_close(out[mal], (-attack.last_lambda * s).expand(f, -1))
    lam_max = fang_lambda_max(benign, n, f)
    halvings = math.log2(lam_max / attack.last_lambda)
    assert halvings == pytest.approx(round(halvings), abs=1e-9)
    if round(halvings) > 0:  # the previous, larger lambda was not chosen by Krum
        bigger = updates.clone()
        bigger[mal] = -2 * attack.last_lambda * s
        assert not mal[brute_force_krum(bigger, f)]


def test_krum_scores_match_brute_force():
    updates, _ = make_updates(9, 0, 7, seed=6)
    scores = krum_scores(pairwise_sq_distances(updates), 2)
    assert int(scores.argmin()) == brute_force_krum(updates, 2)


def test_sign_flip_and_ipm_scale_the_benign_mean():
    updates, mal = make_updates(10, 3, 12)
    mu = updates[~mal].mean(0)
    _, out = run("sign_flip", None, updates, mal)
    torch.testing.assert_close(out[mal][1], -mu)
    _, out = run("ipm", {"eps": 0.3}, updates, mal)
    torch.testing.assert_close(out[mal][2], -0.3 * mu)


def test_gaussian_draws_independent_noise_with_the_given_moments():
    updates, mal = make_updates(10, 5, 4000, dtype=torch.float32)
    _, out = run("gaussian", {"mean": 2.0, "std": 3.0}, updates, mal)
    rows = out[mal]
    assert rows.mean().item() == pytest.approx(2.0, abs=0.05)
    assert rows.std().item() == pytest.approx(3.0, rel=0.02)
    assert not torch.equal(rows[0], rows[1])


MODEL_POISONING = ["lie", "min_max", "min_sum", "fang_trim", "fang_krum", "sign_flip", "ipm", "gaussian"]


@pytest.mark.parametrize("name", MODEL_POISONING)
def test_spread_makes_attackers_distinct(name):
    updates, mal = make_updates(20, 6, 25, seed=7)
    _, plain = run(name, None, updates, mal)
    _, spread = run(name, {"spread": 0.5}, updates, mal)
    rows = spread[mal]
    d = pairwise_sq_distances(rows)
    assert (d + torch.eye(len(rows), dtype=d.dtype) > 0).all()
    assert not torch.equal(spread[mal], plain[mal])
    assert torch.equal(spread[~mal], updates[~mal])


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
def test_spread_variants_still_satisfy_the_bound(name):
    updates, mal = make_updates(20, 6, 25, seed=8)
    _, out = run(name, {"spread": 1.0}, updates, mal)
    benign = updates[~mal]
    if name == "min_max":
        bound = pairwise_sq_distances(benign).max()
        assert (pairwise_sq_distances(out[mal], benign).max(1).values <= bound * (1 + 1e-9)).all()
    else:
        bound = pairwise_sq_distances(benign).sum(1).min()
        assert (pairwise_sq_distances(out[mal], benign).sum(1) <= bound * (1 + 1e-9)).all()


def test_spread_with_one_benign_update_uses_mean_scale():
    updates, mal = make_updates(20, 19, 10)
    _, out = run("lie", {"spread": 1.0}, updates, mal)
    assert not torch.equal(out[mal][0], out[mal][1])


def test_same_generator_seed_gives_same_attack():
    updates, mal = make_updates(12, 4, 20)
    _, a = run("fang_trim", {"spread": 0.3}, updates, mal, seed=3)
    _, b = run("fang_trim", {"spread": 0.3}, updates, mal, seed=3)
    _, c = run("fang_trim", {"spread": 0.3}, updates, mal, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
