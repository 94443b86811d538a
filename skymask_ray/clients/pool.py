"""Client execution: virtual clients on a fixed pool of Ray actors, or in this process for tests.

The training set goes into the object store once; every worker reads it
zero-copy and asks a :class:`~skymask_ray.data.shards.ClientShards` for a
client's sample *indices*. A materialised split (:class:`ShardTable`) is
divided among the workers once, each holding its own clients' indices (at
most the training set's size in all), and a client always trains on its
worker. Seeded clients (:class:`SeededShards`, a cross-device population)
are one shared object of O(training set) size: any worker derives any
client's indices from its seed, so each round's cohort is dealt out to the
workers afresh and nothing per client of the population is held anywhere.
A worker materialises a client's samples (and, for a data-poisoning
attacker, poisons them with the client's own seeded stream, so the result
is the same every time) when it trains the client; while all of a
worker's shards together are no larger than the training set they stay
cached. Each round the driver puts the global weights once and every worker
returns one stacked (n_i x P) array for the clients it trained.

Workers restart on failure and Ray re-runs the lost round's task on the new
actor (at most ``MAX_RESTARTS`` times, then the run stops with one line naming
the worker); because every client draws from its own seeded stream the redone
work gives the same updates. A worker whose node is gone is replaced by one on
no node in particular (Ray would restart it with the old node's affinity, which
the autoscaler does not count as demand), and a restart is logged with its
round. A worker's data reaches it as refs inside an argument of every call
(:class:`WorkerInit`), never as constructor arguments, so a restarted worker
rebuilds its clients.

:class:`ClientBackend` is what the round loop needs; :class:`ClientPool` is
the Ray implementation and :class:`LocalClients` the in-process one.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Container, Protocol, Sequence

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..actors import MAX_RESTARTS, ByRef, out_of_memory, ray_failure
from ..config import ExperimentConfig
from ..data.shards import ClientShards, ShardTable
from ..errors import RunError
from ..kernels import tune_numpy_allocations
from ..layout import GROW_TIMEOUT_S, Layout
from ..linalg import from_readonly
from ..models import ParamSpec, build_model
from ..nodes import require_cuda, short_id
from ..procfs import pss_mb, rss_mb
from ..seeding import torch_generator
from .training import SGDSettings, client_generator, client_mode, train_sequential, train_vmap

log = logging.getLogger(__name__)

NODE_CHECK_S = 5.0  # how often a call still running checks whether its worker's node is gone

Poison = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (x, y, generator, client=k) -> (x, y)
Poisoned = Container[int]  # the ids of data-poisoning clients (a MaliciousSet, a frozenset)


def as_shards(parts: ClientShards | Sequence[np.ndarray]) -> ClientShards:
    """``parts`` as shards: a list of index arrays is clients 0 .. len-1 holding them."""
    return ShardTable.of(parts) if isinstance(parts, (list, tuple)) else parts


def as_poisoned(poisoned: Poisoned | Sequence[bool] | None) -> Poisoned:
    """``poisoned`` as a container of client ids: a list of flags names the clients whose flag is set."""
    if poisoned is None:
        return frozenset()
    if isinstance(poisoned, (list, tuple)):
        return frozenset(k for k, bad in enumerate(poisoned) if bad)
    return poisoned


def sgd_settings(cfg: ExperimentConfig, **overrides: Any) -> SGDSettings:
    """The clients' local SGD settings from the config; ``overrides`` (an attack's ``poison_sgd()``) replace
    some of them for the attackers."""
    t = cfg.train
    return dataclasses.replace(SGDSettings(lr=t.local_lr, batch_size=t.batch_size, epochs=t.local_epochs,
                                           steps=t.local_steps, grad_clip=t.grad_clip), **overrides)


class ClientWorker:
    """Trains any client its shards answer for, from given global weights."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        shards: ClientShards,
        poisoned: Poisoned,
        cfg: ExperimentConfig,
        num_classes: int,
        poison: Poison | None = None,
        threads: int = 1,
        poison_sgd: SGDSettings | None = None,
    ) -> None:
        """``poison_sgd``: how the data-poisoned clients train (None: like the others)."""
        torch.set_num_threads(threads)
        tune_numpy_allocations()
        # CUDA exactly when Ray gave this actor a GPU (the layout asked for one): then it must work, no CPU fallback
        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        use_cuda = cfg.device != "cpu" and in_actor and len(ray.get_gpu_ids()) > 0
        if use_cuda:
            require_cuda("a client worker")
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.cfg = cfg
        self.x_train, self.y_train = x_train, y_train
        self.model = build_model(cfg.model, tuple(x_train.shape[1:]), num_classes).to(self.device)
        self.spec = ParamSpec.of(self.model)
        self.has_buffers = any(True for _ in self.model.buffers())
        self.mode = client_mode(cfg.train.client_exec, self.device.type, self.has_buffers)
        self.poison, self.poison_sgd = poison, poison_sgd
        self.shards = shards
        self.poisoned = poisoned
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = \
            {} if shards.total <= len(y_train) else None
        self._warm_up()

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client k's samples (poisoned with its own stream if it is a data-poisoning attacker)."""
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        idx = self.shards.indices(k)
        x = torch.from_numpy(np.ascontiguousarray(self.x_train[idx]))
        y = torch.from_numpy(np.ascontiguousarray(self.y_train[idx]))
        if k in self.poisoned:
            if self.poison is None:
                raise ValueError(f"client {k} is data-poisoned, but the worker has no poison function")
            x, y = self.poison(x, y, torch_generator(self.cfg.seed, "poison", k), client=k)
        data = (x.to(self.device), y.to(self.device))
        if self.cache is not None:
            self.cache[k] = data
        return data

    def _warm_up(self) -> None:
        """One throw-away step of a full batch, so torch's lazy imports and the kernel set-up for the
        batch shape are paid at setup, not in round 1's timing."""
        k = self.shards.first()
        if k is None:
            return
        x, y = self.client_data(k)
        w = self.spec.flatten(self.model).to(self.device)
        b = min(len(y), self.cfg.train.batch_size)
        s = SGDSettings(lr=0.0, batch_size=b, steps=1)
        gens = [torch.Generator().manual_seed(0)]
        if self.mode == "vmap" and not self.has_buffers:
            train_vmap(self.model, self.spec, w, [(x[:b], y[:b])], gens, s)
        else:
            train_sequential(self.model, self.spec, w, [(x[:b], y[:b])], gens, s)

    def train(self, w: np.ndarray, buffers: dict[str, np.ndarray], round_idx: int, client_ids: list[int]) -> dict:
        """Local SGD for ``client_ids`` from ``w``; returns their stacked updates (and buffers), in that order."""
        w_t = from_readonly(w).to(self.device)
        bufs = {n: from_readonly(b).to(self.device) for n, b in buffers.items()}
        honest = sgd_settings(self.cfg)
        groups: dict[SGDSettings, list[int]] = {}  # rows trained alike: the honest, and the attackers' own settings
        for i, k in enumerate(client_ids):
            groups.setdefault(self.poison_sgd if self.poison_sgd and k in self.poisoned else honest, []).append(i)
        done = [(rows, *self._train(w_t, bufs, round_idx, [client_ids[i] for i in rows], s))
                for s, rows in groups.items()]
        if len(done) == 1:
            _, updates, client_bufs = done[0]
        else:
            updates = torch.empty(len(client_ids), self.spec.numel, dtype=w_t.dtype, device=w_t.device)
            client_bufs = [{} for _ in client_ids]
            for rows, u, b in done:
                updates[rows] = u
                for i, cb in zip(rows, b):
                    client_bufs[i] = cb
        out_bufs: dict[str, np.ndarray] = {}
        if bufs and client_bufs and client_bufs[0]:
            out_bufs = {n: torch.stack([cb[n] for cb in client_bufs]).cpu().numpy() for n in bufs}
        return {"ids": list(client_ids), "updates": updates.cpu().numpy(), "buffers": out_bufs, "rss_mb": rss_mb(),
                "pss_mb": pss_mb()}

    def _train(self, w_t: torch.Tensor, bufs: dict[str, torch.Tensor], round_idx: int, ids: list[int],
               s: SGDSettings) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Clients ``ids`` trained with ``s``: their (len(ids) x P) updates and buffers (none on the vmap path)."""
        data = [self.client_data(k) for k in ids]
        gens = [client_generator(self.cfg.seed, round_idx, k) for k in ids]
        if self.mode == "vmap" and not self.has_buffers:
            return train_vmap(self.model, self.spec, w_t, data, gens, s, self.cfg.train.vmap_chunk), []
        return train_sequential(self.model, self.spec, w_t, data, gens, s, bufs)


@dataclass(frozen=True)
class WorkerInit:
    """What a worker needs to hold its clients: object-store refs (kept alive by the pool) and small lists."""

    x: ByRef
    y: ByRef
    shards: ByRef  # (ClientShards, Poisoned): this worker's clients' indices, or the seeded population's
    cfg: ExperimentConfig
    num_classes: int
    poison: Poison | None
    poison_sgd: SGDSettings | None = None


class WorkerHost:
    """The Ray actor around a :class:`ClientWorker`, built from a :class:`WorkerInit` on first use.

    Every call carries the init (a few refs, not the data), so an actor that Ray
    restarted rebuilds its clients before redoing the task. Its constructor takes
    nothing from the object store (Ray cannot restart actors whose constructor
    arguments live there, and logs an ERROR for each).
    """

    def __init__(self) -> None:
        self.worker: ClientWorker | None = None

    def load(self, init: WorkerInit) -> tuple[int, str]:
        """Build the clients (once per process); returns :meth:`where` this worker runs."""
        if self.worker is None:
            shards, poisoned = init.shards.get()
            self.worker = ClientWorker(init.x.get(), init.y.get(), shards, poisoned, init.cfg, init.num_classes,
                                       init.poison, poison_sgd=init.poison_sgd)
        return self.where()

    def train(self, init: WorkerInit, w: np.ndarray, buffers: dict[str, np.ndarray], round_idx: int,
              client_ids: list[int]) -> dict:
        self.load(init)
        return {**self.worker.train(w, buffers, round_idx, client_ids), "where": self.where()}

    def where(self) -> tuple[int, str]:
        """(process id, Ray node id): a restarted worker answers with another pair."""
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()


def assign_clients(sizes: list[int], workers: int) -> list[list[int]]:
    """Longest-processing-time-first assignment of clients to workers by sample count."""
    heap = [(0, w) for w in range(workers)]
    out: list[list[int]] = [[] for _ in range(workers)]
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        load, w = heapq.heappop(heap)
        out[w].append(k)
        heapq.heappush(heap, (load + sizes[k], w))
    return [sorted(ks) for ks in out]


@dataclass
class RoundTraining:
    """Stacked results of one round's client training, rows in the order the ids were asked for."""

    updates: torch.Tensor  # (len(ids), P)
    buffers: dict[str, torch.Tensor]  # name -> (len(ids), ...) for BatchNorm models, else empty
    worker_rss_mb: float  # summed peak RSS of the workers (shared pages counted in each)
    worker_pss_mb: float = 0.0  # summed PSS of the workers now (shared pages counted once)


