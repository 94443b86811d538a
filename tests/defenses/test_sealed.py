"""Defenses see only what a server sees: no path from a defense object (or its round context) reaches the
malicious count, the malicious mask, the attacker ids or the run seed (issue 32, item 4)."""

from __future__ import annotations

import dataclasses
import functools
import types
from collections import deque
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from skymask_ray.config import PRESETS, ExperimentConfig
from skymask_ray.context import DefenseContext
from skymask_ray.defenses import DEFENSES, build_defense
from skymask_ray.experiment import build_config
from skymask_ray.models import ParamSpec
from skymask_ray.population import MaliciousSet, Population, malicious_population

from .helpers import make_ctx

SEED = 918_273_645  # distinctive values: any int equal to one of them on a path is a leak
N, FRACTION, K, DECLARED = 1000, 0.137, 50, 3
TRUE_F = round(N * FRACTION)  # 137
P = 12

_LEAVES = (str, bytes, bool, float, type(None), type, types.ModuleType, torch.dtype, torch.device, torch.Size,
           torch.Tensor, np.ndarray, np.generic)


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """What an attribute path can step to from ``obj``: items, fields, closures, bound selves."""
    if isinstance(obj, (int, *_LEAVES)) or isinstance(obj, torch.Generator) or type(obj).__module__.startswith("ray."):
        return  # Ray handles and refs: reaching through them takes a remote call, not an attribute
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"[{k!r}]", k
            yield f"[{k!r}]", v
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        for i, v in enumerate(obj):
            yield f"[{i}]", v
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
    elif isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            yield f".__closure__[{i}]", cell.cell_contents
        yield ".__defaults__", obj.__defaults__
        yield ".__kwdefaults__", obj.__kwdefaults__
    elif isinstance(obj, functools.partial):
        yield ".func", obj.func
        yield ".args", obj.args
        yield ".keywords", obj.keywords
    else:
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                yield f".{name}", getattr(obj, name)
        for name, v in getattr(obj, "__dict__", {}).items():
            yield f".{name}", v


