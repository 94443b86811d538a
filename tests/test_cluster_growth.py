"""A cluster that grows and loses nodes while a run goes (issue 34): pending workers, lost nodes, restarts logged.

The planner tests are pure. The pool tests use the session cluster: a worker killed between two rounds is
restarted by Ray and logged with the round; a worker whose node is reported gone is replaced by one on no
node in particular (a restart Ray would pin to the dead node is no demand for the autoscaler) and its
round's work is done again, with the same updates.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import ray
import torch

from skymask_ray.clients import pool as pool_module
from skymask_ray.clients.pool import ClientPool
from skymask_ray.errors import RunError
from skymask_ray.experiment import build_config
from skymask_ray.layout import PENDING, plan_layout
from skymask_ray.models import ParamSpec, build_model
from skymask_ray.nodes import NodeInfo
from skymask_ray.ray_session import joins_cluster

HEAD = NodeInfo("h" * 51 + "00000", "10.0.0.1", 1)  # `ray start --head --num-cpus 1`
FAKE_GPU = "torch 2.x: no CUDA device visible"


def _fake_gpu_node(i: int) -> NodeInfo:
    return NodeInfo("f" * 51 + f"{i:05d}", "10.0.0.1", 1, 1, cuda=False, note=FAKE_GPU)


# ----- the planner ------------------------------------------------------------------------------------
def test_workers_beyond_the_nodes_present_are_pending_on_a_cluster_that_may_grow():
    grown = plan_layout(3, 12, "auto", [HEAD], grow=True)
    assert grown.workers == 3 and grown.pending == 2  # the head holds one (beside the trainer's half CPU)
    assert [p.workers for p in grown.nodes] == [1] and grown.nodes[0].worker_cpus == 0.5
    plans = grown.worker_plans()
    assert plans[1:] == [PENDING, PENDING] and PENDING.node_id == "" and PENDING.worker_cpus == 1.0
    assert "2 x 1 CPU on nodes to come" in grown.summary() and grown.describe()["pending_workers"] == 2
    squeezed = plan_layout(3, 12, "auto", [HEAD])  # a machine of its own cannot grow: 3 share the head
    assert squeezed.pending == 0 and squeezed.nodes[0].workers == 3 and squeezed.worker_cpus == 0.16


def test_growth_counts_gpu_nodes_torch_cannot_use_as_one_cpu_worker_each():
    nodes = [HEAD, _fake_gpu_node(1), _fake_gpu_node(2)]
    layout = plan_layout(3, 12, "auto", nodes, grow=True)
    by_id = {p.node_id: p for p in layout.nodes}
    assert layout.trainer_node == nodes[1].node_id and layout.trainer_bundle == {"CPU": 1.0, "GPU": 1.0}
    assert by_id[nodes[2].node_id].device == "cpu" and by_id[nodes[2].node_id].workers == 1
    assert by_id[HEAD.node_id].workers == 1 and layout.pending == 1
    assert any("its client workers train on its CPUs" in n for n in layout.notes)


def test_growth_leaves_layouts_that_fit_and_default_pools_alone():
    nodes = [HEAD, _fake_gpu_node(1), _fake_gpu_node(2), NodeInfo("c" * 56, "10.0.0.1", 1)]
    assert plan_layout(3, 12, "auto", nodes, grow=True) == plan_layout(3, 12, "auto", nodes)
    assert plan_layout(None, 12, "auto", [HEAD], grow=True).pending == 0  # one per core of what is there
    assert plan_layout(30, 4, "auto", [HEAD], grow=True).workers == 4  # never more workers than clients


def test_notes_name_nodes_that_share_an_ip_by_their_id():
    """All nodes of a one-machine cluster have one IP: the notes add each node's id (its last digits)."""
    layout = plan_layout(3, 12, "auto", [HEAD, _fake_gpu_node(1), _fake_gpu_node(2)], grow=True)
    assert any("node 10.0.0.1/f00002: Ray lists 1 GPU(s)" in n for n in layout.notes), layout.notes
    assert any("node 10.0.0.1/f00001: the mask trainer holds a GPU" in n for n in layout.notes), layout.notes
    alone = plan_layout(None, 12, "auto", [NodeInfo("g" * 56, "10.0.0.9", 1, 1, cuda=False, note=FAKE_GPU),
                                           NodeInfo("c" * 56, "10.0.0.8", 2)])
    assert "node 10.0.0.9: the mask trainer" in alone.notes[0]


@pytest.mark.parametrize(("address", "env", "joins"), [
    (None, None, False), ("local", None, False), (None, "local", False), ("auto", None, True),
    ("10.0.0.1:6379", None, True), (None, "http://127.0.0.1:8265", True), ("", "10.0.0.1:6379", True)])
def test_only_a_joined_cluster_may_grow(monkeypatch, address, env, joins):
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert joins_cluster(address) is joins


