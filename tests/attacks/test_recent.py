"""Defining properties of poisonedfl (attacks/model_poisoning.py), dba and neurotoxin (attacks/backdoor.py) and
skymask_adaptive (attacks/adaptive.py)."""

from __future__ import annotations

import dataclasses

import io
import math

import numpy as np
import pytest
import torch

from skymask_ray.attacks import ATTACKS
from skymask_ray.attacks.backdoor import malicious_ids
from skymask_ray.attacks.model_poisoning import binomial_threshold
from skymask_ray.experiment import build_config
from skymask_ray.errors import ConfigError
from skymask_ray.skymask.trainer import RootLoss

from .helpers import TinyWorld, make_cfg, make_ctx, make_updates


def build(name: str, params: dict | None = None, num_classes: int = 10, **cfg_kw):
    cfg_kw.setdefault("clients", 10)
    return ATTACKS.get(name)(params, make_cfg(name, params, **cfg_kw), num_classes)


# ----- PoisonedFL -------------------------------------------------------------------------------


def run_rounds(attack, updates, mal, rounds, global_lr=0.5, start=None, drift=None):
    """Run the attack for ``rounds`` rounds as the round loop does (begin_round, then apply) with a FedAvg
    server; returns the outputs and weights seen."""
    w = torch.zeros(updates.shape[1], dtype=updates.dtype) if start is None else start.clone()
    outs, ws = [], []
    for r in range(1, rounds + 1):
        ctx = dataclasses.replace(make_ctx(updates, mal), round=r, global_weights=w.clone())
        attack.begin_round(r, w.clone())
        out = attack.apply(updates, mal, ctx)
        outs.append(out)
        ws.append(w.clone())
        w = w - global_lr * (out.mean(0) if drift is None else drift)
    return outs, ws


def test_poisonedfl_sign_is_fixed_across_rounds_and_first_round_is_zero():
    updates, mal = make_updates(10, 3, 50, seed=2)
    attack = build("poisonedfl")
    outs, _ = run_rounds(attack, updates, mal, 5)
    s = attack.sign.to(updates.dtype)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(outs[0][mal], torch.zeros(3, 50, dtype=updates.dtype))
    for out in outs[1:]:
        rows = out[mal]
        assert torch.equal(rows, rows[0].expand_as(rows))  # every attacker sends the same update
        moving = rows[0] != 0
        assert moving.sum() > 40
        # the server's step -lr * g_m moves the model along +s on every coordinate the attack touches
        assert torch.equal(torch.sign(-rows[0][moving]), s[moving])
        assert torch.equal(out[~mal], updates[~mal])
    # the sign depends on the run seed only
    again = build("poisonedfl")
    again.sign_vector(50)
    assert torch.equal(again.sign, attack.sign)
    other = build("poisonedfl", seed=1)
    other.sign_vector(50)
    assert not torch.equal(other.sign, attack.sign)


def test_poisonedfl_magnitude_follows_the_reference_formula():
    updates, mal = make_updates(8, 2, 30, seed=3)
    attack = build("poisonedfl", {"scaling_factor": 3.0}, clients=8)
    outs, ws = run_rounds(attack, updates, mal, 3)
    s = attack.sign.to(updates.dtype)
    h = (ws[1] - ws[2]) / 0.5  # last round's aggregate
    m = outs[1][mal][0]  # last round's malicious update
    v = (h - m * h.norm() / m.norm()).abs()
    expected = -3.0 * h.norm() * v / v.norm() * s
    torch.testing.assert_close(outs[2][mal][0], expected)
    # round 2: no previous malicious update (round 1 sent zeros): v = |h|
    h2 = (ws[0] - ws[1]) / 0.5
    torch.testing.assert_close(outs[1][mal][0], -3.0 * h2.norm() * h2.abs() / h2.abs().norm() * s)


