"""``resnetlab import-weights akamaster``: akamaster/pytorch_resnet_cifar10's trained CIFAR-10 ResNets as
resnetlab checkpoints.

Their networks are the paper's option-A CIFAR ResNets (Sec. 4.2), with the same layers under the same names
(``linear`` for our ``fc``), and differ from ours in two things that a converter has to carry:

- **Where option A puts its zero channels.** Their shortcut pads C/4 zero channels before the subsampled
  identity and C/4 after it (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, C // 4, C // 4))``); ours appends C/2
  after it. Both add the identity to C/2 of the block's output channels, so the networks are the same up to
  an order of each stage's channels: our channel ``i`` is their channel ``perm[i]``, where the first C/2 of
  ours (the identity's) are their middle C/2 in the previous stage's order, and the rest their outer C/4 on
  either side. The converter reorders every weight that reads or writes a stage's channels (each block's
  second convolution and BN, the next block's first convolution, the fc), so the imported network computes
  their outputs with our option A.
- **How inputs are normalised.** They scale to [0, 1] and normalise per channel with ImageNet's mean and std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), not the paper's per-pixel mean; the checkpoint records that
  as its preprocessing, so ``eval``, ``predict``, ``export`` and torch.hub apply it.

Their files are pickled dicts ``{"best_prec1": float, "state_dict": ...}`` saved from ``nn.DataParallel``
(``module.`` prefixes) on a GPU; they are read with ``torch.load(weights_only=True)`` onto the CPU, so no
pickled code runs. They were trained on the original CIFAR-10 release and their ``best_prec1`` is the best
epoch's test accuracy (chosen on the test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    NetworkRecord,
    build_network,
    clean_state_dict,
    load_checkpoint,
    network_from_state,
    network_state,
    require_finite,
    save_checkpoint,
)
from ..config import DataConfig, ModelConfig, RunConfig
from ..data.preprocessing import Preprocessing
from ..data.sources import CIFAR10_CLASSES
from ..data.transforms import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD
from ..errors import UserError
from ..files import sha256_file
from .torchvision_weights import check_state_keys

__all__ = ["AKAMASTER_MODELS", "stage_permutations", "akamaster_checkpoint", "read_akamaster", "import_akamaster"]

# The depths their resnet.py builds (their README publishes 20, 32, 44, 56, 110 and 1202; 20-56 are in
# ../shared/data/akamaster).
AKAMASTER_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")


def stage_permutations(widths: list[int]) -> list[torch.Tensor]:
    """For each stage of these widths, ``perm`` with our channel ``i`` = their channel ``perm[i]``.

    The first stage has no shortcut that pads, so its order is theirs. A stage of C channels after one of C/2:
    our identity channels 0..C/2 carry the previous stage's channels in our order, which are theirs at
    C/4 + the previous ``perm``; our zero channels C/2..C are their zero channels, 0..C/4 then 3C/4..C.
    """
    perms = [torch.arange(widths[0])]
    for width in widths[1:]:
        quarter = width // 4
        zeros = torch.cat([torch.arange(quarter), torch.arange(width - quarter, width)])
        perms.append(torch.cat([perms[-1] + quarter, zeros]))
    return perms


def _their_state(path: Path) -> tuple[dict[str, torch.Tensor], float | None]:
    raw = load_checkpoint(path)  # weights_only, mapped to the CPU
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict; expected an akamaster checkpoint ({{'state_dict': ...}})")
    state = clean_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    state = {("fc." + k[len("linear.") :] if k.startswith("linear.") else k): v for k, v in state.items()}
    best = raw.get("best_prec1")
    return state, float(best) if isinstance(best, (int, float, torch.Tensor)) else None


def _reorder(state: dict[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Their weights in our channel order (see the module's docstring); ``state`` uses our names."""
    stages = [network.layer1, network.layer2, network.layer3]
    perms = stage_permutations([stage[0].conv2.out_channels for stage in stages])
    out = dict(state)
    for s, stage in enumerate(stages):
        for b in range(len(stage)):
            block = f"layer{s + 1}.{b}"
            before = perms[s - 1] if (b == 0 and s > 0) else perms[s]  # the channels the block reads
            out[f"{block}.conv1.weight"] = state[f"{block}.conv1.weight"].index_select(1, before)
            out[f"{block}.conv2.weight"] = state[f"{block}.conv2.weight"].index_select(0, perms[s])
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{block}.bn2.{name}"] = state[f"{block}.bn2.{name}"].index_select(0, perms[s])
    out["fc.weight"] = state["fc.weight"].index_select(1, perms[-1])
    return out


def akamaster_checkpoint(path: str | Path, model: str) -> dict[str, Any]:
    """akamaster's ``model`` in the local file ``path`` as a resnetlab checkpoint's dict (option A, channels
    reordered), with CIFAR-10's classes and their per-channel normalisation; nothing written."""
    path = Path(path)
    if model not in AKAMASTER_MODELS:
        raise UserError(f"akamaster's networks are {', '.join(AKAMASTER_MODELS)}; got --model {model}")
    state, best = _their_state(path)
    network = build_network(model, {"shortcut": "A"}, num_classes=10, in_channels=3)
    expected = {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # newer torch saves them
    check_state_keys(state, expected, path, f"an akamaster {model} checkpoint")
    require_finite(state, path)  # before anything is written
    # every key checked above; num_batches_tracked (absent from their files) keeps the network's own
    network.load_state_dict({**network.state_dict(), **_reorder(state, network)}, strict=True)

    pre = Preprocessing(
        mean=IMAGENET_CHANNEL_MEAN.clone(),
        image_size=(32, 32),
        channels=3,
        view="single",
        std=IMAGENET_CHANNEL_STD.clone(),
    )
    config = RunConfig(
        description=f"akamaster/pytorch_resnet_cifar10 {model} imported from {path.name} (trained on the original "
        "CIFAR-10; their best epoch, chosen on the test set)",
        model=ModelConfig(name=model, shortcut="A"),
        data=DataConfig(dataset="cifar10"),
    )
    source = {"format": "akamaster", "file": str(path), "sha256": sha256_file(path)}
    if best is not None:
        source["best_prec1"] = best
    return network_state(
        config,
        list(CIFAR10_CLASSES),
        pre,
        {k: v.clone() for k, v in network.state_dict().items()},
        dataset="cifar10",
        source=source,
    )


def read_akamaster(path: str | Path, model: str) -> NetworkRecord:
    """akamaster's ``model`` in ``path`` as the record a checkpoint of it would hold."""
    return network_from_state(akamaster_checkpoint(path, model), Path(path))


def import_akamaster(path: str | Path, model: str, out: str | Path) -> Path:
    """Turn akamaster's ``model`` in the local file ``path`` into a resnetlab checkpoint at ``out``."""
    checkpoint = akamaster_checkpoint(path, model)
    out = Path(out)
    try:
        return save_checkpoint(checkpoint, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err})") from None
