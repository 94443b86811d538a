"""Tests of skymask_ray.clients (local training)."""
