"""Attacks at their reference code's strength (issue 32, item 3): DBA's and Neurotoxin's attackers train with
their own poison lr and epochs; PoisonedFL's state follows every round of the run, as the reference's does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.attacks.model_poisoning import binomial_threshold
from skymask_ray.clients import pool
from skymask_ray.clients.training import SGDSettings, client_generator
from skymask_ray.errors import ConfigError

from .helpers import make_cfg, make_ctx, make_updates


@pytest.mark.parametrize("mode", ["sequential", "vmap"])
@pytest.mark.parametrize("name,scale,epochs", [("dba", 0.5, 10), ("neurotoxin", 4.0, 10)])
def test_backdoor_attackers_train_with_the_reference_lr_and_epochs(name, scale, epochs, mode, monkeypatch):
    """The references' poison lr as a multiple of their own honest lr (DBA 0.05 / 0.1, Neurotoxin 0.04 / 0.01)."""
    cfg = make_cfg(name, None, clients=4, malicious_fraction=0.5, model="mlp", malicious_selection="first")
    cfg.train.client_exec = mode
    attack = ATTACKS.get(name)(None, cfg, 10)
    lr = scale * cfg.train.local_lr
    assert attack.poison_sgd() == {"lr": lr, "epochs": epochs, "steps": None}
    attackers = pool.sgd_settings(cfg, **attack.poison_sgd())
    honest = pool.sgd_settings(cfg)
    assert (attackers.lr, attackers.epochs, attackers.batch_size) == (lr, epochs, honest.batch_size)
    assert (honest.lr, honest.epochs) == (cfg.train.local_lr, cfg.train.local_epochs)

    g = np.random.default_rng(0)
    x = g.random((40, 1, 12, 12), dtype=np.float32)
    y = (np.arange(40) % 10).astype(np.int64)
    idx = [np.arange(10 * k, 10 * k + 10) for k in range(4)]
    seen: list[tuple[int, SGDSettings]] = []
    real = getattr(pool, f"train_{mode}")

    def spy(model, spec, w0, data, generators, s, *rest):
        seen.append((len(data), s))
        return real(model, spec, w0, data, generators, s, *rest)

    monkeypatch.setattr(pool, f"train_{mode}", spy)
    worker = pool.ClientWorker(x, y, pool.as_shards(idx), pool.as_poisoned([True, True, False, False]), cfg, 10,
                               attack.poison_data, poison_sgd=attackers)
    seen.clear()  # the warm-up step
    w = worker.spec.flatten(worker.model)
    out = worker.train(w.numpy(), {}, 3, [3, 0, 2, 1])
    assert sorted((n, s.lr, s.epochs) for n, s in seen) == sorted([(2, lr, epochs), (2, honest.lr, honest.epochs)])
    # the rows, in the order asked for, are what each client's settings give
    for row, k in enumerate([3, 0, 2, 1]):
        s = attackers if k in (0, 1) else honest
        want = real(worker.model, worker.spec, w, [worker.client_data(k)], [client_generator(cfg.seed, 3, k)], s)
        want = want[0] if mode == "sequential" else want  # (updates, buffers) | updates
        torch.testing.assert_close(torch.from_numpy(out["updates"][row]), want[0])


def test_other_backdoors_train_like_the_honest_clients_unless_asked():
    for name in ("scaling", "lie_backdoor"):
        assert ATTACKS.get(name)(None, make_cfg(name), 10).poison_sgd() == {}
    asked = ATTACKS.get("scaling")({"poison_lr": 0.05, "poison_epochs": 15}, make_cfg("scaling"), 10)
    assert asked.poison_sgd() == {"lr": 0.05, "epochs": 15, "steps": None}
    plain = ATTACKS.get("dba")({"poison_lr_scale": None, "poison_epochs": None}, make_cfg("dba"), 10)
    assert plain.poison_sgd() == {}


@pytest.mark.parametrize("name", ["dba", "neurotoxin"])
def test_an_absolute_poison_lr_given_alone_replaces_the_default_scale(name):
    cfg = make_cfg(name)
    attack = ATTACKS.get(name)({"poison_lr": 0.05}, cfg, 10)
    assert attack.poison_sgd()["lr"] == 0.05 and attack.p.poison_lr_scale is None
    cfg.attack_params = {"poison_lr": 0.05}
    ATTACKS.get(name).check(cfg)  # the default scale is not "given" beside it


