"""SupCon / ImagiNet SelfCon losses against a direct per-anchor computation, edge cases, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from imaginet_train import losses
from imaginet_train.losses import gathered_imaginet_selfcon_loss, imaginet_selfcon_loss, supcon_loss


def _features(batch: int, views: int = 2, dim: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g, dtype=torch.float64), dim=2)


def _reference(features, labels, temperature=0.07, base_temperature=0.07):
    """Khosla et al.'s definition written out anchor by anchor: mean over anchors that have a positive."""
    batch, views, _ = features.shape
    items = [(i, v) for v in range(views) for i in range(batch)]
    same = (lambda i, j: labels[i] == labels[j]) if labels is not None else (lambda i, j: i == j)
    per_anchor = []
    for i, v in items:
        others = [(j, w) for j, w in items if (j, w) != (i, v)]
        sim = {o: float(features[i, v] @ features[o[0], o[1]]) / temperature for o in others}
        log_denominator = math.log(sum(math.exp(s) for s in sim.values()))
        positives = [o for o in others if same(i, o[0])]
        if positives:
            mean_log_prob = sum(sim[o] - log_denominator for o in positives) / len(positives)
            per_anchor.append(-(temperature / base_temperature) * mean_log_prob)
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def _imaginet_labels(origin, family):
    origin = torch.tensor(origin)
    return torch.stack([origin, torch.zeros_like(origin), torch.tensor(family), torch.zeros_like(origin)], 1)


def test_supcon_matches_direct_computation():
    features = _features(6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    assert supcon_loss(features, labels).item() == pytest.approx(_reference(features, labels), rel=1e-10)


def test_supcon_without_labels_is_simclr_and_temperatures_scale():
    features = _features(5, views=3)
    assert supcon_loss(features).item() == pytest.approx(_reference(features, None), rel=1e-10)
    scaled = supcon_loss(features, None, temperature=0.5, base_temperature=0.1).item()
    assert scaled == pytest.approx(_reference(features, None, 0.5, 0.1), rel=1e-10)


def test_anchors_without_positive_are_left_out():
    features = _features(5, views=1)
    labels = torch.tensor([0, 0, 1, 2, 3])  # only samples 0 and 1 have a positive
    loss = supcon_loss(features, labels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(_reference(features, labels), rel=1e-10)


@pytest.mark.parametrize("batch", [1, 4])
def test_no_positive_at_all_gives_zero_and_finite_gradient(batch):
    features = _features(batch, views=1).requires_grad_()
    loss = supcon_loss(features, torch.arange(batch))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all()


def test_imaginet_loss_is_origin_term_plus_family_term_on_synthetic():
    features = _features(6)
    labels = _imaginet_labels([1, 0, 1, 1, 0, 1], [2, 0, 2, 3, 0, 1])
    synthetic = labels[:, 0] == 1
    expected = (_reference(features, labels[:, 0])
                + _reference(features[synthetic], labels[synthetic, 2]))
    assert imaginet_selfcon_loss(features, labels).item() == pytest.approx(expected, rel=1e-10)


def test_imaginet_loss_without_synthetic_samples():
    features = _features(4).requires_grad_()
    labels = _imaginet_labels([0, 0, 0, 0], [0, 0, 0, 0])
    loss = imaginet_selfcon_loss(features, labels)
    loss.backward()
    assert loss.item() == pytest.approx(_reference(features.detach(), labels[:, 0]), rel=1e-10)
    assert torch.isfinite(features.grad).all()


def test_gradcheck():
    features = _features(5, dim=3).requires_grad_()
    labels = _imaginet_labels([1, 0, 1, 1, 0], [1, 0, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels[:, 2]), (features,))
    assert torch.autograd.gradcheck(lambda f: imaginet_selfcon_loss(f, labels), (features,))


def test_anchor_shares_recombine_to_the_global_loss_and_gradient():
    """The DDP split without processes: k shares over disjoint anchor sets, scaled by k, average to L."""
    features = _features(7).requires_grad_()
    labels = _imaginet_labels([1, 0, 1, 1, 0, 0, 0], [2, 0, 2, 3, 0, 0, 0])
    full = imaginet_selfcon_loss(features, labels)
    (grad_full,) = torch.autograd.grad(full, features)
    parts = [torch.arange(0, 4), torch.arange(4, 7)]  # the second part has no synthetic sample
    shares = [losses._imaginet_loss(features, labels, part, 0.07, 0.07, scale=len(parts)) for part in parts]
    mean = sum(shares) / len(parts)
    (grad_mean,) = torch.autograd.grad(mean, features)
    assert mean.item() == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(grad_mean, grad_full, rtol=1e-10, atol=1e-12)


def test_gathered_loss_without_process_group_is_the_plain_loss():
    features = _features(4)
    labels = _imaginet_labels([1, 0, 1, 0], [1, 0, 2, 0])
    assert gathered_imaginet_selfcon_loss(features, labels).item() == pytest.approx(
        imaginet_selfcon_loss(features, labels).item(), rel=1e-12)


def test_low_precision_features_are_computed_in_float32():
    features = _features(6).float()
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = supcon_loss(features.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(supcon_loss(features, labels).item(), rel=2e-2)


@pytest.mark.parametrize("shape, labels, match", [
    ((4, 5), None, r"features must be \[batch, views, dim\]"),
    ((4, 2, 5), torch.zeros(3), r"labels must be \[batch\] = \[4\]"),
])
def test_supcon_rejects_bad_shapes(shape, labels, match):
    with pytest.raises(ValueError, match=match):
        supcon_loss(torch.randn(shape), labels)


def test_imaginet_loss_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be \[batch, 4\] = \[4, 4\]"):
        imaginet_selfcon_loss(torch.randn(4, 2, 5), torch.zeros(4, 3, dtype=torch.int64))