# ----- the pool on the session cluster --------------------------------------------------------------
def _pool(workers: int = 2) -> tuple[ClientPool, torch.Tensor, list[int]]:
    cfg = build_config(overrides={"data": {"dataset": "digits"}, "model": "mlp", "clients": 16,
                                  "train": {"batch_size": 8, "grad_clip": None, "local_epochs": 3}})
    rng = np.random.default_rng(0)
    x = rng.random((640, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 640)
    parts = [np.arange(i * 40, (i + 1) * 40) for i in range(16)]
    model = build_model("mlp", (1, 8, 8), 10, 0)
    spec = ParamSpec.of(model)
    return ClientPool(cfg, x, y, parts, [False] * 16, 10, spec.numel, workers, 0.5), spec.flatten(model), \
        list(range(16))


def test_worker_lost_between_rounds_is_restarted_and_the_round_logged(ray_cluster, caplog):
    pool, w, ids = _pool()
    try:
        clean = pool.train(w, {}, 2, ids).updates
        pid = pool.homes[0][0]
        ray.kill(pool.workers[0], no_restart=False)  # its process dies after round 1's training, Ray restarts it
        with caplog.at_level(logging.WARNING, logger="skymask_ray.clients.pool"):
            again = pool.train(w, {}, 2, ids).updates
    finally:
        pool.shutdown()
    assert torch.equal(clean, again)
    assert pool.homes[0][0] != pid
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"round 2: client worker 0 was restarted (pid {pid} -> ") for m in lines), lines


def test_worker_whose_node_is_gone_is_replaced_and_its_round_redone(ray_cluster, caplog, monkeypatch):
    """Ray would restart it pinned (soft) to its dead node, which is no autoscaler demand: the pool replaces it."""
    pool, w, ids = _pool()
    try:
        clean = pool.train(w, {}, 1, ids).updates
        lost = pool.homes[0][1]
        real_nodes = ray.nodes
        monkeypatch.setattr(pool_module, "NODE_CHECK_S", 0.01)  # check before the round's training is done
        monkeypatch.setattr(ray, "nodes", lambda: [{**n, "Alive": n["Alive"] and n["NodeID"] != lost}
                                                   for n in real_nodes()])
        with caplog.at_level(logging.WARNING, logger="skymask_ray.clients.pool"):
            again = pool.train(w, {}, 1, ids).updates
        monkeypatch.setattr(ray, "nodes", real_nodes)
        after = pool.train(w, {}, 1, ids).updates  # the replacements train on
    finally:
        pool.shutdown()
    assert torch.equal(clean, again) and torch.equal(clean, after)
    on_lost = [i for i in range(len(pool.workers)) if pool.replaced[i]]
    assert 0 in on_lost and all(pool.replaced[i] == 1 for i in on_lost)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("round 1: client worker 0 lost its node") for m in lines), lines


def test_a_worker_that_keeps_losing_its_node_stops_the_run(ray_cluster, monkeypatch):
    pool, w, ids = _pool(workers=1)
    try:
        monkeypatch.setattr(pool_module, "NODE_CHECK_S", 0.0)
        monkeypatch.setattr(pool_module.ray, "nodes", lambda: [])  # every node gone, every time it looks
        with pytest.raises(RunError, match=r"round 4: client worker 0 lost its node 4 times and is not replaced"):
            for r in range(1, 5):  # each round it answers from a node, and then that node is gone
                pool.train(w, {}, r, ids)
    finally:
        monkeypatch.undo()
        pool.shutdown()


def test_a_call_that_finds_its_worker_unavailable_is_made_again(monkeypatch):
    """A lost node's worker is "unavailable" until the node is marked dead, and Ray's retries of a call are
    spent within that time: the pool makes the call again after NODE_CHECK_S instead of giving up."""
    unavailable = ray.exceptions.ActorUnavailableError("node lost", b"\0" * 16)
    outcomes = {"a0": unavailable, "a1": {"where": 1}, "b0": {"where": 2}}

    class Ray:  # the calls ClientPool._gather makes, scripted
        exceptions = ray.exceptions

        @staticmethod
        def wait(refs, num_returns, timeout):
            return list(refs), []

        @staticmethod
        def get(ref):
            if isinstance(outcomes[ref], Exception):
                raise outcomes[ref]
            return outcomes[ref]

        @staticmethod
        def nodes():
            return [{"NodeID": "n1", "Alive": True}]

    monkeypatch.setattr(pool_module, "ray", Ray)
    monkeypatch.setattr(pool_module, "NODE_CHECK_S", 0.01)
    pool = object.__new__(ClientPool)
    pool.homes, pool.replaced = [(7, "n1"), (8, "n1")], [0, 0]
    again = []

    def call_again(i):
        again.append(i)
        return "a1"

    assert pool._gather({0: "a0", 1: "b0"}, call_again, 5.0, 3) == {0: {"where": 1}, 1: {"where": 2}}
    assert again == [0] and pool.replaced == [0, 0]
