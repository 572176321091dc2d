"""The in-memory fast path: Sec. 4.2's augmentation on whole batches, its statistics, determinism, resume,
sharding across ranks, and the same batches on a GPU."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from resnetlab.data import BatchAugment, InMemoryLoader


def coordinate_images(n: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): channel 0 holds row + 1, channel 1 column + 1, channel 2 the image id
    (mod 256), so a crop tells which offset and flip produced it (padding reads 0)."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    images[:, 0], images[:, 1] = rows, rows.T
    images[:, 2] = (torch.arange(n) % 256).view(n, 1, 1).to(torch.uint8)
    return images


def recover(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx) and flip of each crop in a batch of coordinate images (scale 1, zero mean)."""
    c = x.shape[-1] // 2
    flips = x[:, 1, c, c + 1] < x[:, 1, c, c]
    dy = x[:, 0, c, c] - 1 - c
    dx = x[:, 1, c, c] - 1 - torch.where(flips, torch.tensor(float(x.shape[-1] - 1 - c)), torch.tensor(float(c)))
    return torch.stack([dy, dx], 1).long(), flips


def reference(images: torch.Tensor, mean: torch.Tensor, offsets, flips, pad=4, scale=1 / 255) -> torch.Tensor:
    """The same augmentation image by image: subtract, zero-pad, slice, flip."""
    out = []
    h, w = images.shape[-2:]
    for image, (dy, dx), flip in zip(images, offsets.tolist(), flips.tolist()):
        padded = F.pad((image.float() - mean) * scale, (pad,) * 4)
        crop = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_batch_augment_equals_the_per_image_definition():
    images = torch.randint(0, 256, (81 * 2, 3, 8, 8), dtype=torch.uint8)
    mean = images.float().mean(0)
    aug = BatchAugment(mean, pad=4)
    offsets = torch.tensor(list(itertools.product(range(-4, 5), repeat=2)) * 2)  # every offset, flipped or not
    flips = torch.arange(162) >= 81
    assert torch.equal(aug(images, offsets, flips), reference(images, mean, offsets, flips))
    assert torch.equal(aug.normalize(images), (images.float() - mean) * (1 / 255))


def test_crop_offsets_cover_minus4_to_4_and_flips_are_about_half():
    images = coordinate_images(4000)
    loader = InMemoryLoader(
        images,
        torch.zeros(4000, dtype=torch.long),
        batch_size=100,
        mean=torch.zeros(3, 32, 32),
        train=True,
        scale=1.0,
        seed=0,
    )
    batches = list(loader)
    x = torch.cat([b[0] for b in batches])
    offsets, flips = recover(x)
    assert sorted(set(offsets[:, 0].tolist())) == list(range(-4, 5)) == sorted(set(offsets[:, 1].tolist()))
    assert len(set(map(tuple, offsets.tolist()))) == 81  # every (dy, dx) pair occurs
    assert abs(flips.float().mean().item() - 0.5) < 0.03
    for offset in range(-4, 5):  # each offset about 1/9 of the time
        assert abs((offsets[:, 1] == offset).float().mean().item() - 1 / 9) < 0.025
    # Padding is zero in the output: a crop shifted up by k has k zero rows at the top.
    shifted = (offsets[:, 0] == -4) & (offsets[:, 1] == 0)
    assert shifted.any() and torch.all(x[shifted][:, :, :4] == 0) and torch.all(x[shifted][:, :2, 4:] > 0)


def test_output_dtype_shape_and_mean_subtraction():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    mean = images.float().mean(0)
    test = InMemoryLoader(images, torch.arange(50), batch_size=16, mean=mean, train=False)
    xs, ys = zip(*test)
    assert len(test) == 4 and [len(y) for y in ys] == [16, 16, 16, 2]  # every image once, in order
    x = torch.cat(xs)
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32) and torch.equal(torch.cat(ys), torch.arange(50))
    assert torch.allclose(x * 255 + mean, images.float(), atol=1e-3)
    train = InMemoryLoader(images, torch.arange(50), batch_size=16, mean=mean, train=True, channels_last=True)
    x, y = next(iter(train))
    assert len(train) == 3 and x.shape == (16, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)


def test_training_order_without_augmentation():
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    loader = InMemoryLoader(
        images, torch.arange(64), batch_size=16, mean=torch.zeros(1, 8, 8), train=True, augment=False, scale=1.0
    )
    x, y = next(iter(loader))
    assert not torch.equal(y, torch.arange(16)) and torch.equal(x, images[y].float())  # shuffled, not augmented


