"""The cluster-launcher configs in cluster/ pass Ray's own schema, install this package and a torch its nodes run.

``cluster-local.yaml`` is the one-machine cluster (Ray's fake_multinode provider): nothing to install, but
the autoscaler reads it as is, so it must hold every section the launcher reads.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE, FakeMultiNodeProvider
from ray.autoscaler._private.providers import _get_node_provider_cls
from ray.autoscaler._private.util import hash_launch_conf, hash_runtime_conf, prepare_config, validate_config

from skymask_ray.local_nodes import runtime_env_dir_name

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
LOCAL = CLUSTER_DIR / "cluster-local.yaml"
CLOUD_CONFIGS = [p for p in CONFIGS if p != LOCAL]  # started by `ray up`: they copy the checkout and install
GPU_CONFIGS = [p for p in CLOUD_CONFIGS if p.name != "cluster-cpu.yaml"]
GPU_INSTANCE_PREFIXES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


def _load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def _schema() -> dict[str, Any]:
    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def _all_commands(config: dict[str, Any]) -> list[str]:
    cmds = list(config.get("setup_commands", [])) + list(config.get("head_setup_commands", []))
    for node_type in config["available_node_types"].values():
        cmds += node_type.get("worker_setup_commands", [])
    return cmds


def _is_gpu_type(node_type: dict[str, Any]) -> bool:
    node_config = node_type["node_config"]
    instance = str(node_config.get("InstanceType", ""))
    return (
        node_type.get("resources", {}).get("GPU", 0) >= 1
        or instance.startswith(GPU_INSTANCE_PREFIXES)
        or bool(node_config.get("guestAccelerators"))
    )


def test_expected_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"cluster.yaml", "cluster-cpu.yaml", "cluster-gcp.yaml", "cluster-local.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_raw_config_matches_ray_schema(path: Path) -> None:
    jsonschema.validate(_load(path), _schema())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_survives_ray_prepare_and_validate(path: Path) -> None:
    """What `ray up` does before touching the cloud: merge defaults, then validate."""
    config = prepare_config(copy.deepcopy(_load(path)))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    head = config["available_node_types"][config["head_node_type"]]
    assert not _is_gpu_type(head), "the head node is a CPU node"
    for name, node_type in config["available_node_types"].items():
        assert node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    assert 1 <= config["idle_timeout_minutes"] <= 60


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda p: p.name)
def test_setup_installs_this_package_from_the_mounted_checkout(path: Path) -> None:
    config = _load(path)
    mounts = config["file_mounts"]
    remote = next((r for r, local in mounts.items() if local == "."), None)
    assert remote is not None, "file_mounts copies the local checkout ('.') to the nodes"
    installs = [c for c in _all_commands(config) if "pip install" in c and f"-e {remote}" in c]
    assert installs, f"a setup command runs `pip install -e {remote}`"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_workers_autoscale(path: Path) -> None:
    config = _load(path)
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers
    assert all(t.get("max_workers", config["max_workers"]) > t.get("min_workers", 0) for t in workers)


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_worker_type_declares_a_gpu(path: Path) -> None:
    config = _load(path)
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    gpu_types = [t for t in workers.values() if _is_gpu_type(t)]
    assert gpu_types, "a worker type with a GPU for the mask trainer"
    assert all(t["resources"].get("GPU", 0) >= 1 for t in gpu_types), "GPU resource declared explicitly"
    assert any(t.get("min_workers", 0) >= 1 for t in gpu_types), "a GPU is present when a run starts"


def test_cpu_config_has_no_gpu() -> None:
    config = _load(CLUSTER_DIR / "cluster-cpu.yaml")
    assert not any(_is_gpu_type(t) for t in config["available_node_types"].values())


TORCH_INDEX = re.compile(r"--index-url\s+https://download\.pytorch\.org/whl/(cpu|cu(\d+))\b")
MIN_DRIVER = {"118": 450, "121": 525, "124": 525, "126": 560, "128": 570, "129": 575, "130": 580}  # CUDA -> driver


def _torch_installs(config: dict[str, Any]) -> list[str]:
    return [c for c in _all_commands(config) if "pip install" in c and re.search(r"\btorch\b", c)]


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda p: p.name)
def test_torch_install_pins_a_build_the_nodes_can_run(path: Path) -> None:
    """Every torch install names its index: the CPU build, or on GPU node types a CUDA 12 build that the image's
    NVIDIA driver runs (never PyPI's default, which may be a CUDA 13 build needing a newer driver)."""
    config = _load(path)
    installs = _torch_installs(config)
    assert installs, "a setup command installs torch before this package"
    for cmd in installs:
        for part in re.split(r";\s*(?:then|else)\s+|;\s*fi\b", cmd):
            if "pip install" in part and re.search(r"\btorch\b", part):
                assert TORCH_INDEX.search(part), f"torch from an unnamed index: {part!r}"
    cuda = {m.group(2) for cmd in installs for m in TORCH_INDEX.finditer(cmd) if m.group(2)}
    gpu_types = [t for t in config["available_node_types"].values() if _is_gpu_type(t)]
    if not gpu_types:
        assert not cuda, "a CPU-only cluster installs the CPU build"
        return
    assert len(cuda) == 1 and next(iter(cuda)).startswith("12"), f"one CUDA 12 build for GPU nodes, got {cuda}"
    (cu,) = cuda
    gpu_cmds = [c for c in installs if f"whl/cu{cu}" in c]
    assert all("0x10de" in c and "whl/cpu" in c for c in gpu_cmds), \
        "the CUDA build only where an NVIDIA device is present, the CPU build elsewhere"
    for t in gpu_types:  # images that name their driver (GCP's Deep Learning VM families: ...-nvidia-570)
        image = json.dumps(t["node_config"])
        for driver in re.findall(r"nvidia-(\d{3})\b", image):
            assert int(driver) >= MIN_DRIVER[cu], f"torch cu{cu} needs driver >= {MIN_DRIVER[cu]}, image has {driver}"


# ----- the one-machine cluster -----------------------------------------------------------------------
def test_local_config_holds_what_the_launcher_reads() -> None:
    """`ray start --autoscaling-config` uses the file as is: the launcher hashes node_config with auth (a file
    without auth leaves every node "launching" with KeyError: 'auth') and the runtime sections."""
    config = _load(LOCAL)
    for node_type in config["available_node_types"].values():
        hash_launch_conf(node_type["node_config"], config["auth"])
    hash_runtime_conf(config["file_mounts"], config["cluster_synced_files"],
                      [config["worker_setup_commands"], config["worker_start_ray_commands"]])
    assert config["provider"]["disable_node_updaters"] and config["provider"]["disable_launch_config_check"]


def test_local_config_has_cluster_yamls_node_kinds_on_one_cpu_each() -> None:
    """A CPU head, a GPU worker type and a CPU worker type (as cluster.yaml), 1 CPU each, scaling from 0 to 2."""
    config = _load(LOCAL)
    types = config["available_node_types"]
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE  # the fake provider's name for its head node
    assert types[FAKE_HEAD_NODE_TYPE]["resources"] == {"CPU": 1}  # what `ray start --head --num-cpus 1` gives it
    workers = {n: t for n, t in types.items() if n != FAKE_HEAD_NODE_TYPE}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in workers.values() if "GPU" not in t["resources"]]
    assert len(gpu) == 1 and len(cpu) == 1
    for t in workers.values():
        assert t["resources"]["CPU"] == 1 and t["min_workers"] == 0 and t["max_workers"] == 2
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())


def test_local_provider_is_rays_fake_multinode_with_a_runtime_env_folder_per_node() -> None:
    cls = _get_node_provider_cls(_load(LOCAL)["provider"])
    assert issubclass(cls, FakeMultiNodeProvider) and cls is not FakeMultiNodeProvider
    ids = [f"{'f' * 51}{i:05d}" for i in range(1, 4)]
    names = [runtime_env_dir_name(i) for i in ids]
    assert len(set(names)) == 3 and "runtime_resources" not in names  # none is the head's folder