class ClientBackend(Protocol):
    """What the round loop needs from client execution (Flower's ``Backend`` shape)."""

    def train(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], round_idx: int,
              ids: list[int]) -> RoundTraining: ...

    def placement(self) -> list[str]: ...

    def shutdown(self) -> None: ...


def _stack(results: list[dict], ids: list[int], numel: int, buffers: dict[str, torch.Tensor]) -> RoundTraining:
    """Put the workers' blocks into one (len(ids) x P) matrix in the order of ``ids``."""
    if len(results) == 1 and results[0]["ids"] == list(ids):
        r = results[0]
        return RoundTraining(from_readonly(r["updates"]).clone(),
                             {n: from_readonly(b).clone() for n, b in r["buffers"].items()}, r["rss_mb"],
                             r["pss_mb"])
    row = {k: i for i, k in enumerate(ids)}
    updates = torch.empty(len(ids), numel)
    out_bufs = {n: b.expand(len(ids), *b.shape).clone() for n, b in buffers.items()}
    rss = pss = 0.0
    for r in results:
        pos = torch.as_tensor([row[k] for k in r["ids"]], dtype=torch.long)
        updates[pos] = from_readonly(r["updates"])
        for n, b in r["buffers"].items():
            out_bufs[n][pos] = from_readonly(b)
        rss += r["rss_mb"]
        pss += r["pss_mb"]
    return RoundTraining(updates, out_bufs, rss, pss)