def test_poisonedfl_state_round_trips_through_a_weights_only_checkpoint():
    updates, mal = make_updates(10, 2, 40, seed=4)
    a = build("poisonedfl", {"window": 2})
    outs, ws = run_rounds(a, updates, mal, 3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = build("poisonedfl", {"window": 2})
    b.load_state_dict(state)
    w = ws[-1] - 0.5 * outs[-1].mean(0)
    for r in (4, 5):  # the next rounds agree, including a progress check (round 5, window 2)
        ctx_a = dataclasses.replace(make_ctx(updates, mal), global_weights=w.clone())
        ctx_b = dataclasses.replace(make_ctx(updates, mal), global_weights=w.clone())
        a.begin_round(r, w.clone())
        b.begin_round(r, w.clone())
        out_a, out_b = a.apply(updates, mal, ctx_a), b.apply(updates, mal, ctx_b)
        assert torch.equal(out_a, out_b)
        w = w - 0.5 * out_a.mean(0)
    assert a.scaling == b.scaling and a.rounds == b.rounds == 5
    # a fresh attack differs: the state matters
    c = build("poisonedfl", {"window": 2})
    c.begin_round(6, w.clone())
    a.begin_round(6, w.clone())
    ctx = dataclasses.replace(make_ctx(updates, mal), global_weights=w.clone())
    assert not torch.equal(c.apply(updates, mal, ctx), a.apply(updates, mal, ctx))


def test_poisonedfl_shrinks_c_only_without_progress():
    updates, mal = make_updates(10, 2, 400, seed=5)
    probe = build("poisonedfl")
    s = probe.sign_vector(400).to(updates.dtype)
    # the model moves against s: no progress -> c decays at each check (every 2 rounds)
    bad = build("poisonedfl", {"window": 2})
    run_rounds(bad, updates, mal, 5, drift=s)  # w <- w - 0.5 s: sign(w_t - w_start) = -s
    assert bad.scaling == pytest.approx(8.0 * 0.7**2)  # checks at rounds 3 and 5
    assert bad.last_aligned == 0
    # along s: aligned everywhere -> c stays
    good = build("poisonedfl", {"window": 2})
    run_rounds(good, updates, mal, 5, drift=-s)
    assert good.scaling == 8.0 and good.last_aligned == 400
    # the floor: c never goes below min_scaling by a decay
    floor = build("poisonedfl", {"window": 1, "scaling_factor": 1.0, "min_scaling": 0.6})
    run_rounds(floor, updates, mal, 6, drift=s)
    assert floor.scaling == pytest.approx(0.7)


def test_binomial_threshold_matches_the_reference_tables():
    assert int(binomial_threshold(139960, 0.99)) == 70415
    assert int(binomial_threshold(139960, 0.95)) == 70288
    assert int(binomial_threshold(1204682, 0.99)) == 603618
    assert int(binomial_threshold(717924, 0.95)) == 359659 and int(binomial_threshold(145212, 0.99)) == 73049


# ----- DBA --------------------------------------------------------------------------------------

BARS = {  # the paper's MNIST layout: (row, first col) of 1x4 bars with gap 2
    0: (0, 0), 1: (0, 6), 2: (3, 0), 3: (3, 6),
}


def bar_mask(part: int, h: int = 12, w: int = 12) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    r, c = BARS[part]
    m[r, c:c + 4] = True
    return m


@pytest.mark.parametrize("client", [0, 1, 2, 3, 4, 5, 6])
def test_dba_attacker_stamps_only_its_part(client):
    attack = build("dba", clients=10, malicious_fraction=0.7, malicious_selection="first")  # malicious 0..6
    assert attack.trains and attack.target == 2
    x, y = torch.zeros(64, 1, 12, 12), torch.arange(64) % 10
    x2, y2 = attack.poison_data(x, y, torch.Generator().manual_seed(0), client=client)
    changed = (x2 != x).flatten(1).any(1)
    assert int(changed.sum()) == 20  # round(20/64 * 64)
    part = client % 4
    for img in x2[changed]:
        assert torch.equal(img[0] == 1.0, bar_mask(part))
    assert (y2[changed] == 2).all() and torch.equal(y2[~changed], y[~changed])


def test_dba_stamp_applies_the_union_of_all_parts():
    attack = build("dba")
    x = torch.zeros(3, 3, 12, 12)
    full = attack.stamp(x)
    union = bar_mask(0) | bar_mask(1) | bar_mask(2) | bar_mask(3)
    assert all(torch.equal(full[i, c] == 1.0, union) for i in range(3) for c in range(3))
    assert torch.equal(full, attack.stamp_parts(x, [0, 1, 2, 3]))


def test_dba_rank_comes_from_the_simulation_malicious_set():
    from skymask_ray.population import malicious_population

    cfg = build_config(overrides={"data": {"dataset": "synthetic", "synthetic_train": 600, "synthetic_test": 50},
                                  "clients": 12, "malicious_fraction": 0.34, "malicious_selection": "random",
                                  "attack": "dba", "seed": 3})
    mal = malicious_population(cfg.clients, cfg.num_malicious, cfg.malicious_selection, cfg.seed)
    ids = np.flatnonzero(mal.mask(np.arange(cfg.clients))).tolist()
    assert ids == malicious_ids(cfg) and ids != list(range(len(ids)))
    attack = ATTACKS.get("dba")(cfg.attack_params, cfg, 10)
    parts = [attack.part_of(k) for k in ids]
    assert parts == [mal.rank(k) % 4 for k in ids]  # the attacker's rank among the attackers
    assert sorted(parts) == sorted(r % 4 for r in range(len(ids)))  # each part held by f/4 attackers (+-1)


def test_dba_square_parts_partition_the_square_and_vectors_use_features():
    attack = build("dba", {"pattern": "square", "parts": 3, "target": 0})
    x = torch.zeros(1, 1, 8, 8)
    masks = [attack.stamp_parts(x, [i])[0, 0] == 1.0 for i in range(3)]
    assert all(not (masks[i] & masks[j]).any() for i in range(3) for j in range(i + 1, 3))
    union = masks[0] | masks[1] | masks[2]
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[:5, :5] = True
    assert torch.equal(union, square) and torch.equal(attack.stamp(x)[0, 0] == 1.0, square)
    bars = build("dba")
    v = torch.zeros(2, 30)
    assert torch.equal(torch.nonzero(bars.stamp_parts(v, [2])[0]).flatten(), torch.arange(8, 12))
    assert torch.equal(torch.nonzero(bars.stamp(v)[0]).flatten(), torch.arange(16))


def test_dba_through_the_client_worker_call_site():
    """ClientWorker passes each client's id: client k's poisoned samples carry part k."""
    from skymask_ray.clients.pool import ClientWorker
    from skymask_ray.data import ShardTable

    cfg = make_cfg("dba", {"poison_fraction": 1.0}, clients=4, malicious_fraction=0.75, model="mlp",
                   malicious_selection="first")
    x = np.zeros((16, 1, 12, 12), dtype=np.float32)
    y = (np.arange(16) % 10).astype(np.int64)
    idx = [np.arange(4 * k, 4 * k + 4) for k in range(3)]
    attack = ATTACKS.get("dba")(cfg.attack_params, cfg, 10)
    worker = ClientWorker(x, y, ShardTable.of(idx), frozenset({0, 1, 2}), cfg, 10, attack.poison_data)
    for k in range(3):
        stamped = worker.client_data(k)[0].cpu()
        assert all(torch.equal(img[0] == 1.0, bar_mask(k)) for img in stamped)


def test_poison_data_takes_the_client_keyword_everywhere():
    x, y = torch.zeros(8, 1, 12, 12), torch.arange(8) % 10
    for name in ["label_flip", "scaling", "lie_backdoor", "neurotoxin", "none"]:
        build(name).poison_data(x, y, torch.Generator().manual_seed(0), client=3)
    wrapped = build("parameter", {"base": "dba", "base_params": {"poison_fraction": 1.0}}, malicious_fraction=0.5,
                    malicious_selection="first")  # client 2 is the attacker of rank 2: DBA part 2
    x2, _ = wrapped.poison_data(x, y, torch.Generator().manual_seed(0), client=2)
    assert torch.equal(x2[0, 0] == 1.0, bar_mask(2))


def test_dba_scale_and_bad_params():
    updates, mal = make_updates(6, 2, 10)
    updates[mal] = 1.0
    assert torch.equal(build("dba", clients=6).apply(updates, mal, make_ctx(updates, mal)), updates)
    out = build("dba", {"scale": 100.0}, clients=6).apply(updates, mal, make_ctx(updates, mal))
    assert (out[mal] == 100.0).all() and torch.equal(out[~mal], updates[~mal])
    with pytest.raises(ConfigError, match="pattern must be"):
        build_config(overrides={"attack": "dba", "attack_params": {"pattern": "star"},
                                "data": {"dataset": "synthetic"}})
    with pytest.raises(ValueError, match="does not fit"):
        build("dba", {"bar_length": 8}).stamp(torch.zeros(1, 1, 12, 12))


# ----- Neurotoxin -------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.99, 0.9, 0.5])
def test_neurotoxin_update_is_zero_outside_the_least_updated_coordinates(ratio):
    n, p = 10, 300
    updates, mal = make_updates(n, 3, p, seed=6)
    updates[mal] = torch.randn(3, p, dtype=updates.dtype)  # trained (backdoored) updates
    attack = build("neurotoxin", {"retain_ratio": ratio})
    assert attack.trains and attack.has_trigger
    out = attack.apply(updates, mal, make_ctx(updates, mal))
    mu = updates[~mal].mean(0)
    k = int(ratio * p)
    order = torch.argsort(mu.abs())
    kept = torch.zeros(p, dtype=torch.bool)
    kept[order[:k]] = True
    assert torch.equal(attack.last_kept, kept) and int(kept.sum()) == k
    assert (out[mal][:, ~kept] == 0).all()
    assert torch.equal(out[mal][:, kept], updates[mal][:, kept])
    assert torch.equal(out[~mal], updates[~mal])
    # the masked coordinates are the ones the benign clients update most
    assert mu.abs()[~kept].min() >= mu.abs()[kept].max()


def test_neurotoxin_previous_global_reference():
    n, p = 8, 100
    updates, mal = make_updates(n, 2, p, seed=7)
    updates[mal] = 1.0
    attack = build("neurotoxin", {"reference": "previous_global", "retain_ratio": 0.9}, clients=n)
    ctx = make_ctx(updates, mal)
    attack.begin_round(1, ctx.global_weights)
    attack.apply(updates, mal, ctx)  # round 1: benign mean
    mu = updates[~mal].mean(0)
    assert torch.equal(attack.last_kept, attack.kept_coordinates(mu))
    state = attack.state_dict()
    steps = [torch.randn(p, dtype=updates.dtype) for _ in range(2)]
    w2 = ctx.global_weights - 0.5 * steps[0]
    w3 = w2 - 0.5 * steps[1]
    attack.begin_round(2, w2)  # a round without attackers: no apply, but the history moves on
    attack.begin_round(3, w3)
    ctx3 = dataclasses.replace(make_ctx(updates, mal), global_weights=w3)
    attack.apply(updates, mal, ctx3)
    # the reference is the aggregate of the round just before (round 2's), not the change since round 1
    torch.testing.assert_close(attack.last_kept.float(), attack.kept_coordinates(steps[1]).float())
    assert not torch.equal(attack.last_kept, attack.kept_coordinates(steps[0] + steps[1]))
    other = build("neurotoxin", {"reference": "previous_global", "retain_ratio": 0.9}, clients=n)
    other.load_state_dict(state)  # resumed after round 1
    other.begin_round(2, w2)
    other.begin_round(3, w3)
    other.apply(updates, mal, ctx3)
    assert torch.equal(other.last_kept, attack.last_kept)


# ----- skymask_adaptive -------------------------------------------------------------------------


def weighted_distance(rows, mu, s):
    return ((rows.double() - mu.double()) * s.double()).norm(dim=1)


@pytest.mark.parametrize("quantile", [0.5, 1.0])
def test_skymask_adaptive_stays_within_its_bound_with_maximal_strength(quantile):
    world = TinyWorld(n=12, f=4, seed=1)
    params = {"bound_quantile": quantile, "max_alpha": 50.0}
    cfg = make_cfg("skymask_adaptive", params, clients=12, malicious_fraction=4 / 12, model="lr")
    attack = ATTACKS.get("skymask_adaptive")(params, cfg, 3)
    ctx = world.ctx()
    out = attack.apply(world.updates, world.malicious, ctx)
    mal = world.malicious
    benign = world.updates[~mal]
    mu = benign.mean(0)
    # the sensitivity, recomputed: |dL/dW| at w_t - mu on the root data
    loss = RootLoss(world.model, world.spec, ctx.buffers, world.root, torch.device("cpu"))
    _, grad = loss(world.w - mu, torch.arange(len(loss)))
    s = grad.abs()
    assert attack.last_source == "root_grad"
    bound = float(torch.quantile(weighted_distance(benign, mu, s), quantile))
    assert attack.last_bound == pytest.approx(bound, rel=1e-5)
    dist = weighted_distance(out[mal], mu, s)
    assert (dist <= bound * (1 + 1e-5)).all()
    # each attacker's strength is the largest one allowed: 0.1 % more breaks the bound
    anchor, alpha = attack.last_anchor, attack.last_alpha
    poison = (out[mal].double() - anchor) / alpha[:, None].clamp_min(1e-12)
    assert (alpha > 0).all()
    for k in range(len(alpha)):
        if alpha[k] < 50.0:
            beyond = anchor[k] + 1.001 * alpha[k] * poison[k]
            assert float(weighted_distance(beyond[None], mu, s)[0]) > bound
    # the poison avoids the sensitive coordinates and points along the base attack's direction
    sens = attack.last_sensitive
    assert int(sens.sum()) == int(0.1 * world.spec.numel)
    assert s[sens].min() >= s[~sens].max()
    delta = out[mal].double() - anchor
    assert (delta[:, sens].abs() < 1e-12).all()
    direction = -(1.1) * mu.double() * (~sens).double()  # ipm: H - mu = -(1 + eps) mu
    cos = torch.nn.functional.cosine_similarity(delta, direction[None], dim=1)
    assert (cos > 1 - 1e-6).all()
    # anchors are distinct benign rows within the bound
    assert len({tuple(a.tolist()) for a in anchor}) == 4
    assert torch.equal(out[~mal], world.updates[~mal])


def test_skymask_adaptive_oracle_halves_until_accepted_and_falls_back_without_a_model():
    updates, mal = make_updates(10, 3, 40, seed=8)
    calls = []

    class Sel:
        def __init__(self, accepted):
            self.accepted = accepted

    def selector(u, g0):
        calls.append(u.clone())
        dev = (u[mal] - u[~mal].mean(0)).norm(dim=1)
        return Sel((torch.arange(10) >= 3).numpy() | np.pad((dev < 2.0).numpy(), (0, 7)))

    params = {"oracle_checks": 6, "max_alpha": 40.0, "bound_quantile": 1.0}
    attack = ATTACKS.get("skymask_adaptive")(params, make_cfg("skymask_adaptive", params, clients=10), 10)
    g0 = updates[~mal].mean(0)
    out = attack.apply(updates, mal, make_ctx(updates, mal, server_update=g0, mask_selector=selector))
    assert attack.last_source == "server_update"
    assert 1 <= len(calls) <= 6
    final = (out[mal] - updates[~mal].mean(0)).norm(dim=1)
    assert (final < 2.0).float().mean() >= 0.5 or len(calls) == 6
    s = g0.abs()
    assert (weighted_distance(out[mal], updates[~mal].mean(0), s) <= attack.last_bound * (1 + 1e-6)).all()
    plain = ATTACKS.get("skymask_adaptive")(None, make_cfg("skymask_adaptive", clients=10), 10)
    plain.apply(updates, mal, make_ctx(updates, mal))
    assert plain.last_source == "mean"


def test_skymask_adaptive_rejects_training_bases():
    with pytest.raises(ConfigError, match="plain model-poisoning"):
        build_config(overrides={"attack": "skymask_adaptive", "attack_params": {"base": "scaling"},
                                "data": {"dataset": "synthetic"}})


def test_stateless_attacks_have_empty_state():
    for name in ["min_max", "dba", "skymask_adaptive", "neurotoxin"]:
        assert build(name).state_dict() == {}
    assert math.isfinite(build("poisonedfl").scaling)
