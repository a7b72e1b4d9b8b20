"""Labels never drift from images: pixels encode each sample's labels (tests/datasets.py), and every
image a shuffled, multi-worker, multi-rank CPU loader yields must agree with its labels."""
from __future__ import annotations

import pytest
import torch

from helpers.shardsets import build_shards, labels_from_images
from imaginet_shards.loaders import make_loader


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("aligned"), 36, max_count=8, seed=4)


@pytest.mark.parametrize("preset", ["eval", "train", "calibration", "social"])
def test_every_image_matches_its_labels(shards, preset):
    seen = 0
    for rank in range(2):
        loader = make_loader(shards, backend="cpu", preset=preset, batch_size=4, rank=rank,
                             world_size=2, workers=2, seed=11, shuffle_buffer=6)
        for images, labels in loader:
            decoded = labels_from_images(images, loader.config.preset.mean, loader.config.preset.std)
            assert torch.equal(decoded, labels), f"{preset}: images disagree with their labels"
            seen += len(labels)
    assert seen == 32  # 36 samples, 2 ranks x batch 4: 4 dropped