def test_grayscale_28x28_keeps_its_size_with_one_channel():
    images = coordinate_images(64, size=28)[:, :1]
    loader = InMemoryLoader(
        images, torch.zeros(64, dtype=torch.long), batch_size=32, mean=torch.zeros(1, 28, 28), train=True
    )
    x, _ = next(iter(loader))
    assert x.shape == (32, 1, 28, 28)


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_deterministic_per_seed_and_a_new_permutation_each_epoch():
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(300)
    make = lambda seed: InMemoryLoader(images, labels, batch_size=32, mean=torch.zeros(3, 8, 8), train=True, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    first_a, first_b, first_c = _epoch(a), _epoch(b), _epoch(c)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first_a, first_b))
    assert not torch.equal(first_a[0][1], first_c[0][1])
    seen = torch.cat([y for _, y in first_a])
    assert len(first_a) == 9 and len(set(seen.tolist())) == 288  # a permutation; the last partial batch dropped
    second = _epoch(a)
    assert a.epoch == 2 and not torch.equal(torch.cat([y for _, y in second]), seen)


def test_resume_mid_epoch_reproduces_the_remaining_batches():
    images = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(200)
    kw = dict(batch_size=16, mean=torch.zeros(3, 8, 8), train=True, seed=7)
    full = InMemoryLoader(images, labels, **kw)
    _epoch(full)
    uninterrupted = _epoch(full)  # epoch 1
    stopped = InMemoryLoader(images, labels, **kw)
    _epoch(stopped)
    it = iter(stopped)
    for _ in range(5):
        next(it)
    state = stopped.state_dict()
    assert state == {"epoch": 1, "position": 5, "seed": 7}
    resumed = InMemoryLoader(images, labels, **{**kw, "seed": 0})
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(uninterrupted) - 5
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(rest, uninterrupted[5:]))
    assert resumed.state_dict() == {"epoch": 2, "position": 0, "seed": 7}
    with pytest.raises(ValueError, match="outside"):
        resumed.load_state_dict({"epoch": 0, "position": 99, "seed": 7})


def test_state_saved_after_the_last_batch_starts_the_next_epoch():
    images = torch.zeros(64, 1, 4, 4, dtype=torch.uint8)
    loader = InMemoryLoader(images, torch.arange(64), batch_size=16, mean=torch.zeros(1, 4, 4), train=True)
    for _ in loader:
        state = loader.state_dict()
    assert state == {"epoch": 1, "position": 0, "seed": 0}
    loader.load_state_dict({"epoch": 0, "position": 4, "seed": 0})  # the same moment, written differently
    assert len(list(loader)) == 4 and loader.epoch == 2


def test_ranks_get_disjoint_shards():
    images = torch.zeros(103, 1, 4, 4, dtype=torch.uint8)
    labels = torch.arange(103)
    kw = dict(batch_size=8, mean=torch.zeros(1, 4, 4), world_size=3)
    train = [torch.cat([y for _, y in InMemoryLoader(images, labels, train=True, rank=r, **kw)]) for r in range(3)]
    assert all(len(t) == 32 for t in train)  # 34 each, 4 batches of 8
    assert len(set(torch.cat(train).tolist())) == 96
    test = [torch.cat([y for _, y in InMemoryLoader(images, labels, train=False, rank=r, **kw)]) for r in range(3)]
    assert sorted(torch.cat(test).tolist()) == list(range(103))  # every image on exactly one rank, none twice
    with pytest.raises(ValueError, match="rank 3"):
        InMemoryLoader(images, labels, train=True, rank=3, **kw)


def test_ranks_split_the_global_batch_of_one_process():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(100)
    kw = dict(mean=images.float().mean(0), train=True, seed=5)
    one = _epoch(InMemoryLoader(images, labels, batch_size=24, **kw))
    ranks = [_epoch(InMemoryLoader(images, labels, batch_size=8, rank=r, world_size=3, **kw)) for r in range(3)]
    assert len(one) == len(ranks[0]) == 4
    for i, (x, y) in enumerate(one):  # the same images, crops and flips, in consecutive slices
        assert torch.equal(torch.cat([ranks[r][i][1] for r in range(3)]), y)
        assert torch.equal(torch.cat([ranks[r][i][0] for r in range(3)]), x)
    last = [InMemoryLoader(images, labels, batch_size=8, rank=r, world_size=3, drop_last=False, **kw) for r in range(3)]
    sizes = [len(list(loader)[-1][1]) for loader in last]
    assert sizes == [2, 1, 1]  # the last global batch of 4, split as evenly as it goes


def test_bad_arguments():
    with pytest.raises(ValueError, match="need uint8 images"):
        InMemoryLoader(torch.zeros(4, 3, 8, 8), torch.zeros(4), batch_size=2, mean=torch.zeros(3, 8, 8), train=True)
    with pytest.raises(ValueError, match="does not match"):
        images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
        InMemoryLoader(images, torch.zeros(4), batch_size=2, mean=torch.zeros(3, 4, 4), train=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_same_batches_on_the_gpu():
    images = torch.randint(0, 256, (500, 3, 32, 32), dtype=torch.uint8)
    mean = images.float().mean(0)
    kw = dict(batch_size=128, mean=mean, train=True, seed=3)
    cpu = _epoch(InMemoryLoader(images, torch.arange(500), **kw))
    gpu = _epoch(InMemoryLoader(images, torch.arange(500), device="cuda", **kw))
    assert gpu[0][0].device.type == "cuda"
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
