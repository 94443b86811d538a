"""The node provider of ``cluster/cluster-local.yaml``: Ray's fake_multinode, each node with its own runtime-env folder.

Ray's ``fake_multinode`` provider runs the real autoscaler on one machine and
starts its worker nodes as local Ray nodes. They all share the head's session
folder, and with it ``runtime_resources/``, where each node's runtime-env agent
unpacks a job's ``--working-dir``: the first time a job's worker starts on a
node, its agent deletes that folder and unpacks it again (Ray 2.60,
``WorkingDirPlugin.create`` with ``overwrite=True``). Every process of the job
already running elsewhere (the driver, the head's actors) then has a deleted
working directory, and a process starting meanwhile fails to import torch
(``FileNotFoundError`` from ``os.getcwd``, "Cannot load libtorch_cpu.so").
On a real cluster each node has its own disk. Here each worker node gets its
own ``runtime_resources-<n>`` folder, as if it had; nothing else differs from
:class:`~ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider`.

The autoscaler (Ray's monitor process, started by ``ray start --head
--autoscaling-config=...``) imports this class from the config's
``provider.module``; ``RAY_FAKE_CLUSTER=1`` is required as for Ray's provider.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import ray
import ray._private.node
import ray._private.parameter
import ray._private.ray_constants as ray_constants
import ray._private.services
from ray._common.network_utils import build_address
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)


def runtime_env_dir_name(node_id: str) -> str:
    """The runtime-env folder (inside the shared session folder) of the fake worker node ``node_id``."""
    return f"{ray_constants.DEFAULT_RUNTIME_ENV_DIR_NAME}-{int(node_id[-5:])}"


class LocalNodeProvider(FakeMultiNodeProvider):
    """``FakeMultiNodeProvider`` whose worker nodes unpack runtime envs in folders of their own."""

    def _create_node_with_resources_and_labels(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                                               resources: dict[str, float], labels: dict[str, str]) -> None:
        resources = copy.deepcopy(resources)  # popped below
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            next_id = self._next_hex_node_id()
            gcs = self._gcs_address or build_address(ray._private.services.get_node_ip_address(), 6379)
            ray_params = ray._private.parameter.RayParams(
                min_worker_port=0,
                max_worker_port=0,
                dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources,
                labels=labels,
                redis_address=gcs,
                gcs_address=gcs,
                runtime_env_dir_name=runtime_env_dir_name(next_id),
                env_vars={
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": next_id,
                    "RAY_CLOUD_INSTANCE_ID": next_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            node = ray._private.node.Node(ray_params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[next_id] = {
                "tags": {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                         TAG_RAY_NODE_NAME: next_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE, **tags},
                "node": node,
            }
