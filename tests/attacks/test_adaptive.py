"""The adaptive attack: the search over alpha and its own run of SkyMask."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.errors import ConfigError

from .helpers import make_cfg


def build(params: dict | None = None, epochs: int = 5):
    cfg = make_cfg("adaptive", params, clients=8, model="lr")
    cfg.skymask.mask_epochs = epochs
    return ATTACKS.get("adaptive")(params, cfg, 3)


def harmful_rows(w) -> torch.Tensor:
    return ATTACKS.get("min_max")(None, make_cfg("min_max"), 3).apply(w.updates, w.malicious, w.ctx())[w.malicious]


def test_grid_search_maximises_alpha_times_accepted_share(tiny_world, monkeypatch):
    w = tiny_world
    attack = build({"search_steps": 4, "anchor": "mean", "cluster_seeds": 2})
    mu = w.updates[~w.malicious].mean(0)
    harmful = harmful_rows(w)
    # attacker 0 passes for alpha <= 0.3, attacker 1 for alpha <= 0.6: shares 0, 0.5 (0.5), 0.5 (0.25), 1 (0.125)
    limits = [0.3, 0.6]

    def fake_simulate(updates, g0, ctx, seeds):
        alpha = float((updates[w.malicious][0] - mu).norm() / (harmful[0] - mu).norm())
        accepted = torch.ones(len(seeds), len(updates), dtype=torch.bool)
        for k, limit in enumerate(limits):
            accepted[:, k] = alpha <= limit
        return accepted

    monkeypatch.setattr(attack, "simulate", fake_simulate)
    out = attack.apply(w.updates, w.malicious, w.ctx())
    assert attack.last_trials == [(1.0, 0.0), (0.5, 0.5), (0.25, 1.0)]
    assert attack.last_alpha == 0.5  # 0.5 * 0.5 beats 0.25 * 1.0 and the untried 0.125
    torch.testing.assert_close(out[w.malicious], mu + 0.5 * (harmful - mu))
    assert torch.equal(out[~w.malicious], w.updates[~w.malicious])


def test_accept_fraction_excludes_candidates_below_it(tiny_world, monkeypatch):
    w = tiny_world
    attack = build({"search_steps": 2, "anchor": "mean", "accept_fraction": 1.0})
    monkeypatch.setattr(attack, "simulate", lambda u, g0, ctx, seeds: torch.stack(
        [torch.tensor([True, False] + [True] * (len(u) - 2))] * len(seeds)))
    out = attack.apply(w.updates, w.malicious, w.ctx())
    assert attack.last_alpha == 0.0 and len(attack.last_trials) == 3
    mu = w.updates[~w.malicious].mean(0)
    torch.testing.assert_close(out[w.malicious], mu.expand(2, -1))


def test_benign_anchors_are_distinct_accepted_benign_rows(tiny_world, monkeypatch):
    w = tiny_world
    attack = build({"search_steps": 1})
    rejected_benign = 2  # the simulation rejects benign client 2 and, at alpha > 0, all attackers
    mu = w.updates[~w.malicious].mean(0)

    def fake_simulate(updates, g0, ctx, seeds):
        accepted = torch.ones(len(seeds), len(updates), dtype=torch.bool)
        accepted[:, rejected_benign] = False
        if not torch.isin(updates[w.malicious], updates[~w.malicious]).all():
            accepted[:, w.malicious] = False
        return accepted

    monkeypatch.setattr(attack, "simulate", fake_simulate)
    out = attack.apply(w.updates, w.malicious, w.ctx())
    assert attack.last_alpha == 0.0 and attack.last_trials[0][0] == 0.0
    rows = out[w.malicious]
    assert not torch.equal(rows[0], rows[1])
    for row in rows:
        matches = [k for k in range(len(w.updates)) if not w.malicious[k] and torch.equal(row, w.updates[k])]
        assert matches and rejected_benign not in matches
    assert not torch.equal(rows[0], mu)


def test_end_to_end_sends_the_best_scoring_candidate(tiny_world):
    w = tiny_world
    attack = build({"search_steps": 3})
    assert not attack.trains and attack.needs_server_update
    out = attack.apply(w.updates, w.malicious, w.ctx(seed=1))
    assert out.shape == w.updates.shape
    assert torch.equal(out[~w.malicious], w.updates[~w.malicious])
    assert 2 <= len(attack.last_trials) <= 5
    alpha = attack.last_alpha
    shares = dict(attack.last_trials[1:])
    assert alpha == 0.0 or shares[alpha] >= attack.p.accept_fraction
    best = alpha * shares.get(alpha, 0.0)
    assert all(a * s <= best + 1e-12 for a, s in shares.items() if s >= attack.p.accept_fraction)


def test_fine_grained_base_with_mean_rest(tiny_world):
    w = tiny_world
    attack = build({"search_steps": 1, "base": "layer", "base_params": {"rest": "mean", "layers": "last"}}, epochs=2)
    out = attack.apply(w.updates, w.malicious, w.ctx())
    assert out.shape == w.updates.shape and torch.equal(out[~w.malicious], w.updates[~w.malicious])


def test_own_server_model_when_server_steps_given(tiny_world):
    w = tiny_world
    attack = build({"search_steps": 1, "server_steps": 3}, epochs=2)
    ctx = dataclasses.replace(w.ctx(), server_update=None)
    g0 = attack.server_update(ctx)
    assert g0.shape == (w.spec.numel,) and g0.abs().sum() > 0
    out = attack.apply(w.updates, w.malicious, ctx)
    assert out.shape == w.updates.shape


@pytest.mark.parametrize("params,match", [
    ({"base": "label_flip"}, "must be a model-poisoning attack"),
    ({"base": "layer", "base_params": {"rest": "own"}}, "must be a model-poisoning attack"),
    ({"base": "adaptive"}, "must be a model-poisoning attack"),
    ({"search_steps": -1}, "search_steps"),
    ({"accept_fraction": 0}, "accept_fraction"),
    ({"anchor": "median"}, "anchor must be"),
    ({"cluster_seeds": 0}, "cluster_seeds"),
    ({"base_params": {"tol": -1}}, "tol must be"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("adaptive").check(make_cfg("adaptive", params))
