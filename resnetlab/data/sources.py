"""Where each dataset is found: ``--data-dir`` alone when it is given (the data is there or the run is
refused: a folder the user named is never replaced by another copy); otherwise ``$RESNETLAB_DATA``, then the
system location, then a download with torchvision's own code (which checks the published checksums).

A dataset is one row of :data:`SPECS`; a found copy is a :class:`Source` (its format and path). Archives
(the CIFAR-10 JPEG copy) are verified by sha256 and unpacked once into the cache, never beside the
archive, whose folder may be read-only.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from .cache import cache_root, sha256_of
from .readers import IDX_STEMS

__all__ = ["DatasetSpec", "Source", "SPECS", "dataset_names", "locate", "extract_archive"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# torchvision's FashionMNIST.classes and MNIST.classes, written out so that listing the datasets (the CLI's
# parser) does not import torchvision.
_FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_MNIST_CLASSES = tuple(f"{i} - {w}" for i, w in enumerate("zero one two three four five six seven eight nine".split()))


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset name means: its images, and every place and format it may be found in."""

    name: str
    channels: int  # 3 (RGB) or 1 (grayscale); every image is converted to this
    image_size: int | None  # the side of every image (32, 28); None: sizes vary (ImageNet layout)
    num_classes: int | None  # None: as many as there are class folders
    eval_split: str = "test"  # "test" (CIFAR, MNIST) or "val" (the ImageNet layout)
    python_folder: str | None = None  # the official python-format folder (CIFAR)
    idx: bool = False  # the four idx files of the MNIST family
    folders: tuple[str, ...] = ()  # subfolders of a data folder to look in, besides the folder itself
    archives: dict[str, str] = field(default_factory=dict)  # archive name -> sha256 (an ImageFolder inside)
    system_dir: Path | None = None
    download: str | None = None  # the torchvision.datasets class whose download code fetches it
    classes: tuple[str, ...] | None = None  # names in label order, when the format does not carry them

    def layouts(self) -> str:
        """The formats this dataset is accepted in, as an error message lists them."""
        kinds = []
        if self.python_folder:
            kinds.append(f"{self.python_folder}/")
        if self.idx:
            kinds.append("the four idx files (" + ", ".join(f"{s}.gz" for s in IDX_STEMS) + ")")
        kinds += list(self.archives)
        if self.image_folder:
            kinds.append(f"train/ + {self.eval_split}/ class folders")
        where = f" (directly or under {', '.join(f'{f}/' for f in self.folders)})" if self.folders else ""
        return " or ".join(kinds) + where

    @property
    def image_folder(self) -> bool:
        return not self.idx


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar10",
            channels=3,
            image_size=32,
            num_classes=10,
            python_folder="cifar-10-batches-py",
            folders=("cifar10-jpeg", "cifar10"),
            archives={"cifar10-jpeg.tar.gz": "1fab6e733a06cc26af0ccd8cfea06054bfe6fe3f0a1a296b26aac44a058c45ac"},
            download="CIFAR10",
            classes=CIFAR10_CLASSES,
        ),
        DatasetSpec(
            "cifar100",
            channels=3,
            image_size=32,
            num_classes=100,
            python_folder="cifar-100-python",
            folders=("cifar100-jpeg", "cifar100"),
            download="CIFAR100",
        ),
        DatasetSpec(
            "fashion-mnist",
            channels=1,
            image_size=28,
            num_classes=10,
            idx=True,
            folders=("fashion-mnist", "FashionMNIST/raw"),
            system_dir=Path("/usr/share/datasets/fashion-mnist"),
            download="FashionMNIST",
            classes=_FASHION_MNIST_CLASSES,
        ),
        DatasetSpec(
            "mnist",
            channels=1,
            image_size=28,
            num_classes=10,
            idx=True,
            folders=("mnist", "MNIST/raw"),
            system_dir=Path("/usr/share/datasets/mnist"),
            download="MNIST",
            classes=_MNIST_CLASSES,
        ),
        DatasetSpec(
            "imagefolder",
            channels=3,
            image_size=None,
            num_classes=None,
            eval_split="val",
            folders=("imagenet",),
        ),
    )
}


def dataset_names() -> list[str]:
    """Every name ``load_dataset`` and ``resnetlab data`` accept."""
    return [*SPECS, "synthetic"]


