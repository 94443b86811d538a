"""FLDetector: L-BFGS Hessian-vector products and detection of inconsistent clients over rounds."""

import numpy as np
import torch

from skymask_ray.defenses.fldetector import gap_statistic, lbfgs_hvp


def test_lbfgs_hvp_is_exact_for_a_scaled_identity():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 10, generator=gen).double()
    v = torch.randn(10, generator=gen).double()
    torch.testing.assert_close(lbfgs_hvp(s, 2.5 * s, v), 2.5 * v)


def test_lbfgs_hvp_satisfies_the_latest_secant_condition():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(8, 8, generator=gen).double()
    a = q @ q.T + 8 * torch.eye(8, dtype=torch.float64)
    s = torch.randn(4, 8, generator=gen).double()
    y = s @ a  # y_i = A s_i (A symmetric)
    torch.testing.assert_close(lbfgs_hvp(s, y, s[-1]), y[-1])


def test_gap_statistic_sees_one_or_two_groups():
    rng = np.random.default_rng(0)
    one = rng.uniform(0.0, 1.0, 40)
    two = np.concatenate([rng.normal(0.1, 0.005, 30), rng.normal(0.9, 0.005, 10)])
    assert gap_statistic(one, 10, 20, 0) == 1
    assert gap_statistic(two, 10, 20, 0) == 2
    assert gap_statistic(np.full(10, 0.3), 10, 20, 0) == 1


def _quadratic_run(defense, ctx, rounds: int, bad: list[int], n: int = 10, p: int = 30, seed: int = 0,
                   jitter: float = 0.0):
    """Clients with gradients A (w - c_k) (plus ``jitter`` relative noise) on one quadratic;
    ``bad`` clients send fresh random directions each round."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(p, p, generator=gen))[0]
    a = q @ torch.diag(torch.linspace(0.2, 1.0, p)) @ q.T
    centres = torch.randn(n, p, generator=gen)
    w = 5 * torch.randn(p, generator=gen)
    fld = defense("fldetector", n, len(bad), {"window": 3, "k_max": 5, "gap_samples": 10})
    history = []
    for r in range(1, rounds + 1):
        updates = (w - centres) @ a
        updates += jitter * updates.norm(dim=1, keepdim=True) / p**0.5 * torch.randn(n, p, generator=gen)
        scale = updates[[k for k in range(n) if k not in bad]].norm(dim=1).mean()
        for k in bad:
            noise = torch.randn(p, generator=gen)
            updates[k] = scale * noise / noise.norm()
        agg = fld.aggregate(updates, ctx(updates, len(bad), round=r, global_weights=w.clone()))
        history.append(agg)
        w = w - 0.5 * agg.update
    return fld, history


def test_fldetector_flags_clients_whose_updates_are_inconsistent_across_rounds(defense, ctx):
    fld, history = _quadratic_run(defense, ctx, rounds=8, bad=[2, 7], jitter=0.02)
    assert all(h.info.get("warmup") for h in history[:4])  # 1 round for a pair, 1 for distances, window 3
    for h in history[4:]:
        assert torch.nonzero(~h.accepted).flatten().tolist() == [2, 7]
        scores = torch.tensor(h.info["suspicion"])
        assert scores[[2, 7]].min() > 3 * scores[[0, 1, 3, 4, 5, 6, 8, 9]].max()


def test_fldetector_flags_nobody_when_every_client_is_consistent(defense, ctx):
    _, history = _quadratic_run(defense, ctx, rounds=8, bad=[])
    assert all(h.accepted.all() for h in history)


def test_fldetector_state_round_trips(defense, ctx):
    fld, _ = _quadratic_run(defense, ctx, rounds=5, bad=[1])
    again = defense("fldetector", 10, 1, {"window": 3, "k_max": 5, "gap_samples": 10})
    again.load_state_dict(fld.state_dict())
    for name in ("prev_weights", "prev_aggregate", "prev_updates"):
        torch.testing.assert_close(getattr(again, name), getattr(fld, name))
    assert len(again.dist_hist) == len(fld.dist_hist) == 3
    assert again.dist_hist.maxlen == 3


def test_fldetector_restarts_client_history_when_rows_change(defense, ctx):
    fld, _ = _quadratic_run(defense, ctx, rounds=5, bad=[1])
    x = torch.randn(9, 30)
    agg = fld.aggregate(x, ctx(x, 1, round=6, global_weights=torch.zeros(30)))
    assert agg.info["history_reset"] and agg.info["warmup"] and agg.accepted.all()


def test_fldetector_follows_clients_by_id_when_a_row_is_dropped(defense, ctx):
    """A round without client 4 (its update was invalid) keeps every history: no reset, the bad
    clients stay flagged by id, and the absent client is scored again from the rounds it has."""
    gen = torch.Generator().manual_seed(5)
    n, p, bad = 10, 30, [2, 7]
    q = torch.linalg.qr(torch.randn(p, p, generator=gen))[0]
    a = q @ torch.diag(torch.linspace(0.2, 1.0, p)) @ q.T
    centres = torch.randn(n, p, generator=gen)
    w = 5 * torch.randn(p, generator=gen)
    fld = defense("fldetector", n, len(bad), {"window": 3, "k_max": 5, "gap_samples": 10})
    for r in range(1, 10):
        updates = (w - centres) @ a
        updates += 0.02 * updates.norm(dim=1, keepdim=True) / p**0.5 * torch.randn(n, p, generator=gen)
        scale = updates[[k for k in range(n) if k not in bad]].norm(dim=1).mean()
        for k in bad:
            noise = torch.randn(p, generator=gen)
            updates[k] = scale * noise / noise.norm()
        ids = torch.tensor([k for k in range(n) if k != 4]) if r == 6 else torch.arange(n)
        c = ctx(updates[ids], len(bad), round=r, global_weights=w.clone(), client_ids=ids)
        agg = fld.aggregate(updates[ids], c)
        assert "history_reset" not in agg.info
        if r >= 5:
            assert ids[~agg.accepted].tolist() == bad, r
        if r == 6:
            assert len(agg.accepted) == n - 1
        w = w - 0.5 * agg.update
