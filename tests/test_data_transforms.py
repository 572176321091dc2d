"""Per-image pipelines (Sec. 3.4, 4.2), PCA lighting, image statistics, the test views, and the
DataLoader path with its samplers."""

from __future__ import annotations

import torch
from test_data_fast import coordinate_images, recover
from torch import nn
from torchvision.transforms import v2

from resnetlab.data import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    FileDataset,
    PCALighting,
    ShardSampler,
    SubtractMean,
    center_view,
    cifar_test_transform,
    cifar_train_transform,
    folder_statistics,
    imagenet_train_transform,
    index_folder,
    make_loader,
    multiscale_views,
    open_image_folder,
    ten_crop_views,
    tensor_statistics,
)
from resnetlab.deploy.scoring import class_log_probs


def test_cifar_per_image_pipeline_matches_the_fast_paths_definition():
    torch.manual_seed(0)
    images = coordinate_images(1500)
    transform = cifar_train_transform(torch.zeros(3, 32, 32), scale=1.0)
    x = torch.stack([transform(image) for image in images])
    assert x.shape == (1500, 3, 32, 32) and x.dtype == torch.float32
    offsets, flips = recover(x)
    assert sorted(set(offsets.flatten().tolist())) == list(range(-4, 5))
    assert abs(flips.float().mean().item() - 0.5) < 0.05
    test = cifar_test_transform(images.float().mean(0))
    assert torch.allclose(test(images[0]), (images[0].float() - images.float().mean(0)) / 255, atol=1e-6)


def test_imagenet_shorter_sides_spread_over_256_to_480():
    torch.manual_seed(0)
    resize = imagenet_train_transform(torch.zeros(3, 224, 224)).transforms[1]
    image = torch.zeros(3, 30, 40, dtype=torch.uint8)  # the size is all that matters here
    sides = torch.tensor([min(resize(image).shape[-2:]) for _ in range(2000)])
    assert sides.min() == 256 and sides.max() == 480  # both ends reached, nothing outside
    assert abs(sides.float().mean().item() - 368) < 5  # uniform over [256, 480]
    assert len(torch.unique(sides)) > 200
    out = resize(image)
    assert abs(out.shape[-1] / out.shape[-2] - 40 / 30) < 0.01  # aspect ratio kept


def test_imagenet_train_pipeline_output():
    torch.manual_seed(1)
    mean = torch.full((3, 224, 224), 100.0)
    out = imagenet_train_transform(mean)(torch.randint(0, 256, (3, 300, 500), dtype=torch.uint8))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    per_channel = imagenet_train_transform(
        torch.tensor([120.0, 110, 100]), std=torch.tensor([60.0, 60, 60]), lighting_std=0
    )
    flat = per_channel(torch.full((3, 260, 260), 180, dtype=torch.uint8))
    assert torch.allclose(flat[:, 0, 0], torch.tensor([1.0, 70 / 60, 80 / 60]))


def test_pca_lighting_noise_has_the_alexnet_covariance():
    lighting = PCALighting(0.1)
    torch.manual_seed(0)
    noise = lighting(torch.zeros(20_000, 3, 1, 1))[:, :, 0, 0] / 255  # (N, 3), pixel units [0, 1]
    expected = IMAGENET_EIGVEC @ torch.diag((0.1 * IMAGENET_EIGVAL) ** 2) @ IMAGENET_EIGVEC.T
    assert torch.allclose(noise.T.cov(), expected, atol=3e-5)
    assert noise.mean(0).abs().max() < 1e-3
    image = torch.rand(3, 5, 5) * 255
    shifted = lighting(image)
    assert torch.allclose(shifted - image, (shifted - image)[:, :1, :1].expand(3, 5, 5))  # one colour per image
    assert torch.equal(PCALighting(0)(image), image)


def test_statistics_recover_a_known_colour_covariance():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    colours = (torch.randn(4000, 3, generator=g) * torch.tensor([0.2, 0.1, 0.02])) @ basis.T * 255 + 128
    images = colours.clamp(0, 255).round().to(torch.uint8).view(4000, 3, 1, 1).expand(4000, 3, 2, 2).contiguous()
    stats = tensor_statistics(images, chunk=512)
    assert stats.count == 4000 and stats.mean_image.shape == (3, 2, 2)
    assert torch.allclose(stats.eigval.sqrt(), torch.tensor([0.2, 0.1, 0.02]), rtol=0.06, atol=0.002)
    assert torch.allclose((stats.eigvec[:, 0] @ basis[:, 0]).abs(), torch.tensor(1.0), atol=0.01)
    assert torch.allclose(stats.channel_mean, images.float().mean((0, 2, 3)), atol=1e-3)
    assert torch.allclose(stats.channel_std, images.float().std((0, 2, 3)), rtol=1e-3)


