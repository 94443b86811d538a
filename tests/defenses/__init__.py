"""Tests of skymask_ray.defenses."""
