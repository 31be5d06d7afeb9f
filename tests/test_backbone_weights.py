"""--backbone-weights: a file that is no ResNet-50 state dict gets a one-line error naming it."""
import pytest
import torch
import torchvision

from tap_fast.models.backbone import resnet50_backbone


def test_a_file_that_is_not_a_torch_file_is_named(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match=r"cannot read backbone weights .*junk\.pth: not a PyTorch state dict"):
        resnet50_backbone(str(junk))


def test_resnet18_weights_are_refused_before_loading(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth is not a ResNet-50 state dict: shape mismatch"):
        resnet50_backbone(str(path))


def test_resnet50_weights_load(tmp_path):
    """Also from an older torchvision file without the BatchNorm counters, wrapped as DDP saves it."""
    reference = torchvision.models.resnet50(weights=None).state_dict()
    state = {f"module.{k}": v for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": state}, path)
    model = resnet50_backbone(str(path))
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])
