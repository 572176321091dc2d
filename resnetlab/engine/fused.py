"""The training step of K packed networks on in-memory data, with no host work inside it, graphed on CUDA.

One call of :class:`FusedStep` is one SGD iteration of every packed network: gather each network's batch from
the images held on the device (its own epoch order), apply Sec. 4.2's mean subtraction, crops and flips (its
own draws), forward, the sum of the K mean losses, backward, SGD with momentum and weight decay at each
network's own lr, and the running loss and mistakes. Everything it reads sits in tensors at fixed
addresses on the device: the epoch's plan (indices, offsets, flips; uploaded once per epoch), the position
in it, the lr vector, the accumulated statistics. So on CUDA the whole step is captured once as a CUDA
graph and replayed: one launch per iteration instead of ~600 for ResNet-20, and no host sync until the
statistics are read. On the CPU the same code runs eagerly.

The randomness is drawn by each network's ``InMemoryLoader.epoch_plan``, i.e. exactly as a single run with
that seed draws it; the host keeps each loader's (epoch, position), so checkpoints hold the single run's
loader state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data import DeviceSplit, InMemoryLoader
from ..models.packed import PackedNetworks
from .loop import autocast

__all__ = ["FusedStep", "CAPTURE_AFTER"]

CAPTURE_AFTER = 3  # eager steps (on a side stream) before the graph is captured: cuDNN picks its kernels


def _upload(device_tensor: torch.Tensor, host: torch.Tensor) -> None:
    """Copy ``host`` into ``device_tensor`` in stream order without making the host wait (pinned memory,
    whose caching allocator keeps it alive until the copy has run)."""
    if device_tensor.is_cuda:
        device_tensor.copy_(host.pin_memory(), non_blocking=True)
    else:
        device_tensor.copy_(host)


class FusedStep:
    """One SGD step of ``model``'s K networks on ``loaders``' data (see the module's docstring).

    ``momentum``, ``weight_decay`` and ``nesterov`` are torch.optim.SGD's (the same update, to float32
    rounding). ``graph``: capture and replay the step as a CUDA graph (CUDA only). ``buffers``: each
    parameter's momentum buffer, initially zero (the first step's buffer is then the gradient, as torch's).
    """

    def __init__(
        self,
        model: PackedNetworks,
        loaders: Sequence[InMemoryLoader],
        *,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        amp: bool,
        graph: bool,
        device: torch.device,
    ) -> None:
        if len(loaders) != model.k:
            raise ValueError(f"{model.k} networks need {model.k} loaders, got {len(loaders)}")
        lengths = {(len(loader), loader.batch_size, loader.augmenting) for loader in loaders}
        if len(lengths) != 1:
            raise ValueError("packed networks need loaders with the same epoch length, batch and augmentation")
        if graph and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.loaders, self.device, self.amp = model, list(loaders), device, amp
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        splits = [loader.on_device() for loader in loaders]
        self.k, self.batch_size = model.k, splits[0].batch_size
        self.augmenting = loaders[0].augmenting
        self.augment = splits[0].augment  # pad and scale (the same for all); each network's own mean below
        # One pool of images on the device: the networks' splits, each once (one shared tensor without subsets).
        pools: list[DeviceSplit] = []
        for split in splits:
            if not any(split.images is other.images for other in pools):
                pools.append(split)
        starts, total = {}, 0
        for pool in pools:
            starts[id(pool.images)], total = total, total + len(pool.images)
        self.offset = torch.tensor([starts[id(split.images)] for split in splits]).view(self.k, 1, 1)
        self.images = pools[0].images if len(pools) == 1 else torch.cat([p.images for p in pools])
        self.labels = pools[0].labels if len(pools) == 1 else torch.cat([p.labels for p in pools])
        self.mean = torch.stack([split.mean for split in splits]).to(device)  # (K, C, H, W)
        n = len(loaders[0])
        self.plan_index = torch.zeros(self.k, n, self.batch_size, dtype=torch.int64, device=device)
        self.plan_offsets = torch.zeros(self.k, n, self.batch_size, 2, dtype=torch.int64, device=device)
        self.plan_flips = torch.zeros(self.k, n, self.batch_size, dtype=torch.bool, device=device)
        self.plan_epoch: int | None = None
        self.position = torch.zeros(1, dtype=torch.int64, device=device)
        self.lr = torch.zeros(self.k, device=device)
        self._lr_host: list[float] | None = None
        self.stats = torch.zeros(self.k, 3, dtype=torch.float64, device=device)  # loss sum, mistakes, images
        self.step_mistakes = torch.zeros(self.k, device=device)
        self.params = model.member_parameters()
        # Which lr each parameter's dim-0 rows take: the owner's (a branch's) or network k's block (grouped).
        self.lr_rows = [
            torch.full((1,) * p.dim(), owner, device=device)
            if owner is not None
            else torch.arange(self.k, device=device).repeat_interleave(len(p) // self.k).view(-1, *(1,) * (p.dim() - 1))
            for p, owner in self.params
        ]
        self.buffers = [torch.zeros_like(p) for p, _ in self.params]
        self.use_graph, self.graph, self.eager_steps = graph, None, 0
        self._side = torch.cuda.Stream(device) if graph else None

    # -- host side: the data plan, the lr, the statistics ------------------------------------------------

    def _prepare(self) -> None:
        """Upload the epoch's plan when the loaders enter a new one (their state: the single runs' (epoch,
        position)); stream-ordered, no host sync."""
        first = self.loaders[0]
        if first.position >= len(first):  # a state saved at the very end of an epoch: the next one begins
            for loader in self.loaders:
                loader.epoch, loader.position = loader.epoch + 1, 0
        states = {(loader.epoch, loader.position) for loader in self.loaders}
        if len(states) != 1:
            raise ValueError(f"packed loaders are at different points of their data order: {sorted(states)}")
        if self.plan_epoch != first.epoch:
            plans = [loader.epoch_plan(first.epoch) for loader in self.loaders]
            index = torch.stack([p[0] for p in plans]) + self.offset  # into the pool
            _upload(self.plan_index, index)
            _upload(self.plan_offsets, torch.stack([p[1] for p in plans]))
            _upload(self.plan_flips, torch.stack([p[2] for p in plans]))
            self.plan_epoch = first.epoch
            self.position.fill_(first.position)

    def set_lr(self, lrs: Sequence[float]) -> None:
        """Each network's lr for the coming steps (copied to the device only when it changes)."""
        if self._lr_host != list(lrs):
            _upload(self.lr, torch.tensor(list(lrs), dtype=torch.float32))
            self._lr_host = list(lrs)

    def take_stats(self) -> torch.Tensor:
        """The (K, 3) sums since the last call, float64 on the CPU (one host sync), and zero them."""
        stats = self.stats.to("cpu", copy=True)  # a copy also on the CPU, where .cpu() would alias
        self.stats.zero_()
        return stats

    def last_mistakes(self) -> list[float]:
        """Each network's top-1 mistakes in the last step (a host sync: the warm-up's switch needs it)."""
        return self.step_mistakes.tolist()

    # -- the step -------------------------------------------------------------------------------------

    def __call__(self) -> None:
        self._prepare()
        if not self.use_graph:
            self._zero_grad()
            self._body()
        elif self.graph is not None:
            self.graph.replay()
        elif self.eager_steps < CAPTURE_AFTER:
            assert self._side is not None
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side):
                self._zero_grad()
                self._body()
            torch.cuda.current_stream(self.device).wait_stream(self._side)
            self.eager_steps += 1
        else:
            self._zero_grad()  # the captured backward then allocates the gradients in the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            self.graph = graph
            graph.replay()  # capturing recorded the step without running it
        for loader in self.loaders:
            loader.position += 1
            if loader.position == len(loader):
                loader.epoch, loader.position = loader.epoch + 1, 0

    def _zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current position's batches of every network: images float32 (K, B, C, H, W), labels (K, B)."""
        k, b = self.k, self.batch_size
        index = self.plan_index.index_select(1, self.position).view(k * b)
        images = self.images.index_select(0, index)  # (K*B, C, H, W) uint8
        labels = self.labels.index_select(0, index).view(k, b)
        x = self.augment.normalize(images.view(k, b, *images.shape[1:]), self.mean[:, None])  # each its own mean
        if self.augmenting:
            offsets = self.plan_offsets.index_select(1, self.position).view(k * b, 2)
            flips = self.plan_flips.index_select(1, self.position).view(k * b)
            x = self.augment.crop_flip(x.view(k * b, *x.shape[2:]), offsets, flips).view_as(x)
        return x, labels

    def _body(self) -> None:
        x, labels = self.batch()
        with autocast(self.device, self.amp, cache=not self.use_graph):
            logits = self.model(x)  # (K, B, classes)
        per_image = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")
        losses = per_image.view(self.k, self.batch_size).mean(dim=1)  # (K,): each network's mean loss
        losses.sum().backward()  # each network's gradient is its own mean loss's
        self._sgd()
        mistakes = (logits.detach().argmax(dim=2) != labels).sum(dim=1).float()  # (K,)
        self.step_mistakes.copy_(mistakes)
        images = torch.full_like(mistakes, float(self.batch_size))
        self.stats.add_(torch.stack([losses.detach(), mistakes, images], dim=1).double())
        self.position.add_(1)

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (dampening 0) with a per-network lr: d = g + wd * p; buf = m * buf + d;
        p -= lr_k * (d + m * buf if nesterov else buf)."""
        params = [p for p, _ in self.params]
        grads = [p.grad for p in params]
        steps = torch._foreach_add(grads, params, alpha=self.weight_decay) if self.weight_decay else list(grads)
        if self.momentum:
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, steps)
            steps = torch._foreach_add(steps, self.buffers, alpha=self.momentum) if self.nesterov else self.buffers
        for p, step, rows in zip(params, steps, self.lr_rows):
            p.sub_(step * self.lr[rows])  # each network's block of the parameter at its own lr
