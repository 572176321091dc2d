"""``resnetlab data NAME``: what a user needs to trust a dataset before training on it.

Where it was found and in which format, split sizes, classes and images per class, image size and
channels, the per-pixel mean image's summary per channel, and where the cache lives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from .cache import cache_root
from .datasets import ImageDataset, load_dataset
from .decode import BadImage, check_policy, open_image
from .readers import FolderIndex, index_folder
from .sources import SPECS, Source, locate
from .stats import folder_statistics

__all__ = ["describe", "format_report", "data_command"]

_CHANNEL_NAMES = {3: ("R", "G", "B"), 1: ("gray",)}
_FOLDER_SAMPLE = 1000  # images the ImageNet-layout report reads for sizes and the mean image


def _mean_summary(mean: torch.Tensor, origin: str) -> dict[str, Any]:
    names = _CHANNEL_NAMES.get(mean.shape[0], tuple(str(i) for i in range(mean.shape[0])))
    per_channel = [
        {"channel": name, **{stat: round(float(getattr(m, stat)()), 2) for stat in ("min", "max", "mean")}}
        for name, m in zip(names, mean)
    ]
    return {"shape": list(mean.shape), "units": "pixel values 0..255", "from": origin, "channels": per_channel}


def _split_info(labels: torch.Tensor | Sequence[int], classes: Sequence[str], skipped: int) -> dict[str, Any]:
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=len(classes)).tolist()
    return {"images": sum(counts), "per_class": dict(zip(classes, counts)), "skipped": skipped}


def _describe_memory(ds: ImageDataset) -> dict[str, Any]:
    k = ds.classes
    splits = {"train": _split_info(ds.train.labels, k, ds.train.skipped)}
    if ds.val is not None:
        splits["val"] = _split_info(ds.val.labels, k, 0)
    splits[SPECS[ds.name].eval_split if ds.name in SPECS else "test"] = _split_info(ds.test.labels, k, ds.test.skipped)
    h, w = ds.image_size
    return {
        "classes": ds.classes,
        "channels": ds.channels,
        "image_size": [h, w],
        "splits": splits,
        "mean_image": _mean_summary(ds.mean, f"all {len(ds.train):,} training images"),
        "cache_files": [str(p) for p in ds.cache_files],
    }


def _sizes(index: FolderIndex, sample: int) -> dict[str, Any]:
    step = max(1, len(index.files) // sample)
    sizes = []
    for path in index.files[::step][:sample]:
        try:
            with open_image(path) as img:
                sizes.append(img.size)  # (W, H)
        except BadImage:
            continue
    heights, widths = [h for _, h in sizes], [w for w, _ in sizes]
    return {"sampled": len(sizes), "height": [min(heights), max(heights)], "width": [min(widths), max(widths)]}


def _describe_folder(source: Source, on_bad_image: str, progress: bool) -> dict[str, Any]:
    train = index_folder(source.path / "train", on_bad_image=on_bad_image)
    val = index_folder(source.path / "val", on_bad_image=on_bad_image, classes=train.classes)
    stats = folder_statistics(train, max_images=_FOLDER_SAMPLE, progress=progress)
    k = train.classes
    return {
        "classes": train.classes,
        "channels": 3,
        "image_size": _sizes(train, 200),
        "splits": {"train": _split_info(train.labels, k, 0), "val": _split_info(val.labels, k, 0)},
        "mean_image": _mean_summary(
            stats.mean_image, f"{stats.count:,} sampled training images, shorter side 256, centre 224x224"
        ),
        "cache_files": [],
    }


def describe(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    on_bad_image: str = "error",
    progress: bool = True,
) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data. In-memory datasets are loaded (decoded and
    cached on first use); an ImageNet-layout folder is indexed and sampled (:data:`_FOLDER_SAMPLE` images)."""
    source: Source | None
    if name == "imagefolder":
        source = locate(name, data_dir, download=False)
        info = _describe_folder(source, check_policy(on_bad_image), progress)
    else:
        ds = load_dataset(name, data_dir, download=download, on_bad_image=on_bad_image, progress=progress)
        source = ds.source
        info = _describe_memory(ds)
    where = None
    if source is not None:
        where = {"format": source.format, "path": str(source.path), "found_via": source.found_via}
    return {"dataset": name, "source": where, **info, "cache_root": str(cache_root())}


def _size_text(size: Any) -> str:
    if isinstance(size, list):
        return f"{size[0]}x{size[1]}"
    (h0, h1), (w0, w1) = size["height"], size["width"]
    return f"heights {h0}..{h1}, widths {w0}..{w1} (of {size['sampled']} sampled)"


def format_report(info: dict[str, Any]) -> str:
    """The report as text: a few header lines, a per-class table, the mean image's per-channel summary."""
    src = info["source"]
    found = f"{src['format']} at {src['path']} (via {src['found_via']})" if src else "synthetic"
    lines = [f"{info['dataset']}: {found}"]
    colour = {3: "RGB", 1: "grayscale"}.get(info["channels"], f"{info['channels']} channels")
    lines.append(
        f"images: {_size_text(info['image_size'])}, {info['channels']} channel(s) ({colour}), "
        f"{len(info['classes'])} classes"
    )
    splits = info["splits"]
    skipped = sum(s["skipped"] for s in splits.values())
    lines.append(
        "splits: "
        + ", ".join(f"{k} {v['images']:,}" for k, v in splits.items())
        + (f"; {skipped} bad image(s) skipped" if skipped else "")
    )
    width = max(len("class"), *(len(c) for c in info["classes"]))
    lines.append("")
    lines.append(f"  {'label':>5}  {'class':<{width}}" + "".join(f"  {k:>7}" for k in splits))
    for label, name in enumerate(info["classes"]):
        counts = "".join(f"  {s['per_class'][name]:>7,}" for s in splits.values())
        lines.append(f"  {label:>5}  {name:<{width}}{counts}")
    mean = info["mean_image"]
    lines.append("")
    lines.append(f"mean image {'x'.join(map(str, mean['shape']))} ({mean['units']}), from {mean['from']}:")
    lines.append(f"  {'channel':<7}  {'min':>7}  {'max':>7}  {'mean':>7}")
    for ch in mean["channels"]:
        lines.append(f"  {ch['channel']:<7}  {ch['min']:>7.2f}  {ch['max']:>7.2f}  {ch['mean']:>7.2f}")
    lines.append("")
    lines.append(f"cache: {info['cache_root']}")
    lines += [f"  {path}" for path in info["cache_files"]]
    return "\n".join(lines)


def data_command(
    name: str,
    data_dir: str | None = None,
    *,
    as_json: bool = False,
    download: bool = True,
    on_bad_image: str = "error",
) -> int:
    """What ``resnetlab data`` runs: print the report (text or JSON); 0 on success. A UserError (data not
    found, a bad file) propagates for the CLI to print on one line."""
    info = describe(name, data_dir, download=download, on_bad_image=on_bad_image, progress=True)
    print(json.dumps(info, indent=2) if as_json else format_report(info))
    return 0
