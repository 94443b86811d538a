"""Tests of skymask_ray.data (datasets, partitions); tests/data/ holds data files, not tests."""
