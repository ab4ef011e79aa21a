"""Datasets, label subsets and batched augmentation."""

from embreg.data.augment import AugmentSpec, LazyBatch, Normalizer, augment, batch_images, two_views
from embreg.data.datasets import DATASETS, DataUnavailableError, Split, load_split, load_unlabeled
from embreg.data.imagefolder import LazyImages
from embreg.data.subsets import balanced_subset, read_index_file, subset_name

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DataUnavailableError",
    "LazyBatch",
    "LazyImages",
    "Normalizer",
    "Split",
    "augment",
    "balanced_subset",
    "batch_images",
    "load_split",
    "load_unlabeled",
    "read_index_file",
    "subset_name",
    "two_views",
]
