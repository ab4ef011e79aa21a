"""Datasets (by source family), label subsets, index sampling and batched augmentation."""

# each source family registers its datasets in DATASETS on import
from embreg.data import cifar, fashion_mnist, imagenet, stl10  # noqa: F401
from embreg.data.augment import AugmentSpec, LazyBatch, Normalizer, augment, batch_images, two_views
from embreg.data.datasets import DATASETS, DataUnavailableError, Split, load_split, load_unlabeled
from embreg.data.imagefolder import LazyImages
from embreg.data.sampling import IndexStream
from embreg.data.subsets import balanced_subset, class_indices, class_split, read_index_file, subset_name

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DataUnavailableError",
    "IndexStream",
    "LazyBatch",
    "LazyImages",
    "Normalizer",
    "Split",
    "augment",
    "balanced_subset",
    "batch_images",
    "class_indices",
    "class_split",
    "load_split",
    "load_unlabeled",
    "read_index_file",
    "subset_name",
    "two_views",
]
