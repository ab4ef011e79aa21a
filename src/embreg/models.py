"""Backbone (torchvision ResNet) with layer taps, and the VICReg-style projector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from embreg.config import BackboneConfig, ObjectiveConfig
from embreg.registry import Registry, check_choice

BACKBONES: Registry = Registry("backbone")
TAP_NAMES = ("layer1", "layer2", "layer3", "layer4")
STEMS = ("imagenet", "cifar")  # see Backbone


@BACKBONES.register("resnet18")
def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


@BACKBONES.register("resnet50")
def _resnet50() -> nn.Module:
    return torchvision.models.resnet50(weights=None)


@dataclass
class Features:
    """One forward pass. ``taps[name]`` is the pooled (b, c) output of each ResNet stage;
    ``taps["layer4"]`` is the same tensor as ``backbone``."""

    backbone: torch.Tensor  # (b, feat_dim)
    taps: dict[str, torch.Tensor]


class Backbone(nn.Module):
    """A torchvision ResNet with its stem adapted to the input and its fc removed."""

    def __init__(self, cfg: BackboneConfig, in_channels: int) -> None:
        super().__init__()
        net = BACKBONES.get(cfg.name)()
        if cfg.stem == "imagenet":
            # same geometry as torchvision's stem, for `in_channels` inputs
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif cfg.stem == "cifar":
            # small images: keep resolution (3x3/1, no max-pool), as in SimCLR's CIFAR recipe
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            check_choice("stem", cfg.stem, STEMS)  # raises: the stem is neither
        self.feat_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.tap_dims = {name: _stage_width(getattr(net, name)) for name in TAP_NAMES}

    def forward_features(self, x: torch.Tensor, taps: bool = False) -> Features:
        """(b, c, h, w) -> Features; pooled stage outputs only when ``taps``."""
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        pooled: dict[str, torch.Tensor] = {}
        for name in TAP_NAMES:
            h = getattr(n, name)(h)
            if taps or name == "layer4":
                pooled[name] = torch.flatten(n.avgpool(h), 1)
        return Features(backbone=pooled["layer4"], taps=pooled if taps else {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).backbone


def _stage_width(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = getattr(last, "conv3", None) or last.conv2
    return conv.out_channels


def projector(in_dim: int, dims: list[int]) -> nn.Sequential:
    """VICReg's expander: (Linear-BN-ReLU) x (n-1), then a plain Linear. (b, in) -> (b, dims[-1])"""
    if not dims:
        return nn.Sequential()
    layers: list[nn.Module] = []
    prev = in_dim
    for width in dims[:-1]:
        layers += [nn.Linear(prev, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        prev = width
    layers.append(nn.Linear(prev, dims[-1], bias=False))
    return nn.Sequential(*layers)


class EmbeddingModel(nn.Module):
    """Backbone + projector; ``head`` is a linear classifier used by the supervised baseline."""

    def __init__(self, cfg: BackboneConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = Backbone(cfg, in_channels)
        self.projector = projector(self.backbone.feat_dim, list(cfg.projector))
        self.embed_dim = cfg.projector[-1] if cfg.projector else self.backbone.feat_dim
        self.head = nn.Linear(self.backbone.feat_dim, num_classes)
        self.channels_last = cfg.channels_last
        # the modules some loss terms put on top of the projector (SimSiam's predictor), by term:
        # embreg.terms.Term.head, added by ``add_term_heads`` (none for most arms)
        self.heads = nn.ModuleDict()

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor, taps: bool = False) -> tuple[torch.Tensor, Features]:
        """(b, c, h, w) -> projector output (b, embed_dim) and the backbone features."""
        feats = self.backbone.forward_features(self.prepare_input(x), taps=taps)
        return self.projector(feats.backbone), feats


def build_model(cfg: BackboneConfig, in_channels: int, num_classes: int,
                objective: ObjectiveConfig | None = None) -> EmbeddingModel:
    """The arm's network: backbone + projector (+ classifier head), and the heads of the loss
    terms ``objective`` trains with (drawn after the rest, from the same global generator)."""
    model = EmbeddingModel(cfg, in_channels, num_classes)
    if objective is not None:
        add_term_heads(model, objective)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def add_term_heads(model: EmbeddingModel, objective: ObjectiveConfig) -> None:
    """Build ``model.heads[term]`` for every trained term that declares a head (embreg.terms)."""
    from embreg import terms as T

    for name in T.ordered(objective.trained()):
        t = T.get(name)
        if t.head is not None:
            model.heads[name] = t.head(model.embed_dim, **t.resolved(objective.params.get(name)))
