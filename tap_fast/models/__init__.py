from .backbone import SmallConvNet, build_backbone, resnet50_backbone
from .fewshot import FewShotModel, build_model, episode_loss, parameter_groups_to_clip
from .heads import OtamHead, TapHead, TsnHead, build_head

__all__ = [
    "SmallConvNet", "build_backbone", "resnet50_backbone", "FewShotModel", "build_model",
    "episode_loss", "parameter_groups_to_clip", "OtamHead", "TapHead", "TsnHead", "build_head",
]
