"""Datasets (finding and loading them offline) and their split over clients."""

from .datasets import DATASETS, Dataset, load_dataset
from .partition import split_clients, split_root

__all__ = ["DATASETS", "Dataset", "load_dataset", "split_clients", "split_root"]
