"""The layer and parameter wrappers: base attack on the chosen coordinates, the rest exactly benign."""

from __future__ import annotations

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.errors import ConfigError

from .helpers import make_cfg, make_ctx, make_updates, two_layer_spec


def build(name: str, params: dict):
    return ATTACKS.get(name)(params, make_cfg(name, params), 10)


def trained_updates(n: int = 12, f: int = 4, seed: int = 0):
    """Malicious rows hold their own (honest) trained updates, as when the wrapper trains."""
    updates, mal = make_updates(n, f, two_layer_spec().numel, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    updates[mal] = updates[~mal][:f] + 0.1 * torch.randn(f, updates.shape[1], generator=g, dtype=updates.dtype)
    return updates, mal


def fc2_coords() -> torch.Tensor:
    sl = two_layer_spec().slices()
    return torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in ("fc2.weight", "fc2.bias")])


@pytest.mark.parametrize("layers", [["fc2"], "last", ["fc2.weight", "fc2.bias"]])
def test_layer_rest_own_keeps_the_clients_own_update(layers):
    updates, mal = trained_updates()
    attack = build("layer", {"base": "min_max", "layers": layers})
    assert attack.trains  # rest 'own' needs the clients' honest training
    spec = two_layer_spec()
    out = attack.apply(updates, mal, make_ctx(updates, mal, spec))
    j = fc2_coords()
    rest = torch.ones(spec.numel, dtype=torch.bool)
    rest[j] = False
    assert torch.equal(out[mal][:, rest], updates[mal][:, rest])
    assert torch.equal(out[~mal], updates[~mal])
    base = ATTACKS.get("min_max")(None, make_cfg("min_max"), 10)
    sub = updates[:, j]
    expected = base.apply(sub, mal, make_ctx(sub, mal))[mal]
    torch.testing.assert_close(out[mal][:, j], expected)
    assert not torch.equal(out[mal][:, j], updates[mal][:, j])


def test_layer_prefix_matches_at_dot_boundary():
    attack = build("layer", {"layers": ["fc1"]})
    assert attack.layer_names(two_layer_spec()) == ["fc1.weight", "fc1.bias"]
    both = build("layer", {"layers": ["fc10", "last"]})
    assert both.layer_names(two_layer_spec()) == ["fc10.weight", "fc10.bias", "fc2.weight", "fc2.bias"]


def test_layer_rest_mean_uses_benign_mean_and_skips_training():
    updates, mal = make_updates(12, 4, two_layer_spec().numel)
    attack = build("layer", {"base": "lie", "layers": ["fc1"], "rest": "mean"})
    assert not attack.trains
    out = attack.apply(updates, mal, make_ctx(updates, mal, two_layer_spec()))
    mu = updates[~mal].mean(0)
    assert torch.equal(out[mal][:, 16:], mu[16:].expand(4, -1))
    assert not torch.equal(out[mal][:, :16], mu[:16].expand(4, -1))


def test_layer_over_data_poisoning_base_trains_and_keeps_trigger():
    attack = build("layer", {"base": "scaling", "base_params": {"target": 3}, "layers": "last"})
    assert attack.trains and attack.rest == "mean" and attack.target == 3
    x = torch.zeros(2, 1, 8, 8)
    assert (attack.stamp(x)[:, :, :5, :5] == 1).all()
    updates, mal = trained_updates()
    out = attack.apply(updates, mal, make_ctx(updates, mal, two_layer_spec()))
    j = fc2_coords()
    torch.testing.assert_close(out[mal][:, j], updates[mal][:, j] * 12 / 4)
    assert torch.equal(out[mal][:, :26], updates[~mal].mean(0)[:26].expand(4, -1))


def test_unknown_layer_is_config_error():
    updates, mal = make_updates(6, 2, two_layer_spec().numel)
    with pytest.raises(ConfigError, match="no parameter matches 'conv9'"):
        build("layer", {"layers": ["conv9"]}).apply(updates, mal, make_ctx(updates, mal, two_layer_spec()))


@pytest.mark.parametrize("rest", ["own", "mean"])
def test_parameter_random_touches_only_its_fraction(rest):
    updates, mal = trained_updates()
    p = updates.shape[1]
    attack = build("parameter", {"base": "min_max", "fraction": 0.2, "rest": rest})
    out = attack.apply(updates, mal, make_ctx(updates, mal, two_layer_spec()))
    j = attack.last_coordinates
    assert len(j) == round(0.2 * p) == len(set(j.tolist()))
    others = torch.ones(p, dtype=torch.bool)
    others[j] = False
    reference = updates[mal] if rest == "own" else updates[~mal].mean(0).expand(4, -1)
    assert torch.equal(out[mal][:, others], reference[:, others])
    assert torch.equal(out[~mal], updates[~mal])
    assert not torch.equal(out[mal][:, j], reference[:, j])


def test_parameter_random_subset_is_fixed_unless_resampled():
    updates, mal = trained_updates()
    fixed = build("parameter", {"fraction": 0.3})
    resampled = build("parameter", {"fraction": 0.3, "resample": True})
    picks = {"fixed": [], "resampled": []}
    for seed in (1, 2):
        for key, attack in (("fixed", fixed), ("resampled", resampled)):
            attack.apply(updates, mal, make_ctx(updates, mal, seed=seed))
            picks[key].append(attack.last_coordinates)
    assert torch.equal(*picks["fixed"]) and not torch.equal(*picks["resampled"])
    resumed = build("parameter", {"fraction": 0.3})  # a fresh instance, as after a resume
    resumed.apply(updates, mal, make_ctx(updates, mal, seed=9))
    assert torch.equal(resumed.last_coordinates, picks["fixed"][0])


def test_parameter_magnitude_picks_largest_benign_mean():
    updates, mal = trained_updates()
    attack = build("parameter", {"base": "ipm", "fraction": 0.1, "selection": "magnitude"})
    attack.apply(updates, mal, make_ctx(updates, mal))
    k = round(0.1 * updates.shape[1])
    expected = updates[~mal].mean(0).abs().topk(k).indices.sort().values
    assert torch.equal(attack.last_coordinates, expected)


def test_wrappers_nest():
    updates, mal = trained_updates()
    attack = build("layer", {"layers": "last", "base": "parameter",
                             "base_params": {"base": "sign_flip", "fraction": 0.5}})
    assert attack.trains
    out = attack.apply(updates, mal, make_ctx(updates, mal, two_layer_spec()))
    changed = (out[mal] != updates[mal]).any(0)
    assert changed[fc2_coords()].sum() <= round(0.5 * 9) and not changed[:26].any()
    assert changed.any()


@pytest.mark.parametrize("params,match", [
    ({"base": "nope"}, "unknown attack 'nope'"),
    ({"base": "adaptive"}, "cannot be restricted"),
    ({"base": "layer"}, "cannot be restricted"),
    ({"base": "label_flip", "rest": "own"}, "use rest 'mean'"),
    ({"base": "min_max", "base_params": {"deviation": "bad"}}, "deviation must be"),
    ({"layers": []}, "layers must be"),
    ({"rest": "half"}, "rest must be"),
])
def test_layer_bad_params_are_config_errors(params, match):
    cls = ATTACKS.get("layer")
    with pytest.raises(ConfigError, match=match):
        cls.check(make_cfg("layer", params))


@pytest.mark.parametrize("params,match", [
    ({"fraction": 0.0}, "fraction must be"),
    ({"fraction": 1.5}, "fraction must be"),
    ({"selection": "biggest"}, "selection must be"),
])
def test_parameter_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("parameter").check(make_cfg("parameter", params))
