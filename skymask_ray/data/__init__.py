"""Datasets (finding and loading them offline) and their clients' shards (a split, or seeded per client)."""

from .datasets import DATASETS, Dataset, load_dataset
from .partition import split_clients, split_root
from .shards import ClientShards, SeededShards, ShardTable, client_shards

__all__ = ["DATASETS", "ClientShards", "Dataset", "SeededShards", "ShardTable", "client_shards", "load_dataset",
           "split_clients", "split_root"]
