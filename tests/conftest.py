"""One Ray cluster for the whole test session: a head and two worker nodes, one with a fake GPU.

Ray is started once (not per test): a ``ray.cluster_utils.Cluster`` so that
placement (mask trainer on the GPU node, client workers spread) is exercised
in every Ray test. The fake GPU is a Ray resource only; torch sees no CUDA,
so the trainer computes on the CPU of the node it was placed on.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# kernel probes (skymask_ray.kernels) cache into a folder of this test session, never the user's ~/.cache;
# set before Ray starts, so the session's Ray workers inherit it
os.environ["SKYMASK_RAY_CACHE"] = tempfile.mkdtemp(prefix="skymask-ray-test-cache-")

STORE = 200 * 1024**2


@pytest.fixture(scope="session")
def ray_cluster():
    """(cluster, gpu_node_id) shared by every Ray test."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": STORE, "include_dashboard": False},
    )
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=STORE)
    cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
    yield cluster, gpu_node.node_id
    ray.shutdown()
    cluster.shutdown()