class ClientPool:
    """The driver's handle on the client-worker actors (the Ray :class:`ClientBackend`)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        x_train: np.ndarray,
        y_train: np.ndarray,
        shards: ClientShards | Sequence[np.ndarray],
        poisoned: Poisoned | Sequence[bool] | None,
        num_classes: int,
        numel: int,
        workers: int | Layout,
        worker_cpus: float = 1.0,
        poison: Poison | None = None,
        timeout_s: float = 3600.0,
        poison_sgd: SGDSettings | None = None,
    ) -> None:
        """``workers``: a :class:`Layout` (workers pinned to its nodes, GPU workers with their GPU share, clients
        shared by the workers' weights) or a count of CPU workers of ``worker_cpus`` each, spread.

        ``shards``: a :class:`ShardTable` (or a list of index arrays) is divided among the workers once; any
        other shards (seeded clients) go whole to every worker, and each round's clients are dealt out."""
        shards, poisoned = as_shards(shards), as_poisoned(poisoned)
        self.numel, self.timeout_s = numel, timeout_s
        self.x_ref, self.y_ref = ray.put(x_train), ray.put(y_train)  # kept alive for actor restarts
        plans = workers.worker_plans() if isinstance(workers, Layout) else [None] * workers
        # a worker of weight w takes w virtual slots (GPU workers train more clients)
        low = min((p.weight for p in plans if p is not None), default=1.0)
        slots = [i for i, p in enumerate(plans)
                 for _ in range(1 if p is None else min(64, max(1, round(p.weight / low))))]
        if isinstance(shards, ShardTable):  # each worker holds its own clients' indices (LPT by sample count)
            ids = sorted(shards.parts)
            mine: list[list[int]] = [[] for _ in plans]
            for i, ks in zip(slots, assign_clients(shards.sizes(), len(slots))):
                mine[i] += [ids[j] for j in ks]
            keep = [i for i, ks in enumerate(mine) if ks]
            self.assignment: list[list[int]] | None = [sorted(mine[i]) for i in keep]
            self.owner: dict[int, int] | None = {k: w for w, ks in enumerate(self.assignment) for k in ks}
            self.shard_refs = [ray.put((shards.subset(ks), poisoned)) for ks in self.assignment]
        else:  # one shared value: any worker derives any client
            keep = list(range(len(plans)))
            self.assignment, self.owner = None, None
            self.shard_refs = [ray.put((shards, poisoned))] * len(plans)
            self.slots = slots
        self.plans = [plans[i] for i in keep]
        self.worker_cpus = worker_cpus
        self.inits = [WorkerInit(ByRef(self.x_ref), ByRef(self.y_ref), ByRef(ref), cfg, num_classes, poison,
                                 poison_sgd) for ref in self.shard_refs]
        self.workers = [self._spawn(i) for i in range(len(self.plans))]
        # (pid, node) where each worker runs: its planned node until it answers; 0 and "" after a replacement
        self.homes: list[tuple[int, str]] = [(0, p.node_id if p is not None else "") for p in self.plans]
        self.replaced = [0] * len(self.plans)
        waiting = sum(1 for p in self.plans if p is not None and not p.node_id)
        start_timeout = min(timeout_s, GROW_TIMEOUT_S if waiting else 300.0)
        what = workers.summary() if isinstance(workers, Layout) else f"{workers} x {worker_cpus} CPU, spread"
        if waiting:
            log.warning("%d client worker(s) of 1 CPU wait for nodes that the cluster does not have yet (the "
                        "autoscaler's demand), at most %.0fs", waiting, start_timeout)
        phase = "set-up (client workers loading their clients)"
        try:
            got = self._gather({i: w.load.remote(init) for i, (w, init) in enumerate(zip(self.workers, self.inits))},
                               lambda i: self.workers[i].load.remote(self.inits[i]), start_timeout, None)
            self.homes = [tuple(got[i]) for i in range(len(self.workers))]
        except _Unfinished as late:
            self.shutdown()
            hint = (f"; {late.count} of them waited for CPUs the cluster did not add (is it at its max_workers, "
                    f"or without an autoscaler?): lower --workers" if waiting else "")
            raise RunError(
                f"client workers could not start within {start_timeout:.0f}s ({what}){hint}; "
                f"cluster resources: {ray.cluster_resources()}"
            ) from None
        except ray.exceptions.RayTaskError as exc:  # e.g. a GPU worker whose torch cannot use CUDA: one line
            self.shutdown()
            if isinstance(exc.cause, RunError):
                raise RunError(str(exc.cause)) from None
            cause = exc.cause if exc.cause is not None else exc
            raise RunError(f"client workers could not set up their clients: {type(cause).__name__}: "
                           f"{str(cause).strip().splitlines()[-1][:200]}") from None
        except _WorkerDied as dead:
            self.shutdown()
            if out_of_memory(dead.exc):
                raise ray_failure(dead.exc, phase, self._who(dead.worker)) from None
            raise RunError(f"{self._who(dead.worker)} died {MAX_RESTARTS + 1} times while starting "
                           f"({type(dead.exc).__name__}: {str(dead.exc).strip().splitlines()[0][:160]})") from None
        except ray.exceptions.RayError as exc:  # anything else Ray reports (an object lost with its node, ...)
            self.shutdown()
            raise ray_failure(exc, phase, "a client worker") from None
        except BaseException:
            self.shutdown()
            raise

    def _who(self, i: int | None) -> str:
        """Client worker ``i`` and its node, for a one-line error."""
        if i is None:
            return "a client worker"
        plan = self.plans[i]
        return f"client worker {i}" + (f" on node {plan.ip}" if plan is not None else "")

    def _route(self, ids: list[int]) -> list[list[int]]:
        """Which worker trains which of ``ids``: a table's clients their owner, seeded clients dealt by weight."""
        per_worker: list[list[int]] = [[] for _ in self.workers]
        if self.owner is not None:
            for k in ids:
                per_worker[self.owner[k]].append(k)
        else:
            for j, k in enumerate(ids):
                per_worker[self.slots[j % len(self.slots)]].append(k)
        return per_worker

    def _spawn(self, i: int, pinned: bool = True) -> "ray.actor.ActorHandle":
        """Start worker ``i``'s actor: on its planned node (soft: a restart may move), or wherever one has room."""
        p, host = self.plans[i], ray.remote(WorkerHost)
        again = {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS}
        if p is None:
            return host.options(num_cpus=self.worker_cpus, scheduling_strategy="SPREAD", **again).remote()
        if pinned and p.node_id:
            return host.options(num_cpus=p.worker_cpus, num_gpus=p.worker_gpus, **again,
                                scheduling_strategy=NodeAffinitySchedulingStrategy(p.node_id, soft=True)).remote()
        return host.options(num_cpus=p.worker_cpus, num_gpus=p.worker_gpus, scheduling_strategy="SPREAD",
                            **again).remote()

    def _gather(self, calls: dict[int, "ray.ObjectRef"], call_again: Callable[[int], "ray.ObjectRef"],
                timeout_s: float, round_idx: int | None) -> dict[int, object]:
        """The results of ``calls`` (worker index -> ref), waiting at most ``timeout_s`` (else :class:`_Unfinished`).

        Ray restarts a worker that died and retries its call, with two gaps when a node is lost, which this
        closes:

        * until the cluster marks the node dead (tens of seconds), the worker is "unavailable", and Ray's
          retries of the call are used up within that time: a call that ends so is made again after
          ``NODE_CHECK_S`` (until its worker answers, or its node is found gone);
        * a worker restarting with a soft affinity to a node that is gone is not demand the autoscaler
          sees (Ray does not report node-affinity requests): on a cluster without room it would wait
          forever. So every ``NODE_CHECK_S`` a call not answered whose worker's node is gone gets a new
          worker on no node in particular, and is made again.
        """
        pending, results, retry = dict(calls), {}, {}  # retry: worker -> when its call found it unavailable
        deadline = time.monotonic() + timeout_s
        while pending or retry:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Unfinished(len(pending) + len(retry))
            ready: list = []
            if pending:
                ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=min(NODE_CHECK_S, left))
            else:
                time.sleep(min(NODE_CHECK_S, left))
            for i in [i for i, ref in pending.items() if ref in ready]:
                try:
                    results[i] = ray.get(pending.pop(i))
                except ray.exceptions.ActorUnavailableError:
                    retry[i] = time.monotonic()
                except ray.exceptions.RayActorError as exc:
                    raise _WorkerDied(i, exc) from None
            for i in self._replace_lost([*pending, *retry], round_idx):
                retry.pop(i, None)
                pending[i] = call_again(i)
            for i in [i for i, t in retry.items() if time.monotonic() - t >= NODE_CHECK_S]:
                del retry[i]
                pending[i] = call_again(i)
        return results

    def _replace_lost(self, workers: list[int], round_idx: int | None) -> list[int]:
        """Of ``workers``, those whose node is gone, each replaced by a new worker on no node in particular."""
        homes = {self.homes[i][1] for i in workers} - {""}
        if not homes:
            return []
        alive = {str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")}
        lost = [i for i in workers if self.homes[i][1] in homes - alive]
        for i in lost:
            self.replaced[i] += 1
            when = f"round {round_idx}" if round_idx is not None else "start"
            if self.replaced[i] > MAX_RESTARTS:
                raise RunError(f"{when}: client worker {i} lost its node {self.replaced[i]} times and is not "
                               f"replaced again")
            ray.kill(self.workers[i], no_restart=True)
            self.workers[i] = self._spawn(i, pinned=False)
            log.warning("%s: client worker %d lost its node %s; a new worker, on whichever node has room (on a full "
                        "cluster: demand for the autoscaler), trains its clients for this call", when, i,
                        short_id(self.homes[i][1]))
            self.homes[i] = (0, "")
        return lost

    def train(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], round_idx: int, ids: list[int]) -> RoundTraining:
        """Train ``ids`` on their workers; one stacked matrix, rows in the order of ``ids``."""
        w_ref = ray.put(w.cpu().numpy())
        b_ref = ray.put({n: b.cpu().numpy() for n, b in buffers.items()})
        per_worker = self._route(ids)
        busy = [i for i, mine in enumerate(per_worker) if mine]

        def call(i: int) -> "ray.ObjectRef":
            return self.workers[i].train.remote(self.inits[i], w_ref, b_ref, round_idx, per_worker[i])

        try:
            got = self._gather({i: call(i) for i in busy}, call, self.timeout_s, round_idx)
        except _Unfinished:
            raise RunError(f"client training did not finish within {self.timeout_s:.0f}s") from None
        except _WorkerDied as dead:
            if out_of_memory(dead.exc):
                raise ray_failure(dead.exc, f"round {round_idx}, client training", self._who(dead.worker)) from None
            raise RunError(f"round {round_idx}: {self._who(dead.worker)} died {MAX_RESTARTS + 1} times and is not "
                           f"restarted again ({type(dead.exc).__name__}: "
                           f"{str(dead.exc).strip().splitlines()[0][:160]})") from None
        except ray.exceptions.RayError as exc:
            raise ray_failure(exc, f"round {round_idx}, client training", "a client worker") from None
        results = [got[i] for i in busy]
        for i, r in zip(busy, results):
            self._note_move(i, tuple(r["where"]), round_idx, len(r["ids"]))
        return _stack(results, ids, self.numel, buffers)

    def _note_move(self, i: int, where: tuple[int, str], round_idx: int, clients: int) -> None:
        """Log a worker that answers from another process than before: it was restarted (its process or node
        was lost, during this round or since the last), and this round's training of its clients ran anew."""
        (pid, node), (new_pid, new_node) = self.homes[i], where
        self.homes[i] = where
        if pid in (0, new_pid):  # the same process, or a replacement's first answer (logged when it was made)
            return
        moved = f"node {short_id(node)} -> {short_id(new_node)}" if node != new_node else f"node {short_id(node)}"
        log.warning("round %d: client worker %d was restarted (pid %d -> %d, %s); its %d clients of this round "
                    "were trained by the new process", round_idx, i, pid, new_pid, moved, clients)

    def placement(self) -> list[str]:
        """The Ray node of each client worker as last seen (at start, or in the last round it trained)."""
        return [node for _, node in self.homes]

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers], timeout=self.timeout_s)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)


