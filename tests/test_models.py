"""The few-shot model: shapes, class scores as the mean over support videos, heads, bad input."""
import pytest
import torch

from tap_fast.config import preset
from tap_fast.models import FewShotModel, SmallConvNet, build_model, episode_loss, parameter_groups_to_clip
from tap_fast.models.heads import OtamHead, TapHead, TsnHead


class FixedSimilarity(torch.nn.Module):
    """A head returning a given [NQ, NS] matrix, to pin how the model turns it into class scores."""

    def __init__(self, similarity):
        super().__init__()
        self.similarity = similarity

    def forward(self, query, support):
        return self.similarity


def test_class_score_is_mean_over_the_class_support_videos():
    way, shot, nq = 3, 2, 4
    similarity = torch.randn(nq, way * shot, dtype=torch.float64)
    model = FewShotModel(torch.nn.Flatten(), FixedSimilarity(similarity))
    clips = torch.zeros(way * shot + nq, 2, 3, 2, 2)
    logits = model(clips[: way * shot], clips[way * shot:], way)
    expected = torch.stack([similarity[:, c * shot:(c + 1) * shot].mean(1) for c in range(way)], 1)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("head", ["tap", "otam", "tsn"])
def test_every_head_trains_one_step(head):
    torch.manual_seed(0)
    config = preset("synthetic").replace(head=head, feature_dim=16, lstm_hidden=8, mlp_hidden=(12, 6, 4))
    model = build_model(config)
    way, shot, frames = 3, 2, 5
    support = torch.randn(way * shot, frames, 3, 56, 56)
    query = torch.randn(way, frames, 3, 56, 56)
    logits = model(support, query, way)
    assert logits.shape == (way, way) and torch.isfinite(logits).all()
    loss = episode_loss(logits, torch.arange(way))
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_tap_head_is_order_sensitive_and_tsn_is_not():
    torch.manual_seed(0)
    query, support = torch.randn(1, 6, 10), torch.randn(2, 6, 10)
    reversed_support = support.flip(1)
    tsn = TsnHead()
    torch.testing.assert_close(tsn(query, support), tsn(query, reversed_support))
    tap = TapHead(10, 8, (12, 6, 4))
    assert not torch.allclose(tap(query, support), tap(query, reversed_support))


def test_otam_prefers_the_same_order():
    torch.manual_seed(0)
    video = torch.randn(1, 8, 32)
    candidates = torch.cat([video, video.flip(1)])
    scores = OtamHead(gamma=0.1)(video, candidates)
    assert scores[0, 0] > scores[0, 1]


def test_otam_alignment_map_follows_the_soft_path():
    """OTAM's alignment map is d distance / d cost: the diagonal for a clip against itself, a row
    sum of about one cell per query frame, values in [0, 1], and no gradient kept."""
    torch.manual_seed(0)
    video = torch.randn(1, 8, 32)
    candidates = torch.cat([video, torch.randn(1, 8, 32)])
    with torch.no_grad():  # as the plot calls it: the map must not depend on grad mode
        align, cos = OtamHead(gamma=0.01).alignment_maps(video, candidates)
    assert align.shape == cos.shape == (1, 2, 8, 8) and not align.requires_grad
    assert align[0, 0].argmax(-1).tolist() == list(range(8))
    assert 0 <= align.min() and align.max() <= 1 + 1e-5
    assert align[0, 0].sum().item() == pytest.approx(8, abs=1e-3)


def test_clipped_parameters_are_backbone_and_bilstm_only():
    model = build_model(preset("synthetic"))
    clipped = {id(p) for p in parameter_groups_to_clip(model)}
    assert all(id(p) in clipped for p in model.backbone.parameters())
    assert all(id(p) in clipped for p in model.head.temporal.parameters())
    assert not any(id(p) in clipped for p in model.head.alignment.parameters())


def test_small_backbone_keeps_position():
    # the synthetic classes differ by where a shape is: the same blob left vs right must differ
    net = SmallConvNet(16).eval()
    left, right = torch.zeros(1, 3, 56, 56), torch.zeros(1, 3, 56, 56)
    left[..., 20:30, 2:12] = 1
    right[..., 20:30, 44:54] = 1
    assert not torch.allclose(net(left), net(right), atol=1e-4)


def test_bad_clip_shape_is_named():
    model = build_model(preset("synthetic"))
    with pytest.raises(ValueError, match="clips must be"):
        model(torch.zeros(5, 8, 56, 56), torch.zeros(5, 8, 56, 56), 5)


@pytest.mark.parametrize("head", ["tsn", "otam"])
def test_support_that_does_not_split_into_classes_is_named(head):
    """No support videos used to pass the `% way` check and give NaN logits (mean over nothing);
    logits_from_features (evaluation's path) raised a bare view error, or ZeroDivisionError for way 0."""
    model = FewShotModel(torch.nn.Flatten(), build_model(preset("synthetic").replace(head=head)).head)
    with pytest.raises(ValueError, match="0 support videos do not split into 5 classes"):
        model(torch.zeros(0, 4, 3, 2, 2), torch.zeros(2, 4, 3, 2, 2), 5)
    support, query = torch.randn(6, 4, 12), torch.randn(2, 4, 12)
    with pytest.raises(ValueError, match="6 support videos do not split into 4 classes"):
        model.logits_from_features(support, query, 4)
    with pytest.raises(ValueError, match="way must be an int >= 1"):
        model.logits_from_features(support, query, 0)
    assert model.logits_from_features(support, query, 3).shape == (2, 3)


def test_missing_backbone_weights_file_is_named(tmp_path):
    config = preset("synthetic").replace(backbone="resnet50", backbone_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(config)


def test_resnet50_loads_a_local_state_dict(tmp_path):
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(preset("ssv2-small").replace(backbone_weights=str(path)))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.backbone.feature_dim == 2048