@dataclass(frozen=True)
class Source:
    """A found copy of a dataset: ``format`` is "cifar-python", "idx", "imagefolder" or "archive"."""

    dataset: str
    format: str
    path: Path  # the folder holding the files, or the archive file
    found_via: str  # "--data-dir", "RESNETLAB_DATA", "system location" or "download"


def _idx_folder(folder: Path) -> bool:
    return all((folder / f"{s}.gz").is_file() or (folder / s).is_file() for s in IDX_STEMS)


def _python_folder(folder: Path, spec: DatasetSpec) -> bool:
    marker = "batches.meta" if spec.name == "cifar10" else "meta"
    return (folder / marker).is_file()


def _image_folder(folder: Path, spec: DatasetSpec) -> bool:
    return (folder / "train").is_dir() and (folder / spec.eval_split).is_dir()


def _find_in(folder: Path, spec: DatasetSpec, via: str) -> Source | None:
    """The first layout of ``spec`` in ``folder``: python format, idx files, class folders, then archives."""
    candidates = [folder, *(folder / sub for sub in spec.folders)]
    if spec.python_folder:
        for cand in (folder / spec.python_folder, folder):
            if _python_folder(cand, spec):
                return Source(spec.name, "cifar-python", cand, via)
    for cand in candidates:
        if spec.idx and _idx_folder(cand):
            return Source(spec.name, "idx", cand, via)
        if spec.image_folder and _image_folder(cand, spec):
            return Source(spec.name, "imagefolder", cand, via)
    for archive in spec.archives:
        if (folder / archive).is_file():
            return Source(spec.name, "archive", folder / archive, via)
    return None


def _near_misses(folder: Path, spec: DatasetSpec) -> list[str]:
    """The parts of ``spec``'s layouts that ``folder`` holds without the rest (train/ without test/, some of
    the idx files...), as an error names them."""
    found = []
    if spec.python_folder and (folder / spec.python_folder).is_dir():
        marker = "batches.meta" if spec.name == "cifar10" else "meta"
        found.append(f"{spec.python_folder}/ without its {marker} file")
    for cand in (folder, *(folder / sub for sub in spec.folders)):
        if not cand.is_dir():
            continue
        at = "" if cand == folder else cand.relative_to(folder).as_posix() + "/"
        if spec.image_folder:
            splits = [s for s in ("train", "test", "val") if (cand / s).is_dir()]
            others = [s for s in splits if s not in ("train", spec.eval_split)]
            if "train" in splits and spec.eval_split not in splits:
                found.append(
                    f"{at}train/ + {at}{others[0]}/, but {spec.name}'s evaluation folder is {spec.eval_split}/"
                    if others
                    else f"{at}train/ without {at}{spec.eval_split}/"
                )
            elif spec.eval_split in splits and "train" not in splits:
                found.append(f"{at}{spec.eval_split}/ without {at}train/")
        if spec.idx:
            present = [s for s in IDX_STEMS if (cand / f"{s}.gz").is_file() or (cand / s).is_file()]
            if present:  # all four would have been found
                missing = ", ".join(s for s in IDX_STEMS if s not in present)
                found.append(f"{len(present)} of the 4 idx files in {at or 'it'} (missing {missing})")
    return found


def _listing(folder: Path, limit: int = 8) -> str:
    """What ``folder`` holds, as a few names (folders with a trailing /)."""
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(folder))
    except OSError as err:
        return f"a folder that cannot be listed ({err.strerror})"
    if not names:
        return "an empty folder"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _refuse_data_dir(data_dir: str | os.PathLike[str], folder: Path, spec: DatasetSpec) -> UserError:
    found = "; ".join(_near_misses(folder, spec)) or _listing(folder)
    return UserError(
        f"{spec.name} not found: looked in {data_dir} (--data-dir), which holds {found}; expected "
        f"{spec.layouts()}. A given --data-dir is the only place looked (RESNETLAB_DATA is not read and "
        "downloading is off)"
    )


def _folder(path: str | os.PathLike[str], label: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{label}: no such folder")
    return folder


def _download(spec: DatasetSpec, root: Path) -> str | None:
    """Fetch with torchvision's download code (it verifies the published md5s); the reason on failure."""
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(torchvision.datasets, spec.download or "")
    try:
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)
    except Exception as err:  # no network, a proxy, a failed checksum: all end in the same advice
        return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return None


