"""Tests of skymask_ray.attacks."""
