"""Datasets, label subsets and batched augmentation."""

from embreg.data.augment import AugmentSpec, Normalizer, augment, two_views
from embreg.data.datasets import DATASETS, DataUnavailableError, Split, load_split
from embreg.data.subsets import balanced_subset, read_index_file, subset_name

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DataUnavailableError",
    "Normalizer",
    "Split",
    "augment",
    "balanced_subset",
    "load_split",
    "read_index_file",
    "subset_name",
    "two_views",
]
