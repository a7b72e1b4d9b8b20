"""Supervised contrastive loss (Khosla et al. 2020) as SelfCon uses it, and ImagiNet's two-label form.

Features are `[B, V, D]`: V views per sample (for SelfCon: sub-network, backbone), L2-normalized.
Contrast mode "all": every view of every sample is an anchor, contrasted with every other view of
every sample; positives share the anchor's label. Anchors without a positive are left out of the mean.

Under DDP, `gathered_imaginet_selfcon_loss` contrasts this rank's anchors with the features of all
ranks (a differentiable all-gather) and scales its share so that DDP's gradient averaging yields the
gradient of one process holding the whole global batch; see its docstring for the argument.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import dist

TEMPERATURE = 0.07

# Columns of the [B, 4] labels (imaginet_shards.annotations.LABEL_COLUMNS: origin, content, family,
# generator) and the origin value of generated images ("synthetic" in its origin vocabulary).
ORIGIN, FAMILY = 0, 2
SYNTHETIC = 1


def supcon_loss(features: Tensor, labels: Tensor | None = None, temperature: float = TEMPERATURE,
                base_temperature: float = TEMPERATURE) -> Tensor:
    """SupCon loss of `features` [B, V, D] with `labels` [B] (None: SimCLR, positives = own views).

    Mean over anchors that have a positive; 0 (still differentiable) when none has one.
    """
    _check(features, labels)
    total, count = _supcon_sum(features, labels, torch.arange(features.shape[0], device=features.device),
                               temperature, base_temperature)
    return total / count.clamp(min=1)


def imaginet_selfcon_loss(features: Tensor, labels: Tensor, temperature: float = TEMPERATURE,
                          base_temperature: float = TEMPERATURE) -> Tensor:
    """SupCon on the origin label over all samples + SupCon on the family label over synthetic ones.

    `labels` is [B, 4] (origin, content, family, generator). A batch without synthetic samples has a
    zero family term.
    """
    _check_imaginet(features, labels)
    local = torch.arange(features.shape[0], device=features.device)
    return _imaginet_loss(features, labels, local, temperature, base_temperature, scale=1)


def gathered_imaginet_selfcon_loss(features: Tensor, labels: Tensor, temperature: float = TEMPERATURE,
                                   base_temperature: float = TEMPERATURE) -> Tensor:
    """`imaginet_selfcon_loss` over the global batch of all ranks; this rank's share of it.

    Features and labels of all ranks are all-gathered (features differentiably), and only this rank's
    samples are used as anchors. With k ranks, N valid anchors in the global batch and ℓ_a the loss of
    anchor a, rank r returns L_r = k/N · Σ_{a on r} ℓ_a, so mean_r L_r = (1/N) Σ_a ℓ_a = L, the
    single-process loss on the global batch. Gradients: the gather's backward sums over ranks, so the
    features of rank r receive ∂(Σ_j L_j)/∂f_r = k · ∂L/∂f_r, and DDP's averaging (÷k) of the parameter
    gradients leaves exactly ∂L/∂θ. (This needs per-sample features independent of the rest of the
    batch, i.e. no train-mode BatchNorm coupling, for the equality to be exact.) To log L, average the
    returned value over ranks. Without a process group (or with one rank) this is imaginet_selfcon_loss.
    """
    _check_imaginet(features, labels)
    sizes = dist.all_gather_sizes(features.shape[0], features.device)
    all_features = dist.all_gather_with_grad(features, sizes)
    all_labels = dist.all_gather_with_grad(labels, sizes)
    start = sum(sizes[: dist.group_rank()])
    local = torch.arange(start, start + features.shape[0], device=features.device)
    return _imaginet_loss(all_features, all_labels, local, temperature, base_temperature,
                          scale=dist.group_size())


def _imaginet_loss(features: Tensor, labels: Tensor, local: Tensor, temperature: float,
                   base_temperature: float, scale: int) -> Tensor:
    """scale · (origin term + family term), each a sum over the `local` anchors ÷ the batch's anchor count."""
    total, count = _supcon_sum(features, labels[:, ORIGIN], local, temperature, base_temperature)
    loss = total / count.clamp(min=1)
    synthetic = labels[:, ORIGIN] == SYNTHETIC
    # Re-index the synthetic subset: position of each synthetic sample within it, and which are local.
    position = torch.cumsum(synthetic, 0) - 1
    local_synthetic = position[local][synthetic[local]]
    total, count = _supcon_sum(features[synthetic], labels[synthetic, FAMILY], local_synthetic,
                               temperature, base_temperature)
    return scale * (loss + total / count.clamp(min=1))


def _supcon_sum(features: Tensor, labels: Tensor | None, anchors: Tensor, temperature: float,
                base_temperature: float) -> tuple[Tensor, Tensor]:
    """(Σ of the per-anchor losses of samples `anchors`, all views; number of valid anchors in the batch).

    An anchor is valid when it has a positive. The count covers the whole batch (not only `anchors`),
    so that sums over disjoint anchor sets share one denominator.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        features = features.to(torch.promote_types(features.dtype, torch.float32))  # bf16/fp16 -> fp32
        n, views, dim = features.shape
        same = labels[:, None] == labels[None, :] if labels is not None else torch.eye(
            n, dtype=torch.bool, device=features.device)
        count = ((same.sum(1) * views - 1) > 0).sum() * views
        if n * views < 2:  # nothing to contrast with (and a softmax over an empty row)
            return features.sum() * 0.0, count
        # View-major rows, as in Khosla et al.: row v * n + i is view v of sample i.
        contrast = features.transpose(0, 1).reshape(views * n, dim)
        anchor = features[anchors].transpose(0, 1).reshape(views * len(anchors), dim)
        logits = anchor @ contrast.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        rows = torch.arange(len(logits), device=features.device)
        own_column = (torch.arange(views, device=features.device)[:, None] * n + anchors[None, :]).reshape(-1)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[rows, own_column] = True
        positive = same[anchors].repeat(views, views) & ~is_self
        log_prob = logits - logits.masked_fill(is_self, float("-inf")).logsumexp(dim=1, keepdim=True)
        n_positive = positive.sum(1)
        mean_log_prob_pos = (log_prob * positive).sum(1) / n_positive.clamp(min=1)
        per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
        return torch.where(n_positive > 0, per_anchor, 0.0).sum(), count


def _check(features: Tensor, labels: Tensor | None) -> None:
    if features.dim() != 3:
        raise ValueError(f"features must be [batch, views, dim], got shape {tuple(features.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != features.shape[0]):
        raise ValueError(f"labels must be [batch] = [{features.shape[0]}], got shape {tuple(labels.shape)}")


def _check_imaginet(features: Tensor, labels: Tensor) -> None:
    _check(features, None)
    if labels.dim() != 2 or labels.shape != (features.shape[0], 4):
        raise ValueError(f"labels must be [batch, 4] = [{features.shape[0]}, 4] (origin, content, family, "
                         f"generator), got shape {tuple(labels.shape)}")