def locate(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True) -> Source:
    """Find dataset ``name``: in ``data_dir`` only, when it is given; otherwise ``$RESNETLAB_DATA``, then the
    system location, then the cache's download folder, then (if ``download``) torchvision's download into
    that folder.

    Raises UserError when it is not found: for a ``data_dir``, what the folder holds and what was expected;
    otherwise every place looked in and how to provide the data.
    """
    if name not in SPECS:
        raise UserError(f"unknown dataset {name!r}; the datasets are {', '.join(dataset_names())}")
    spec = SPECS[name]
    if data_dir is not None:  # used or refused: falling back would train on data the user did not name
        folder = _folder(data_dir, f"--data-dir {data_dir}")
        if source := _find_in(folder, spec, "--data-dir"):
            return source
        raise _refuse_data_dir(data_dir, folder, spec)
    places: list[tuple[Path, str]] = []
    if os.environ.get("RESNETLAB_DATA"):
        env = os.environ["RESNETLAB_DATA"]
        places.append((_folder(env, f"RESNETLAB_DATA={env}"), "RESNETLAB_DATA"))
    if spec.system_dir is not None and spec.system_dir.is_dir():
        places.append((spec.system_dir, "system location"))
    downloads = cache_root() / "downloads"
    if spec.download is not None:
        places.append((downloads, "download"))
    for folder, via in places:
        if source := _find_in(folder, spec, via):
            return source

    looked = ", ".join(f"{folder} ({via})" for folder, via in places)
    unset = ""
    if not os.environ.get("RESNETLAB_DATA"):
        unset = " (no --data-dir given, RESNETLAB_DATA unset)"
    if spec.system_dir is not None and not spec.system_dir.is_dir():
        looked += f", {spec.system_dir} (system location, absent)"
    if spec.download is None:
        failure = "it cannot be downloaded"
    elif not download:
        failure = "downloading is off"
    else:
        reason = _download(spec, downloads)
        if reason is None and (source := _find_in(downloads, spec, "download")):
            return source
        failure = f"the download failed ({reason or 'nothing usable arrived'})"
    raise UserError(
        f"{name} not found{unset}: looked in {looked} for {spec.layouts()}; {failure}. "
        "Pass --data-dir DIR or set RESNETLAB_DATA to a folder that holds it"
    )


def _unpack(archive: Path, target: Path, progress: bool) -> None:
    """Stream ``archive`` into ``target``, writing only plain files and folders with relative paths that
    stay inside it (no links, devices or ``..``); owners, modes and times in the archive are ignored (the
    same guarantees as ``extractall(filter="data")``, on every Python the project supports)."""
    with tarfile.open(archive, "r|*") as tar:
        members = tqdm(tar, desc=f"{archive.name}: unpacking (once)", unit=" files", disable=not progress, leave=False)
        for member in members:
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise UserError(f"{archive}: refusing the unsafe archive entry {member.name!r}")
            path = target.joinpath(*parts)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has a body
            path.write_bytes(source.read())


def extract_archive(archive: Path, sha256: str, *, progress: bool = True) -> Path:
    """Verify ``archive`` against ``sha256`` and unpack it once into the cache; the unpacked folder.

    A marker records the archive's size and mtime, so later calls neither re-hash nor re-extract it.
    """
    target = cache_root() / "extracted" / f"{archive.name.split('.')[0]}-{sha256[:12]}"
    marker = target / ".complete"
    stat = archive.stat()
    stamp = f"{archive.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}"
    if marker.is_file() and marker.read_text() == stamp:
        return target
    actual = sha256_of(archive)
    if actual != sha256:
        raise UserError(
            f"{archive}: sha256 {actual[:16]}... is not the published {sha256[:16]}...; the file is corrupt or "
            "not the expected archive"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        _unpack(archive, tmp, progress)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{archive}: cannot unpack ({err})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(stamp)
    return target


def archive_image_folder(source: Source, *, progress: bool = True) -> Path:
    """The ImageFolder root inside an archive source (unpacked on first use): the folder with train/."""
    spec = SPECS[source.dataset]
    root = extract_archive(source.path, spec.archives[source.path.name], progress=progress)
    for cand in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if _image_folder(cand, spec):
            return cand
    raise UserError(f"{source.path}: holds no train/ + {spec.eval_split}/ class folders")
