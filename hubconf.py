"""torch.hub entry points: every network of ``resnetlab.list_models()``, by name.

    model = torch.hub.load("path/to/resnetlab", "resnet56", source="local")  # or "OWNER/resnetlab"
    model = torch.hub.load(..., "resnet50", stride_in_1x1=False, weights="resnet50-0676ba61.pth")

Each entry takes ``create_model``'s options as keyword arguments and ``weights=``:

- ``None``: a random initialisation, exactly ``resnetlab.create_model(name, **options)``;
- a local file: a resnetlab export (``.safetensors``) or checkpoint (``.pt``), or torchvision's state dict
  (``.pth``, resnet18..152 only, through ``resnetlab.deploy.import_torchvision``). The file decides what
  you leave out (``num_classes``, ``in_channels``, ``shortcut``, ``stride_in_1x1``); what you pass must
  agree with it, or the load is a one-line ``UserError`` naming the file. torchvision's weights are the
  v1.5 network (option B, stride on the 3x3): ``stride_in_1x1`` is then False unless you pass True, which
  is refused (the same weights would load into the paper's v1 network but compute something else);
- a name, ``weights="cifar10"``: the file ``weights/cifar10-<network>.safetensors`` beside this file (the
  folder ``$RESNETLAB_WEIGHTS`` instead, when set): the project's own CIFAR-10 networks, written there by
  ``resnetlab experiment campaign`` as each seed-0 network finishes its 64k iterations, with its final test
  error in ``weights/index.json``.

A network loaded from a file is returned in training mode, as ``create_model`` returns one: call
``.eval()`` for inference. An export's network has its BatchNorm folded into the convolutions.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import typing

import resnetlab
import resnetlab.errors
import resnetlab.models

dependencies = ["torch", "torchvision"]

# The weights shipped with the repository: weights/DATASET-NETWORK.safetensors (resnetlab exports).
WEIGHTS_ENV = "RESNETLAB_WEIGHTS"
_WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth")
_UserError = resnetlab.errors.UserError


def _weights_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(WEIGHTS_ENV) or _WEIGHTS_DIR)


def _shipped_weights(tag: str, name: str) -> pathlib.Path:
    """``weights=tag`` for network ``name``: its file in the weights folder, or an error saying what is there."""
    folder = _weights_dir()
    path = folder / f"{tag}-{name}.safetensors"
    if path.is_file():
        return path
    shipped: dict[str, list[str]] = {}
    for file in sorted(folder.glob("*-*.safetensors")) if folder.is_dir() else []:
        dataset, network = file.stem.rsplit("-", 1)
        shipped.setdefault(dataset, []).append(network)
    if not shipped:
        raise _UserError(
            f"no weights named {tag!r} for {name}: resnetlab ships none yet ({folder} holds no "
            "DATASET-NETWORK.safetensors). The project's own CIFAR-10 weights come into the repository as "
            "weights/cifar10-<network>.safetensors as the campaign (resnetlab experiment campaign, in CPU and GPU "
            "windows) finishes them; until then pass weights= a local .safetensors export, .pt checkpoint or "
            "torchvision .pth"
        )
    have = "; ".join(f"{dataset} for {', '.join(nets)}" for dataset, nets in shipped.items())
    raise _UserError(f"no weights named {tag!r} for {name} (no {path}); {folder} has: {have}")


def _fit(name: str, options: dict[str, typing.Any]) -> tuple[tuple[str, int, bool], dict[str, typing.Any]]:
    """What decides the weights of network ``name`` built with ``options``: (family, depth, residual) and
    every option, defaults filled in, in canonical form, less those that change no weight's meaning
    (``zero_init_residual`` is only an initialisation; ``stride_in_1x1`` does nothing in a basic-block net).
    A bad name or option is a one-line error."""
    try:
        info = resnetlab.model_info(name)
    except ValueError as err:
        raise _UserError(str(err)) from None
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise _UserError(f"{name} does not take option(s) {', '.join(unknown)}; it takes {', '.join(info.options)}")
    resolved = {**info.options, **options}
    if "shortcut" in resolved:
        try:
            resolved["shortcut"] = resnetlab.models.Shortcut.parse(resolved["shortcut"]).value
        except ValueError as err:
            raise _UserError(str(err)) from None
    resolved.pop("zero_init_residual", None)
    if info.block == "basic":
        resolved.pop("stride_in_1x1", None)
    return (info.family, info.depth, info.residual), resolved


def _read_file(path: pathlib.Path, name: str) -> typing.Any:
    """The bundle of a local weights file (``resnetlab.deploy.read_bundle``); a .pth through the torchvision
    import, as the record its checkpoint would hold."""
    from resnetlab.deploy import TORCHVISION_MODELS, InferenceBundle, read_bundle, read_torchvision

    if path.suffix != ".pth":
        return read_bundle(path)
    if name not in TORCHVISION_MODELS:
        raise _UserError(
            f"{path} is read as torchvision weights (.pth), which exist for {', '.join(TORCHVISION_MODELS)} "
            f"only, not {name}; a resnetlab checkpoint is a .pt file"
        )
    record = read_torchvision(path, name)
    return InferenceBundle(record.build(path), record, path)


def _network(name: str, weights: str | os.PathLike[str] | None, options: dict[str, typing.Any]) -> typing.Any:
    wanted, resolved = _fit(name, options)  # a bad option is refused before any file is read
    if weights is None:
        return resnetlab.create_model(name, **options)
    path = pathlib.Path(weights)
    is_name = isinstance(weights, str) and not any(sep in weights for sep in ("/", os.sep))
    if is_name and not path.exists() and path.suffix not in _FILE_SUFFIXES:
        path = _shipped_weights(weights, name)
    if not path.is_file():
        raise _UserError(f"no weights file at {path}")
    bundle = _read_file(path, name)
    record = bundle.record
    held, recorded = _fit(
        record.name,
        {**record.options, "num_classes": len(record.classes), "in_channels": record.preprocessing.channels},
    )
    if held != wanted:
        raise _UserError(f"{path} holds the weights of {record.name}, not {name}")
    differ = [key for key in options if key in resolved and resolved[key] != recorded.get(key)]
    if differ:
        ours = ", ".join(f"{key}={resolved[key]!r}" for key in differ)
        theirs = ", ".join(f"{key}={recorded.get(key)!r}" for key in differ)
        hint = ""
        if path.suffix == ".pth" and "stride_in_1x1" in differ:
            hint = " (torchvision's weights are the v1.5 network, stride on the 3x3: leave stride_in_1x1 out)"
        raise _UserError(f"{path} does not fit {name} with {ours}: it holds {record.name} with {theirs}{hint}")
    return bundle.model.train()


def _options_text(info: resnetlab.models.ModelInfo) -> str:
    return ", ".join(f"{key}={getattr(value, 'value', value)!r}" for key, value in info.options.items())


def _entry(name: str) -> typing.Any:
    """The hub entry for network ``name``: a function of its own name, docstring and signature."""
    info = resnetlab.model_info(name)

    def entry(*, weights: str | os.PathLike[str] | None = None, **options: typing.Any) -> typing.Any:
        return _network(name, weights, options)

    where = "Table 1, ImageNet, 224x224 input" if info.family == "imagenet" else "Sec. 4.2, CIFAR-10, 32x32 input"
    kind = "residual network" if info.residual else "plain network (no shortcuts)"
    torchvision = info.family == "imagenet" and info.residual  # torchvision publishes these five
    tv = "; also torchvision's .pth, as the v1.5 network" if torchvision else ""
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name}: the paper's {info.depth}-layer {kind}, {info.block} blocks ({where}).\n\n"
        f"Options, as resnetlab.create_model({name!r}, ...): {_options_text(info)}.\n"
        f"weights: None (random), a local .safetensors export or .pt checkpoint{tv}, or a name of weights "
        "shipped in weights/ (none yet; weights='cifar10' says what there is). Options left out come from the "
        "file; options given must agree with it."
    )
    keyword = inspect.Parameter.KEYWORD_ONLY
    entry.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(key, keyword, default=value) for key, value in info.options.items()]
        + [inspect.Parameter("weights", keyword, default=None)]
    )
    return entry


for _name in resnetlab.list_models():
    globals()[_name] = _entry(_name)