def reachable(root: Any, name: str) -> Iterator[tuple[str, Any]]:
    """(path, object) for every object reachable from ``root`` through attributes, items and closures."""
    seen: set[int] = set()
    stack = [(name, root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield path, obj
        stack.extend((path + step, child) for step, child in _children(obj))


def leaks(root: Any, name: str, malicious: MaliciousSet) -> list[str]:
    """Paths from ``root`` to ground truth: the config, the population or its malicious set, the true count,
    the malicious mask over the population or the attackers' ids, the run seed."""
    mask, ids = malicious.mask(np.arange(malicious.size)), malicious.sorted_ids()
    found = []
    for path, obj in reachable(root, name):
        if isinstance(obj, (ExperimentConfig, Population, MaliciousSet)):
            found.append(f"{path}: {type(obj).__name__}")
        elif isinstance(obj, int) and not isinstance(obj, bool) and obj in (SEED, TRUE_F):
            found.append(f"{path} = {obj}")
        elif isinstance(obj, float) and obj == FRACTION:
            found.append(f"{path} = {obj} (the malicious fraction)")
        elif isinstance(obj, torch.Generator) and obj.initial_seed() == SEED:
            found.append(f"{path}: a generator seeded with the run seed")
        elif isinstance(obj, (np.ndarray, torch.Tensor)) and obj.shape in ((N,), ids.shape):
            a = obj.cpu().numpy() if isinstance(obj, torch.Tensor) else obj
            if np.array_equal(a, mask) or np.array_equal(a, ids):
                found.append(f"{path}: the malicious mask or ids")
    return found


def _cfg(name: str, params: dict[str, Any]) -> ExperimentConfig:
    return build_config(overrides={
        "data": {"dataset": "synthetic"}, "model": "mlp", "clients": N, "cohort": K, "malicious_fraction": FRACTION,
        "declared_f": DECLARED, "seed": SEED, "defense": name, "defense_params": params})


@pytest.mark.parametrize("pre", [None, "nnm"])
@pytest.mark.parametrize("name", DEFENSES.names())
def test_no_path_from_a_defense_reaches_the_truth(name, pre):
    cfg = _cfg(name, {} if pre is None else {"pre": pre})
    assert cfg.num_malicious == TRUE_F and cfg.cohort_size == K
    malicious = malicious_population(N, cfg.num_malicious, cfg.malicious_selection, cfg.seed)
    spec = ParamSpec(("w",), (torch.Size([P]),), (0,), P)
    d = build_defense(cfg, spec)
    assert d.settings.declared_f == DECLARED and d.settings.seed != SEED
    if name != "skymask":  # a round or two, so stateful defenses hold their state too
        g = torch.Generator().manual_seed(0)
        for r in (1, 2):
            x = torch.randn(K, P, generator=g)
            d.aggregate(x, make_ctx(x, DECLARED, round=r, server_update=x.mean(0),
                                    client_ids=torch.arange(K) * 7))
    assert leaks(d, "defense", malicious) == []


def test_the_walk_finds_a_config_held_by_a_defense():
    """The check can fail: a defense that kept the config (as every defense did before) is caught."""
    cfg = _cfg("fedavg", {})
    malicious = malicious_population(N, cfg.num_malicious, cfg.malicious_selection, cfg.seed)
    d = build_defense(cfg)
    d.kept = {"note": [cfg]}
    assert "defense.kept['note'][0]: ExperimentConfig" in leaks(d, "defense", malicious)
    seed, ids = cfg.seed, malicious.sorted_ids()
    d.kept = lambda: seed + len(ids)  # a closure over the run seed and the attacker ids
    assert sorted(leaks(d, "defense", malicious)) == ["defense.kept.__closure__[0]: the malicious mask or ids",
                                                      f"defense.kept.__closure__[1] = {SEED}"]
    mask = torch.from_numpy(malicious.mask(np.arange(N)))
    d.kept = {"who": mask, "set": malicious}  # the mask over the population (a tensor), the set itself
    found = leaks(d, "defense", malicious)
    assert "defense.kept['who']: the malicious mask or ids" in found and "defense.kept['set']: MaliciousSet" in found


def test_the_round_context_carries_no_run_seed():
    assert "seed" not in {f.name for f in dataclasses.fields(DefenseContext)}


def test_attacker_ids_carry_no_information_by_default():
    cfg = ExperimentConfig()
    assert cfg.malicious_selection == "random"
    first = np.zeros(cfg.clients, dtype=bool)
    first[: cfg.num_malicious] = True
    everyone = np.arange(cfg.clients)
    drawn = [malicious_population(cfg.clients, cfg.num_malicious, cfg.malicious_selection, s).mask(everyone)
             for s in range(3)]
    assert all(int(m.sum()) == cfg.num_malicious and not np.array_equal(m, first) for m in drawn)
    assert not np.array_equal(drawn[0], drawn[1])
    # the paper presets keep the first f clients, so their published rows stay
    assert all(PRESETS[p]["malicious_selection"] == "first" for p in PRESETS if p.startswith("paper-"))


@pytest.mark.slow
def test_no_path_from_a_real_round_context_reaches_the_truth(ray_cluster, tmp_path):
    """The context the round loop hands SkyMask (its mask selector closes over the server's service) and the
    defense it built: neither leads to the run seed, the true count or the attackers."""
    from skymask_ray.simulation import Simulation

    cfg = build_config(overrides={
        "data": {"dataset": "synthetic", "synthetic_train": 2000, "root_size": 50}, "model": "mlp", "clients": N,
        "cohort": K, "malicious_fraction": FRACTION, "declared_f": DECLARED, "seed": SEED, "attack": "min_max",
        "defense": "skymask", "rounds": 1, "workers": 1, "skymask": {"mask_epochs": 1, "kernel": "eager"}})
    seen = []
    with Simulation(cfg, tmp_path, local_clients=True) as sim:
        own = sim.defense.aggregate

        def spy(updates, ctx):
            seen.append(ctx)
            return own(updates, ctx)

        sim.defense.aggregate = spy
        sim.run_round(1)
        malicious = sim.population.malicious
        sim.defense.aggregate = own
        assert len(seen) == 1 and seen[0].mask_selector is not None
        assert leaks(seen[0], "ctx", malicious) == []
        assert leaks(sim.defense, "defense", malicious) == []