def test_subtract_mean_per_pixel_falls_back_to_per_channel_for_other_sizes():
    mean = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    same = SubtractMean(mean, scale=1.0)(torch.zeros(3, 4, 4))
    other = SubtractMean(mean, scale=1.0)(torch.zeros(3, 6, 2))
    assert torch.equal(same, -mean) and torch.allclose(other[:, 0, 0], -mean.mean((1, 2)))


def test_center_and_ten_crop_views():
    image = torch.randint(0, 256, (3, 256, 320), dtype=torch.uint8)  # already shorter side 256
    mean = torch.zeros(3, 224, 224)
    center = center_view(mean)(image)
    assert center.shape == (3, 224, 224)
    assert torch.allclose(center, image[:, 16:240, 48:272].float() / 255)
    views = ten_crop_views(mean)(image)
    assert views.shape == (10, 3, 224, 224)
    corners = [image[:, :224, :224], image[:, :224, -224:], image[:, -224:, :224], image[:, -224:, -224:]]
    for view, crop in zip(views[:4], corners):
        assert torch.allclose(view, crop.float() / 255)
    assert torch.allclose(views[4], center)


def test_ten_crop_flipped_half_is_the_mirror_image():
    image = torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8)
    views = ten_crop_views(torch.zeros(3, 224, 224))(image)
    mirrored = ten_crop_views(torch.zeros(3, 224, 224))(image.flip(-1))
    assert torch.allclose(views[5:], mirrored[:5])


def test_multiscale_views_and_averaged_scores():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    views = multiscale_views(image, torch.full((3, 224, 224), 128.0))
    assert len(views) == 10
    assert [min(v.shape[-2:]) for v in views] == [224, 224, 256, 256, 384, 384, 480, 480, 640, 640]
    assert [max(v.shape[-2:]) for v in views[::2]] == [298, 341, 512, 640, 853]
    assert all(torch.equal(views[i + 1], views[i].flip(-1)) for i in range(0, 10, 2))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():  # the views of different sizes, scored as eval and predict score them
        scores = class_log_probs(model, [v[None] for v in views], nn.Identity(), channels_last=False).exp()[0]
        expected = torch.stack([model(v[None]).softmax(1)[0] for v in views]).mean(0)
    assert scores.shape == (5,) and torch.allclose(scores.sum(), torch.tensor(1.0))
    assert torch.allclose(scores, expected, atol=1e-6)


def test_dataloader_path_over_an_image_folder(data_env, tmp_path, image_folder):
    image_folder(tmp_path, classes=("a", "b", "c"), counts={"train": 6, "val": 3}, eval_split="val", size=40)
    train, val = open_image_folder(tmp_path)
    assert (len(train.files), len(val.files), train.classes) == (18, 9, ["a", "b", "c"])
    mean = torch.full((3, 32, 32), 127.0)
    pipeline = v2.Compose([v2.RandomCrop(32), cifar_test_transform(mean)])
    loader = make_loader(FileDataset(train, pipeline), batch_size=4, train=True, workers=0, seed=0)
    batches = list(loader)
    assert len(batches) == 4 and batches[0][0].shape == (4, 3, 32, 32) and batches[0][1].dtype == torch.int64
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), torch.cat([y for _, y in batches]))
    evaluation = make_loader(
        FileDataset(val, center_view(mean, resize=36, crop=32)), batch_size=4, train=False, workers=0
    )
    assert torch.cat([y for _, y in evaluation]).tolist() == val.labels  # every image once, in order


def test_dataloader_with_worker_processes(data_env, tmp_path, image_folder):
    made = image_folder(tmp_path, classes=("a", "b"), counts={"train": 4, "val": 2}, eval_split="val")
    index = index_folder(made["root"] / "train")
    loader = make_loader(
        FileDataset(index, cifar_test_transform(torch.zeros(3, 32, 32))), batch_size=3, train=False, workers=2
    )
    assert loader.persistent_workers and sum(len(y) for _, y in loader) == 8


def test_shard_sampler_counts_every_image_once():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]] and len(ShardSampler(10, 1, 3)) == 3


def test_folder_statistics_are_cached(data_env, tmp_path, image_folder):
    image_folder(tmp_path, classes=("a", "b"), counts={"train": 3, "val": 1}, eval_split="val", size=40)
    train, _ = open_image_folder(tmp_path)
    stats = folder_statistics(train, resize=36, crop=32, progress=False)
    assert stats.count == 6 and stats.mean_image.shape == (3, 32, 32) and stats.eigvec.shape == (3, 3)
    assert len(list((data_env / "stats").iterdir())) == 1
    again = folder_statistics(train, resize=36, crop=32, progress=False)
    assert torch.equal(again.mean_image, stats.mean_image) and again.count == 6
    assert folder_statistics(train, resize=36, crop=32, max_images=2, progress=False).count == 2


def test_center_view_of_a_portrait_image():
    out = center_view(torch.zeros(3, 224, 224))(torch.zeros(3, 500, 300, dtype=torch.uint8))
    assert out.shape == (3, 224, 224)
