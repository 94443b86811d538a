"""Parameter-sharded mask training over Ray actors equals the unsharded trainer."""

import numpy as np
import pytest
import ray
import torch

from skymask_ray.config import SkyMaskConfig
from skymask_ray.models import ParamSpec, build_model
from skymask_ray.skymask.masked import auto_shards
from skymask_ray.skymask.sharding import sharded_select, start_shard_workers
from skymask_ray.skymask.trainer import MaskTrainer, stack_updates

pytestmark = pytest.mark.slow


def test_shards_1_2_3_give_same_masks_and_clusters(ray_cluster):
    cfg = SkyMaskConfig(mask_epochs=6, early_stop_step=0, shard_memory_gb=0.05)
    rng = np.random.default_rng(0)
    root_x = rng.random((40, 1, 12, 12), dtype=np.float32)
    root_y = rng.integers(0, 4, 40)
    model = build_model("cnn", (1, 12, 12), 4)
    spec = ParamSpec.of(model)
    w = spec.flatten(model)
    g = torch.randn(9, spec.numel, generator=torch.Generator().manual_seed(0)) * 0.01
    g[6:] = -g[:6].mean(0) * 5  # three identical attackers
    g0 = g[:6].mean(0)
    trainer = ray.remote(MaskTrainer).options(num_cpus=0).remote("cnn", (1, 12, 12), 4, root_x, root_y, cfg, "cpu")
    base = ray.get(trainer.select.remote(w.numpy(), {}, stack_updates(g, g0).numpy(), 0, 1))
    for k in (2, 3):
        actors = start_shard_workers(k, cfg.shard_memory_gb)
        sel = sharded_select(actors, trainer, w, {}, g, g0, cfg, 1e7, 0, 1)
        np.testing.assert_allclose(sel.losses, base.losses, rtol=1e-5)
        assert np.array_equal(sel.on_fraction, base.on_fraction)
        assert np.array_equal(sel.accepted, base.accepted)
        np.testing.assert_allclose(np.abs(sel.coords), np.abs(base.coords), rtol=1e-6, atol=1e-9)
        for a in actors:
            ray.kill(a)
    assert not base.accepted[6:].any() and base.accepted[:6].all()


def test_auto_shards_from_memory_budget():
    cfg = SkyMaskConfig(shard_memory_gb=1.0)
    assert auto_shards(101, 140_000, cfg) == 1
    assert auto_shards(5001, 140_000, cfg) == 8  # 5001 x 140k x 12 B (updates, masks, sigmoid) = 7.8 GiB
    assert auto_shards(5001, 140_000, SkyMaskConfig(shards=3)) == 3
