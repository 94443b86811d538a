"""Data transforms and update transforms of label_flip, scaling and lie_backdoor."""

from __future__ import annotations

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.attacks.model_poisoning import paper_z
from skymask_ray.errors import ConfigError

from .helpers import make_cfg, make_ctx, make_updates


def build(name: str, params: dict | None = None, num_classes: int = 10, **cfg_kw):
    return ATTACKS.get(name)(params, make_cfg(name, params, **cfg_kw), num_classes)


def labels() -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(40) % 10
    return torch.rand(40, 1, 8, 8), y


def test_label_flip_default_reverses_classes():
    x, y = labels()
    x2, y2 = build("label_flip").poison_data(x, y, torch.Generator())
    assert torch.equal(y2, 9 - y) and x2 is x
    assert build("label_flip").trains


def test_label_flip_shift_and_dict():
    x, y = labels()
    _, shifted = build("label_flip", {"mapping": "shift", "shift": 3}).poison_data(x, y, torch.Generator())
    assert torch.equal(shifted, (y + 3) % 10)
    _, mapped = build("label_flip", {"mapping": {"7": 1, 2: 5}}).poison_data(x, y, torch.Generator())
    expected = y.clone()
    expected[y == 7] = 1
    expected[y == 2] = 5
    assert torch.equal(mapped, expected)


def test_label_flip_dict_outside_classes_is_config_error():
    with pytest.raises(ConfigError, match="outside the 6 classes"):
        build("label_flip", {"mapping": {0: 6}}, num_classes=6)


@pytest.mark.parametrize("name", ["scaling", "lie_backdoor"])
def test_backdoor_stamps_and_relabels_the_chosen_fraction(name):
    attack = build(name, {"target": 2, "poison_fraction": 0.25})
    assert attack.trains and attack.has_trigger and attack.target == 2
    x, y = torch.rand(40, 3, 12, 12) * 0.5, torch.arange(40) % 10
    x2, y2 = attack.poison_data(x, y, torch.Generator().manual_seed(0))
    changed = (x2 != x).flatten(1).any(1)
    assert int(changed.sum()) == 10
    assert (x2[changed][:, :, :5, :5] == 1.0).all()
    assert torch.equal(x2[changed][:, :, 5:, :], x[changed][:, :, 5:, :])
    assert torch.equal(x2[changed][:, :, :, 5:], x[changed][:, :, :, 5:])
    assert (y2[changed] == 2).all() and torch.equal(y2[~changed], y[~changed])
    assert torch.equal(x2[~changed], x[~changed])


def test_default_backdoor_poisons_half_with_target_zero():
    attack = build("scaling")
    x, y = torch.rand(30, 1, 28, 28) * 0.5, torch.arange(30) % 10 + 0
    x2, y2 = attack.poison_data(x, y, torch.Generator().manual_seed(1))
    stamped = (x2[:, 0, :5, :5] == 1.0).flatten(1).all(1)
    assert int(stamped.sum()) == 15 and (y2[stamped] == 0).all()


def test_stamp_on_vector_data_sets_first_features():
    attack = build("scaling", {"trigger_size": 4})
    x = torch.zeros(5, 561)
    s = attack.stamp(x)
    assert (s[:, :4] == 1.0).all() and (s[:, 4:] == 0).all() and (x == 0).all()


def test_backdoor_target_outside_classes_is_config_error():
    with pytest.raises(ConfigError, match="target 7"):
        build("scaling", {"target": 7}, num_classes=6)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_scaling_multiplies_malicious_updates_by_n_over_f(fraction):
    n = 20
    f = int(round(n * fraction))
    updates, mal = make_updates(n, f, 9)
    updates[mal] = torch.randn(f, 9, dtype=updates.dtype)
    out = build("scaling", clients=n).apply(updates, mal, make_ctx(updates, mal))
    torch.testing.assert_close(out[mal], updates[mal] * n / f)
    assert torch.equal(out[~mal], updates[~mal])
    out = build("scaling", {"scale": 3.0}).apply(updates, mal, make_ctx(updates, mal))
    torch.testing.assert_close(out[mal], updates[mal] * 3.0)


def test_lie_backdoor_clamps_into_benign_range():
    n, f = 20, 4
    updates, mal = make_updates(n, f, 50)
    trained = 3 * torch.randn(f, 50, dtype=updates.dtype)
    updates[mal] = trained
    out = build("lie_backdoor").apply(updates, mal, make_ctx(updates, mal))
    benign = updates[~mal]
    mu, sigma = benign.mean(0), benign.std(0)
    z = abs(paper_z(n, f))
    lo, hi = mu - z * sigma, mu + z * sigma
    rows = out[mal]
    assert (rows >= lo - 1e-12).all() and (rows <= hi + 1e-12).all()
    inside = (trained >= lo) & (trained <= hi)
    assert inside.any() and torch.equal(rows[inside], trained[inside])
    assert torch.equal(out[~mal], benign)
