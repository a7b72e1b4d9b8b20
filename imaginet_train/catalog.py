"""The names the command line offers, importable without torch: the encoder architectures
(`model.build_model`) and the training recipes (`train.TrainConfig.from_recipe`)."""
from __future__ import annotations

from typing import Any

ARCHS = ("resnet50nodown", "resnet50", "small")

# `--recipe paper`: the ImagiNet authors' SelfCon run (their train.sh): 400 epochs of batch 200 at
# 256 px from torchvision's IMAGENET1K_V2 weights, SGD, a 10-epoch LinearLR warm-up from 1e-4 x lr,
# then cosine to 1e-3 x lr, the lr changing once per epoch.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(arch="resnet50nodown", pretrained="imagenet", epochs=400, batch_size=200, lr=0.005,
                  momentum=0.9, weight_decay=1e-4, temperature=0.07, warmup_epochs=10.0,
                  warmup_start_factor=1e-4, lr_step="epoch", crop=256),
}
