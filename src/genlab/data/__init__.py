"""Datasets for genlab: built-in digits, MNIST, Fashion-MNIST, CIFAR-10, image folders and .npz files.

    >>> from genlab.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.train.images.shape, ds.image_shape
    (torch.Size([1437, 1, 8, 8]), (1, 8, 8))

Images are always uint8 tensors shaped (N, C, H, W); see :mod:`genlab.data.sources`.
"""

from genlab.data.download import default_cache_dir
from genlab.data.sources import SOURCES, Dataset, ImageSplit, dataset_status, load_dataset

__all__ = ["load_dataset", "Dataset", "ImageSplit", "dataset_status", "SOURCES", "default_cache_dir"]
