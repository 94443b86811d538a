"""Tests of skymask_ray.skymask (mask training, selection, sharding)."""
