"""The adaptive attack: the search over alpha and its own run of SkyMask."""

from __future__ import annotations

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.errors import ConfigError

from .helpers import make_cfg


def build(params: dict | None = None, epochs: int = 5):
    cfg = make_cfg("adaptive", params, clients=8, model="lr")
    cfg.skymask.mask_epochs = epochs
    return ATTACKS.get("adaptive")(params, cfg, 3)


def test_search_keeps_the_largest_alpha_its_simulation_accepts(tiny_world, monkeypatch):
    w = tiny_world
    attack = build({"search_steps": 6})
    ctx = w.ctx()
    mu = w.updates[~w.malicious].mean(0)
    harmful = ATTACKS.get("min_max")(None, make_cfg("min_max"), 3).apply(w.updates, w.malicious, w.ctx())[w.malicious]
    threshold = 0.37

    def fake_simulate(updates, g0, ctx, seed):
        alpha = float((updates[w.malicious][0] - mu).norm() / (harmful[0] - mu).norm())
        accepted = torch.ones(len(updates), dtype=torch.bool)
        accepted[w.malicious] = alpha <= threshold
        return accepted

    monkeypatch.setattr(attack, "simulate", fake_simulate)
    out = attack.apply(w.updates, w.malicious, ctx)
    assert threshold - 1 / 2**6 <= attack.last_alpha <= threshold
    assert len(attack.last_trials) == 7
    torch.testing.assert_close(out[w.malicious], mu + attack.last_alpha * (harmful - mu))
    assert torch.equal(out[~w.malicious], w.updates[~w.malicious])


def test_search_takes_max_alpha_when_it_passes(tiny_world, monkeypatch):
    attack = build({"max_alpha": 2.0})
    monkeypatch.setattr(attack, "simulate", lambda u, g0, ctx, seed: torch.ones(len(u), dtype=torch.bool))
    attack.apply(tiny_world.updates, tiny_world.malicious, tiny_world.ctx())
    assert attack.last_alpha == 2.0 and len(attack.last_trials) == 1


def test_end_to_end_result_is_accepted_by_its_own_skymask(tiny_world):
    w = tiny_world
    attack = build({"search_steps": 3})
    assert not attack.trains and attack.needs_server_update
    out = attack.apply(w.updates, w.malicious, w.ctx(seed=1))
    assert out.shape == w.updates.shape
    assert torch.equal(out[~w.malicious], w.updates[~w.malicious])
    assert 1 <= len(attack.last_trials) <= 4
    alpha = attack.last_alpha
    assert 0.0 <= alpha <= 1.0
    if alpha > 0:
        share = dict(attack.last_trials)[alpha]
        assert share >= attack.p.accept_fraction
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(1)))
    again = attack.simulate(out, w.server_update, w.ctx(), seed)
    if alpha > 0:
        assert again[w.malicious].all()


def test_own_server_model_when_server_steps_given(tiny_world):
    w = tiny_world
    attack = build({"search_steps": 1, "server_steps": 3}, epochs=2)
    ctx = w.ctx()
    ctx.server_update = None
    g0 = attack.server_update(w.ctx())
    assert g0.shape == (w.spec.numel,) and g0.abs().sum() > 0
    out = attack.apply(w.updates, w.malicious, ctx)
    assert out.shape == w.updates.shape


@pytest.mark.parametrize("params,match", [
    ({"base": "label_flip"}, "must be a model-poisoning attack"),
    ({"base": "layer", "base_params": {"rest": "own"}}, "must be a model-poisoning attack"),
    ({"search_steps": -1}, "search_steps"),
    ({"accept_fraction": 0}, "accept_fraction"),
    ({"base_params": {"tol": -1}}, "tol must be"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("adaptive").check(make_cfg("adaptive", params))
