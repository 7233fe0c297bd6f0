"""Built-in architectures: a registry of builders (``@register``, ``create``).

* ``resnet18``, ``vgg16``: the CIFAR networks of the papers' experiments, in the layout of
  kuangliu/pytorch-cifar ("Softmax is k-means", Sec. 5), so its state dicts load as they are.
  Skip connections sum through an explicit :class:`Sum` module and ReLUs are modules, so
  LRP rules (NEON, Sec. IV) can be attached to every operation.
* ``smallcnn``: the demo CNN (any input size, a few hundred KB).
* ``mlp``: a small tabular classifier (wine).
* ``torchvision:<name>``: any torchvision classifier, built without weights.
* ``timm:<name>``: any timm model (the optional ``timm`` extra), built without weights;
  nothing is downloaded, the weights come from the checkpoint file.
* ``FILE.py:Class`` / ``package.module:Class``: a user's own class (``kmtools.models.usercode``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kmtools.errors import ConfigError


@dataclass
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ArchSpec] = {}


def register(
    name: str, input_shape: tuple[int, ...], description: str, **defaults: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ArchSpec(name, fn, input_shape, description, defaults)
        return fn

    return deco


def names() -> list[str]:
    return [*sorted(_REGISTRY), "torchvision:<name>", "timm:<name>", "FILE.py:Class"]


def spec(name: str) -> ArchSpec:
    if name.startswith("torchvision:"):
        return ArchSpec(name, _torchvision_builder(name.split(":", 1)[1]), (3, 224, 224), "torchvision model")
    if name.startswith("timm:"):
        return ArchSpec(name, _timm_builder(name.split(":", 1)[1]), (3, 224, 224), "timm model")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown architecture {name!r}: choose one of {', '.join(names())}")
    return _REGISTRY[name]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name``; ``None`` kwargs are dropped so defaults apply (timm-style)."""
    s = spec(name)
    args = {**s.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    try:
        return s.builder(**args)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r} does not accept {sorted(kwargs)}: {exc}") from exc


def default_input_shape(name: str, in_channels: int | None = None) -> tuple[int, ...]:
    shape = spec(name).input_shape
    if in_channels is not None and len(shape) == 3:
        return (in_channels, *shape[1:])
    return shape


class Sum(nn.Module):
    """Sum of a stacked input along the last axis: an explicit skip-connection node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1)


class BasicBlock(nn.Module):
    """kuangliu/pytorch-cifar ``BasicBlock`` (same parameter names)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.add = Sum()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.add(torch.stack([out, self.shortcut(x)], dim=-1))
        return self.relu2(out)


class ResNet(nn.Module):
    """kuangliu/pytorch-cifar ResNet; ``linear`` is the head."""

    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = width
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(w, num_blocks[0], 1)
        self.layer2 = self._make_layer(2 * w, num_blocks[1], 2)
        self.layer3 = self._make_layer(4 * w, num_blocks[2], 2)
        self.layer4 = self._make_layer(8 * w, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(8 * w, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


_VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """kuangliu/pytorch-cifar VGG16; ``classifier`` is the head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        layers.append(nn.AvgPool2d(1, 1))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class SmallCNN(nn.Module):
    """The demo CNN: three conv layers, a 64-d penultimate layer, ``fc`` head (~30k params)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 16, feature_dim: int = 64, pool: int = 2
    ) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.fc1 = nn.Linear(4 * w * pool * pool, feature_dim)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.fc1(self.features(x))))


class MLP(nn.Module):
    """Small tabular classifier; ``fc`` is the head."""

    def __init__(self, num_classes: int = 3, in_features: int = 13, hidden: int = 64, feature_dim: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim), nn.ReLU()
        )
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x.flatten(1)))


@register("resnet18", (3, 32, 32), "CIFAR ResNet18 (kuangliu/pytorch-cifar layout)")
def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    """``width`` < 64 gives the compact variants (the CIFAR-10 reference model uses 16)."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels, width)


@register("resnet10", (3, 32, 32), "compact CIFAR ResNet: one BasicBlock per stage (kuangliu layout)")
def resnet10(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return ResNet([1, 1, 1, 1], num_classes, in_channels, width)


@register("vgg16", (3, 32, 32), "CIFAR VGG16 with BatchNorm (kuangliu/pytorch-cifar layout)")
def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return VGG(num_classes, in_channels)


@register("smallcnn", (1, 8, 8), "small CNN of the demo (any image size)")
def smallcnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 16, feature_dim: int = 64, pool: int = 2
) -> nn.Module:
    """``pool`` is the side of the pooled map before ``fc1`` (the Fashion-MNIST reference uses 7)."""
    return SmallCNN(num_classes, in_channels, width, feature_dim, pool)


@register("mlp", (13,), "small MLP for tabular data")
def mlp(num_classes: int = 3, in_features: int = 13, hidden: int = 64, feature_dim: int = 32) -> nn.Module:
    return MLP(num_classes, in_features, hidden, feature_dim)


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_channels: int | None = None) -> nn.Module:
        import torchvision

        if in_channels not in (None, 3):
            raise ConfigError("torchvision architectures take 3-channel inputs")
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"unknown torchvision model {name!r}: see torchvision.models.list_models()"
            ) from exc

    return build


#: The one-line fix when ``timm:`` is asked for without timm installed.
TIMM_HINT = "pip install 'kmtools[timm]' (or pip install timm)"


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int | None = None, in_channels: int | None = None, **kwargs: Any) -> nn.Module:
        try:
            import timm
        except ImportError as exc:
            raise ConfigError(f"--arch timm:{name} needs the timm package: {TIMM_HINT}") from exc
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r}: see timm.list_models('{name[:4]}*')")
        args: dict[str, Any] = {k: v for k, v in {"num_classes": num_classes, "in_chans": in_channels}.items()
                                if v is not None}
        # pretrained=False: timm never downloads; the weights come from the checkpoint file
        net: nn.Module = timm.create_model(name, pretrained=False, **args, **kwargs)
        return net

    return build


def input_shape_of(name: str, net: nn.Module | None = None, in_channels: int | None = None) -> tuple[int, ...]:
    """Default input shape; a timm model's comes from its pretrained config."""
    if name.startswith("timm:") and net is not None:
        size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size")
        if size and len(size) == 3:
            return (in_channels or int(size[0]), int(size[1]), int(size[2]))
    return default_input_shape(name, in_channels)
