"""The per-file baseline of the benchmark: the reference implementation's design, one image file
per sample opened with PIL in a `torch.utils.data.DataLoader`, with the same preset as the shard
loaders (decisions from `augment.decisions.draw_params`, executed by `augment.cpu.apply_ops`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imaginet_shards.augment.cpu import apply_ops, normalize
from imaginet_shards.augment.decisions import draw_params
from imaginet_shards.augment.spec import Preset
from imaginet_shards.format.annotations import LABEL_COLUMNS, read_annotations, resolve_inside


class FileDataset(Dataset):
    """(image float32 [3,S,S] normalised, labels int64 [4]) per annotation row, read from `root`.

    Each worker draws its perturbations from its own generator, seeded by torch's worker seed
    (fixed by `torch.manual_seed` in the main process), as the reference's per-worker RNG did.
    """

    def __init__(self, root: Path, annotations: Path, preset: Preset):
        frame = read_annotations(annotations)
        if frame.empty:
            raise ValueError(f"{annotations}: no annotation rows")
        self.paths = [resolve_inside(Path(root), p) for p in frame["path"]]
        self.labels = frame[list(LABEL_COLUMNS)].to_numpy(dtype=np.int64)
        self.preset = preset
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def input_bytes(self) -> int:
        """Total size of the image files."""
        return sum(path.stat().st_size for path in self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        with Image.open(self.paths[index]) as image:
            pixels = np.array(image.convert("RGB"))
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)
        ops = draw_params(self.preset, self._rng, tensor.shape[1], tensor.shape[2])
        image = normalize(apply_ops(tensor, ops)[None], self.preset)[0]
        return image, torch.from_numpy(self.labels[index])


def file_loader(dataset: FileDataset, batch_size: int, workers: int, seed: int = 0) -> DataLoader:
    """Shuffled batches of `dataset` from `workers` processes (persistent across epochs)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))
