"""A fixed pool of Ray actors, each holding and training many virtual clients.

The training set goes into the object store once; every worker reads it
zero-copy and keeps only its own clients' shards (data-poisoned once, at
setup, for malicious clients). Each round the driver puts the global weights
once and every worker returns one stacked (n_i x P) array for its clients.
Workers restart on failure and Ray re-runs the lost round's task on the new
actor (``max_restarts=-1, max_task_retries=-1``); because every client draws
from its own seeded stream the redone work gives the same updates.
"""

from __future__ import annotations

import heapq
import resource
from dataclasses import dataclass

import numpy as np
import ray
import torch

from ..attacks import ATTACKS
from ..config import ExperimentConfig
from ..linalg import from_readonly
from ..models import ParamSpec, build_model
from ..seeding import torch_generator
from .training import SGDSettings, client_generator, train_sequential, train_vmap


def sgd_settings(cfg: ExperimentConfig) -> SGDSettings:
    """The clients' local SGD settings from the config."""
    t = cfg.train
    return SGDSettings(lr=t.local_lr, batch_size=t.batch_size, epochs=t.local_epochs, steps=t.local_steps,
                       grad_clip=t.grad_clip)


def rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (Linux), so a run in a long-lived process measures only itself."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class ClientWorker:
    """Holds the data of a set of clients and trains any of them from given global weights."""

    def __init__(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        clients: list[int],
        indices: list[np.ndarray],
        poisoned: list[bool],
        cfg: ExperimentConfig,
        num_classes: int,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        use_cuda = cfg.device != "cpu" and torch.cuda.is_available() and len(ray.get_gpu_ids()) > 0 \
            if ray.is_initialized() else False
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.cfg = cfg
        self.model = build_model(cfg.model, tuple(x_train.shape[1:]), num_classes).to(self.device)
        self.spec = ParamSpec.of(self.model)
        self.has_buffers = any(True for _ in self.model.buffers())
        mode = cfg.train.client_exec
        if mode == "auto":
            mode = "vmap" if self.device.type == "cuda" and not self.has_buffers else "sequential"
        self.mode = mode
        attack = ATTACKS.get(cfg.attack)(cfg.attack_params, cfg, num_classes)
        self.data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for k, idx, bad in zip(clients, indices, poisoned):
            x = torch.from_numpy(np.ascontiguousarray(x_train[idx]))
            y = torch.from_numpy(np.ascontiguousarray(y_train[idx]))
            if bad:
                x, y = attack.poison_data(x, y, torch_generator(cfg.seed, "poison", k), client=k)
            self.data[k] = (x.to(self.device), y.to(self.device))
        self._warm_up()

    def _warm_up(self) -> None:
        """One throw-away step of a full batch, so torch's lazy imports and the kernel set-up for the
        batch shape are paid at setup, not in round 1's timing."""
        x, y = next(((x, y) for x, y in self.data.values() if len(y)), (None, None))
        if x is None:
            return
        w = self.spec.flatten(self.model).to(self.device)
        b = min(len(y), self.cfg.train.batch_size)
        s = SGDSettings(lr=0.0, batch_size=b, steps=1)
        gens = [torch.Generator().manual_seed(0)]
        if self.mode == "vmap" and not self.has_buffers:
            train_vmap(self.model, self.spec, w, [(x[:b], y[:b])], gens, s)
        else:
            train_sequential(self.model, self.spec, w, [(x[:b], y[:b])], gens, s)

    def train(self, w: np.ndarray, buffers: dict[str, np.ndarray], round_idx: int, client_ids: list[int]) -> dict:
        """Local SGD for ``client_ids`` from ``w``; returns their stacked updates (and buffers)."""
        w_t = from_readonly(w).to(self.device)
        bufs = {n: from_readonly(b).to(self.device) for n, b in buffers.items()}
        data = [self.data[k] for k in client_ids]
        gens = [client_generator(self.cfg.seed, round_idx, k) for k in client_ids]
        s = sgd_settings(self.cfg)
        out_bufs: dict[str, np.ndarray] = {}
        if self.mode == "vmap" and not self.has_buffers:
            updates = train_vmap(self.model, self.spec, w_t, data, gens, s, self.cfg.train.vmap_chunk)
        else:
            updates, client_bufs = train_sequential(self.model, self.spec, w_t, data, gens, s, bufs)
            if bufs and client_bufs:
                out_bufs = {n: torch.stack([cb[n] for cb in client_bufs]).cpu().numpy() for n in bufs}
        return {"ids": list(client_ids), "updates": updates.cpu().numpy(), "buffers": out_bufs, "rss_mb": rss_mb()}

    def sizes(self) -> dict[int, int]:
        return {k: len(y) for k, (_, y) in self.data.items()}

    def pid(self) -> int:
        import os

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
    """Stacked results of one round's client training."""

    updates: torch.Tensor  # (N, P); rows of untrained clients are zero
    buffers: dict[str, torch.Tensor]  # name -> (N, ...) for BatchNorm models, else empty
    worker_rss_mb: float


class ClientPool:
    """The driver's handle on the client-worker actors."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        x_train: np.ndarray,
        y_train: np.ndarray,
        parts: list[np.ndarray],
        poisoned: list[bool],
        num_classes: int,
        numel: int,
        workers: int,
        worker_cpus: float,
        timeout_s: float = 3600.0,
    ) -> None:
        self.n, self.numel, self.timeout_s = len(parts), numel, timeout_s
        self.x_ref, self.y_ref = ray.put(x_train), ray.put(y_train)  # kept alive for actor restarts
        self.assignment = [a for a in assign_clients([len(p) for p in parts], workers) if a]
        actor = ray.remote(ClientWorker).options(
            num_cpus=worker_cpus, max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD"
        )
        self.workers = [
            actor.remote(self.x_ref, self.y_ref, ks, [parts[k] for k in ks], [poisoned[k] for k in ks], cfg, num_classes)
            for ks in self.assignment
        ]
        self.owner = {k: i for i, ks in enumerate(self.assignment) for k in ks}
        start_timeout = min(timeout_s, 300.0)
        try:
            ray.get([w.pid.remote() for w in self.workers], timeout=start_timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{len(self.workers)} client workers of {worker_cpus} CPU each could not start within "
                f"{start_timeout:.0f}s; cluster resources: {ray.cluster_resources()}"
            ) from None

    def train(self, w: torch.Tensor, buffers: dict[str, torch.Tensor], round_idx: int, train_ids: list[int]) -> RoundTraining:
        """Train ``train_ids`` on their workers; one stacked N x P matrix in client order."""
        w_ref = ray.put(w.cpu().numpy())
        b_ref = ray.put({n: b.cpu().numpy() for n, b in buffers.items()})
        per_worker: list[list[int]] = [[] for _ in self.workers]
        for k in train_ids:
            per_worker[self.owner[k]].append(k)
        refs = [wk.train.remote(w_ref, b_ref, round_idx, ids) for wk, ids in zip(self.workers, per_worker) if ids]
        try:
            results = ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"client training did not finish within {self.timeout_s:.0f}s") from None
        updates = torch.zeros(self.n, self.numel)
        out_bufs: dict[str, torch.Tensor] = {n: b.expand(self.n, *b.shape).clone() for n, b in buffers.items()}
        rss = 0.0
        for r in results:
            ids = torch.as_tensor(r["ids"], dtype=torch.long)
            updates[ids] = from_readonly(r["updates"])
            for n, b in r["buffers"].items():
                out_bufs[n][ids] = from_readonly(b)
            rss += r["rss_mb"]
        return RoundTraining(updates, out_bufs, rss)

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers], timeout=self.timeout_s)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