@pytest.mark.parametrize("name", ["dba", "neurotoxin", "scaling"])
def test_poison_lr_scale_is_a_multiple_of_the_honest_lr_and_replaces_the_default(name):
    cfg = make_cfg(name)
    cfg.train.local_lr = 0.3
    attack = ATTACKS.get(name)({"poison_lr_scale": 0.5}, cfg, 10)
    assert attack.poison_sgd()["lr"] == pytest.approx(0.15)
    cfg.train.local_lr = 0.1  # read when the settings are made, from the run's own honest lr
    assert attack.poison_sgd()["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("name", ["dba", "neurotoxin"])
def test_an_absolute_and_a_relative_poison_lr_together_are_refused(name):
    params = {"poison_lr": 0.05, "poison_lr_scale": 0.5}
    with pytest.raises(ConfigError, match="poison_lr .*or poison_lr_scale"):
        ATTACKS.get(name)(params, make_cfg(name), 10)
    cfg = make_cfg(name)
    cfg.attack_params = params
    with pytest.raises(ConfigError, match="not both"):
        ATTACKS.get(name).check(cfg)


def reference_poisonedfl(weights: list[torch.Tensor], attackers: list[bool], sign: torch.Tensor, c: float,
                         window: int, lr: float, decay: float = 0.7, floor: float = 0.5, confidence: float = 0.99):
    """The reference's loop (github.com/xyq7/PoisonedFL: test_agr.py around byzantine.poisonedfl), restated
    in this simulator's convention (updates subtracted, w <- w - lr g): ``history`` is updated after every
    round, ``last_grad`` only after rounds with attackers, ``last_50_model`` after rounds e % window == 0,
    and the scaling check runs in rounds e % window == 0 once a history exists. Returns per round
    (the malicious row or None, then the state after the round: sf, last_grad, last_50_model, history)."""
    k = binomial_threshold(sign.numel(), confidence)
    history = last_grad = last_50 = None
    sf, out = c, []
    for e, w in enumerate(weights[:-1]):
        row = torch.zeros_like(w) if attackers[e] else None
        if history is not None:
            if e % window == 0:
                total = w - last_50
                total = torch.where(total == 0, w, total)
                if int((torch.sign(total) == sign).sum()) < k and sf * decay >= floor:
                    sf *= decay
            if attackers[e]:
                v = history if last_grad is None else history - last_grad * history.norm() / (last_grad.norm() + 1e-9)
                v = v.abs()
                row = -sf * history.norm() * v / (v.norm() + 1e-9) * sign
        if attackers[e]:
            last_grad = row
        if e % window == 0:
            last_50 = weights[e + 1]
        history = (w - weights[e + 1]) / lr
        out.append((row, sf, last_grad, last_50, history))
    return out


def test_poisonedfl_state_after_rounds_without_attackers_equals_the_references():
    p, lr, window = 400, 0.5, 3
    updates, mal = make_updates(6, 2, p, seed=8, dtype=torch.float32)
    cfg = make_cfg("poisonedfl", {"window": window, "scaling_factor": 2.0}, clients=6, malicious_fraction=2 / 6)
    attack = ATTACKS.get("poisonedfl")(cfg.attack_params, cfg, 10)
    sign = attack.sign_vector(p).to(torch.float32)
    attackers = [True, False, True, False, False, True, True, False, False, False, True, False, True]
    g = torch.Generator().manual_seed(3)
    steps = [0.3 * torch.randn(p, generator=g) + (0.05 if r < 7 else -0.05) * sign for r in range(len(attackers))]
    weights = [torch.zeros(p)]
    for s in steps:
        weights.append(weights[-1] - s)  # the model drifts against s first (no progress), then along it
    ref = reference_poisonedfl(weights, attackers, sign, 2.0, window, lr)
    decayed_without_attackers = 0
    for e, present in enumerate(attackers):
        w = weights[e]
        before = attack.scaling
        attack.begin_round(e + 1, w.clone())  # every round, as the round loop calls it
        if e > 0:  # what the reference knows when round e starts: its state after round e - 1
            _, _, _, last_50, history = ref[e - 1]
            torch.testing.assert_close(attack.history, history)
            torch.testing.assert_close(attack.window_start, last_50)
        if present:
            out = attack.apply(updates, mal, dataclasses.replace(make_ctx(updates, mal), global_weights=w.clone()))
            torch.testing.assert_close(out[mal][0], ref[e][0], rtol=1e-5, atol=1e-6)
        else:
            decayed_without_attackers += attack.scaling < before
        _, sf, last_grad, _, _ = ref[e]
        assert attack.scaling == pytest.approx(sf), e
        assert attack.rounds == e + 1
        if last_grad is None:
            assert attack.prev_update is None
        else:
            torch.testing.assert_close(attack.prev_update, last_grad, rtol=1e-5, atol=1e-6)
    assert decayed_without_attackers >= 1  # a progress check fell in a round without attackers (round e = 3)


@pytest.mark.slow
def test_the_round_loop_advances_poisonedfl_every_round_and_hands_dba_its_training(ray_cluster, tmp_path):
    from skymask_ray.experiment import build_config
    from skymask_ray.results import read_parquet
    from skymask_ray.simulation import Simulation

    base = {"model": "mlp", "clients": 20, "cohort": 4, "malicious_fraction": 0.1, "workers": 1, "rounds": 6,
            "defense": "fedavg", "train": {"batch_size": 16, "grad_clip": None}}
    cfg = build_config(overrides={**base, "attack": "poisonedfl", "data": {"dataset": "digits", "root_size": 50}})
    with Simulation(cfg, tmp_path / "poisonedfl", local_clients=True) as sim:
        rows = read_parquet(sim.run()).to_pylist()
        assert sim.attack.rounds == 6  # every round, not only the rounds whose cohort held an attacker
    present = [r["malicious_in_cohort"] > 0 for r in rows]
    assert any(present) and not all(present)
    cfg = build_config(overrides={**base, "attack": "dba", "data": {"dataset": "synthetic", "synthetic_train": 400,
                                                                     "synthetic_test": 50, "root_size": 20}})
    with Simulation(cfg, tmp_path / "dba", local_clients=True) as sim:
        assert sim.clients.worker.poison_sgd == SGDSettings(lr=0.5 * cfg.train.local_lr, batch_size=16, epochs=10,
                                                            steps=None, grad_clip=None)
