"""The paper's data pipelines (Sec. 3.4 ImageNet, Sec. 4.2 CIFAR-10), exact and fast.

Datasets by name (``load_dataset``): CIFAR-10/100 (python batches, an ImageFolder tree or the JPEG
archive), Fashion-MNIST/MNIST (idx files), any ImageFolder tree, and synthetic images; found through
``data_dir``, ``$RESNETLAB_DATA``, the system location, then torchvision's download. Decoded once into a
uint8 tensor cached on disk; ``InMemoryLoader`` augments whole batches on the training device. The
per-image pipelines (``cifar_train_transform``, ``imagenet_train_transform``), the test views and the
DataLoader path (``FileDataset``, ``make_loader``) serve data too large to hold in memory.
"""

from .cache import cache_root
from .datasets import (
    ImageDataset,
    Split,
    load_dataset,
    pixel_mean,
    stratified_subset,
    synthetic_dataset,
    train_val_split,
)
from .decode import BAD_IMAGE_POLICIES, BadImage, read_image
from .fast import BatchAugment, DeviceSplit, InMemoryLoader
from .loaders import FileDataset, ShardSampler, make_loader, open_image_folder, verify_images
from .preprocessing import VIEWS, Preprocessing, check_view, view_transform, views_per_image
from .readers import FolderIndex, index_folder
from .report import describe, format_report
from .sources import SPECS, DatasetSpec, Source, dataset_names, locate
from .stats import ImageStats, folder_statistics, tensor_statistics
from .stream import ResumableSampler, StreamLoader
from .transforms import (
    IMAGENET_CHANNEL_MEAN,
    IMAGENET_CHANNEL_STD,
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    MULTISCALE_SIZES,
    PCALighting,
    SubtractMean,
    center_view,
    cifar_test_transform,
    cifar_train_transform,
    imagenet_train_transform,
    multiscale_views,
    ten_crop_views,
)

__all__ = [
    "VIEWS",
    "Preprocessing",
    "check_view",
    "view_transform",
    "views_per_image",
    "BAD_IMAGE_POLICIES",
    "BadImage",
    "BatchAugment",
    "DeviceSplit",
    "DatasetSpec",
    "FileDataset",
    "FolderIndex",
    "IMAGENET_CHANNEL_MEAN",
    "IMAGENET_CHANNEL_STD",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "ImageDataset",
    "ImageStats",
    "InMemoryLoader",
    "MULTISCALE_SIZES",
    "PCALighting",
    "ResumableSampler",
    "SPECS",
    "ShardSampler",
    "Source",
    "Split",
    "StreamLoader",
    "SubtractMean",
    "cache_root",
    "center_view",
    "cifar_test_transform",
    "cifar_train_transform",
    "dataset_names",
    "describe",
    "folder_statistics",
    "format_report",
    "imagenet_train_transform",
    "index_folder",
    "load_dataset",
    "locate",
    "make_loader",
    "multiscale_views",
    "open_image_folder",
    "pixel_mean",
    "read_image",
    "stratified_subset",
    "synthetic_dataset",
    "tensor_statistics",
    "ten_crop_views",
    "train_val_split",
    "verify_images",
]
