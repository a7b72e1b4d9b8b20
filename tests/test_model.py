"""Model shapes and sizes, pretrained loading from a local file, classifier heads, checkpoints."""
import os

import pytest
import torch
import torchvision

from imaginet_train.checkpoint import build_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from imaginet_train.model import FamilyHead, OriginHead, PretrainedReport, build_model, load_pretrained


@pytest.fixture
def no_download(monkeypatch):
    """Fail any attempt to fetch weights: tests never touch the internet."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)


@pytest.fixture(scope="module")
def nodown():
    return build_model("resnet50nodown").eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet50nodown_has_the_reference_parameter_count(no_download, nodown):
    assert _count(nodown) == 33_475_904
    assert _count(nodown.encoder) == 23_508_032  # torchvision's resnet50 without fc


def test_stride_one_stem_keeps_resolution(no_download, nodown):
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert nodown.encoder.stem(x).shape == (1, 64, 20, 20)
        assert build_model("resnet50").encoder.stem(x).shape == (1, 64, 5, 5)


def test_resnet50nodown_outputs(nodown):
    with torch.no_grad():
        sub, backbone = nodown(torch.randn(1, 3, 8, 8))
        encoded = nodown.encode(torch.randn(1, 3, 8, 8))
    assert sub.shape == backbone.shape == (1, 128) and encoded.shape == (1, 2048) == (1, nodown.out_dim)
    torch.testing.assert_close(torch.linalg.vector_norm(sub, dim=1), torch.ones(1))


def test_small_model_outputs_normalized_features():
    model = build_model("small", feat_dim=32)
    sub, backbone = model(torch.randn(4, 3, 96, 96))
    assert sub.shape == backbone.shape == (4, 32)
    torch.testing.assert_close(torch.linalg.vector_norm(backbone, dim=1), torch.ones(4))
    assert model.encode(torch.randn(2, 3, 96, 96)).shape == (2, model.out_dim)
    assert model.sub_fc.in_features < model.sub_fc.out_features == model.out_dim


def test_pretrained_state_dict_round_trip(tmp_path, no_download):
    torch.manual_seed(3)
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet50nodown")
    report = load_pretrained(model.encoder, path)
    assert report == PretrainedReport(loaded=len(reference.state_dict()) - 2,
                                      ignored=("fc.bias", "fc.weight"))
    loaded = model.encoder.state_dict()
    for name, value in reference.state_dict().items():
        if not name.startswith("fc."):
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


def test_imagenet_weights_only_on_explicit_request(monkeypatch):
    torch.manual_seed(4)
    state = torchvision.models.resnet50(weights=None).state_dict()
    requested = []

    def fake_download(weights, *args, **kwargs):
        requested.append(weights)
        return state
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_download)
    model = build_model("resnet50", pretrained="imagenet")
    assert requested == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2]  # the authors' weights
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_pretrained_mismatch_names_the_keys(tmp_path):
    state = torchvision.models.resnet50(weights=None).state_dict()
    del state["layer3.1.conv2.weight"]
    state["layer5.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        build_model("resnet50", pretrained=str(tmp_path / "bad.pth"))
    message = str(err.value)
    assert "1 missing keys: layer3.1.conv2.weight" in message
    assert "1 unexpected keys: layer5.weight" in message
    assert "bn1.weight (3,) != (64,)" in message


def test_build_model_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'resnet18'"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="'small' has no pretrained weights"):
        build_model("small", pretrained="imagenet")
    with pytest.raises(ValueError, match="feat_dim must be a positive integer"):
        build_model("small", feat_dim=0)
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        build_model("resnet50", pretrained=str(tmp_path / "missing.pth"))


def test_classifier_heads():
    origin, family = OriginHead(64).eval(), FamilyHead(64)
    x = torch.randn(5, 64)
    assert origin(x).shape == (5,)
    assert family(x).shape == (5, 4)
    torch.testing.assert_close(family(3 * x), family(x))  # L2-normalized input
    assert [type(m).__name__ for m in origin] == ["BatchNorm1d", "Linear", "ReLU", "Dropout", "Linear"]
    assert origin[3].p == 0.2 and origin[1].out_features == family[0].out_features == 1024


# --- checkpoints --------------------------------------------------------------------------------------

def _training_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=2),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)], milestones=[2])
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    optimizer.zero_grad()
    model(torch.ones(3, 4)).square().sum().backward()
    optimizer.step()
    scheduler.step()


def test_checkpoint_round_trip_continues_exactly(tmp_path):
    model, optimizer, scheduler = _training_state()
    for _ in range(3):
        _step(model, optimizer, scheduler)
    state = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, epoch=1, step=3,
                             loader={"epoch": 1, "batch": 3}, config={"arch": "small", "lr": 0.1},
                             extra={"rng": torch.get_rng_state()})
    path = save_checkpoint(state, tmp_path / "ckpt" / "last.pt")
    assert os.listdir(path.parent) == ["last.pt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert (loaded["epoch"], loaded["step"], loaded["loader"], loaded["config"]) == (
        1, 3, {"epoch": 1, "batch": 3}, {"arch": "small", "lr": 0.1})
    resumed = _training_state()
    restore_checkpoint(loaded, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2])
    _step(model, optimizer, scheduler)
    _step(*resumed)
    for a, b in zip(model.parameters(), resumed[0].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert scheduler.get_last_lr() == resumed[2].get_last_lr()


def test_checkpoint_rejects_objects_and_keeps_the_previous_file(tmp_path):
    model, optimizer, scheduler = _training_state()
    good = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, epoch=0, step=0,
                            loader={}, config={})
    path = save_checkpoint(good, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"checkpoint\['extra'\]\[0\] is a function"):
        save_checkpoint({**good, "extra": [lambda: 0]}, path)
    with pytest.raises(ValueError, match="config must be a JSON-able dict"):
        build_checkpoint(model=model, optimizer=optimizer, scheduler=None, epoch=0, step=0, loader={},
                         config={"path": tmp_path})
    assert load_checkpoint(path)["epoch"] == 0 and os.listdir(tmp_path) == ["last.pt"]


def test_load_checkpoint_is_weights_only_and_checks_keys(tmp_path):
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing format_version, optimizer"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({"model": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")  # a pickled module object
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "pickled.pt")
