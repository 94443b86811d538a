"""Properties every attack shares: the registry, N x P output, benign rows untouched, clean config errors."""

from __future__ import annotations

import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.experiment import build_config
from skymask_ray.errors import ConfigError

from .helpers import TinyWorld, make_cfg

ALL = ["none", "label_flip", "scaling", "lie_backdoor", "lie", "min_max", "min_sum", "fang_trim", "fang_krum",
       "sign_flip", "ipm", "gaussian", "layer", "parameter", "adaptive", "poisonedfl", "dba", "neurotoxin",
       "skymask_adaptive"]


def test_registry_lists_every_attack():
    assert sorted(ALL) == ATTACKS.names()


def test_every_attack_passes_config_validation_with_defaults():
    for name in ALL:
        build_config(overrides={"attack": name, "data": {"dataset": "synthetic"}})


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("name", ALL)
def test_output_is_n_by_p_and_benign_rows_are_untouched(name, fraction):
    n = 20
    world = TinyWorld(n=n, f=int(round(n * fraction)))
    params = {"search_steps": 1} if name == "adaptive" else {}
    cfg = make_cfg(name, params, clients=n, malicious_fraction=fraction, model="lr")
    cfg.skymask.mask_epochs = 3
    attack = ATTACKS.get(name)(params, cfg, 3)
    updates = world.updates.clone()
    if attack.trains:
        updates[world.malicious] = 0.03 * torch.randn(int(world.malicious.sum()), updates.shape[1])
    before = updates.clone()
    out = attack.apply(updates, world.malicious, world.ctx())
    assert out.shape == updates.shape and out.dtype == updates.dtype
    assert torch.equal(updates, before)  # the input is not modified in place
    assert torch.equal(out[~world.malicious], updates[~world.malicious])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_no_malicious_clients_is_identity(name):
    world = TinyWorld(n=6, f=0)
    cfg = make_cfg(name, clients=6, malicious_fraction=0.0, model="lr")
    attack = ATTACKS.get(name)(None, cfg, 3)
    assert torch.equal(attack.apply(world.updates, world.malicious, world.ctx()), world.updates)


@pytest.mark.parametrize("name,params,match", [
    ("min_max", {"gamma": 1}, "unknown parameter"),
    ("min_max", {"deviation": "l2"}, "deviation must be"),
    ("min_sum", {"tol": 0}, "tol must be"),
    ("lie", {"spread": -1}, "spread must be"),
    ("lie", {"z": "big"}, "z must be"),
    ("fang_trim", {"b": 0.5}, "b must be"),
    ("fang_krum", {"threshold": 0}, "threshold must be"),
    ("ipm", {"eps": -0.1}, "eps must be"),
    ("gaussian", {"std": -1}, "std must be"),
    ("sign_flip", {"scale": 0}, "scale must be"),
    ("label_flip", {"mapping": "random"}, "mapping must be"),
    ("label_flip", {"mapping": {"a": 1}}, "mapping must map"),
    ("scaling", {"poison_fraction": 0}, "poison_fraction"),
    ("scaling", {"scale": -2}, "scale must be"),
    ("lie_backdoor", {"trigger_size": 0}, "trigger_size"),
    ("lie_backdoor", {"z": -1}, "z must be"),
])
def test_bad_params_are_one_line_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_config(overrides={"attack": name, "attack_params": params, "data": {"dataset": "synthetic"}})
    assert "\n" not in str(err.value) and name in str(err.value)