class LocalClients:
    """All clients in one in-process :class:`ClientWorker` (no Ray): the test backend."""

    def __init__(self, cfg: ExperimentConfig, x_train: np.ndarray, y_train: np.ndarray,
                 shards: ClientShards | Sequence[np.ndarray], poisoned: Poisoned | Sequence[bool] | None,
                 num_classes: int, numel: int, poison: Poison | None = None,
                 poison_sgd: SGDSettings | None = None) -> None:
        self.numel = numel
        self.worker = ClientWorker(x_train, y_train, as_shards(shards), as_poisoned(poisoned), cfg, num_classes,
                                   poison, threads=torch.get_num_threads(), poison_sgd=poison_sgd)

    def train(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], round_idx: int, ids: list[int]) -> RoundTraining:
        out = self.worker.train(w.cpu().numpy(), {n: b.cpu().numpy() for n, b in buffers.items()}, round_idx, list(ids))
        return _stack([out], ids, self.numel, buffers)

    def placement(self) -> list[str]:
        return []  # no Ray worker: the clients train in this process

    def shutdown(self) -> None:
        self.worker = None


class _Unfinished(Exception):
    """``count`` calls had not answered when the wait ended."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


class _WorkerDied(Exception):
    """Worker ``worker`` died more often than Ray restarts it."""

    def __init__(self, worker: int, exc: BaseException) -> None:
        super().__init__(worker)
        self.worker, self.exc = worker, exc
