"""Networks for `python -m inna_fused train`.

The paper trains a Network in Network (Lin, Chen, Yan 2014): "mlpconv" blocks (a spatial
convolution followed by 1×1 convolutions) and global average pooling instead of dense layers.
`network_in_network` is that model (about 1e6 parameters on CIFAR-10). For the 8×8 digits,
`small_cnn` is a plain small CNN (a shrunk NIN with global average pooling stalled for minutes on
the 2.30 plateau with SGD-type steps, which would say more about the model than the optimizers).
"""
from __future__ import annotations

from torch import nn


def _mlpconv(in_channels: int, widths: tuple[int, ...], kernel_size: int) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, widths[0], kernel_size, padding=kernel_size // 2),
              nn.ReLU(inplace=True)]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv2d(a, b, 1), nn.ReLU(inplace=True)]
    return layers


def network_in_network(in_channels: int, num_classes: int, dropout: float = 0.5) -> nn.Module:
    """NIN as in Lin et al. (CIFAR variant): 3 mlpconv blocks, ≈ 0.97e6 params for 10 classes."""
    return nn.Sequential(
        *_mlpconv(in_channels, (192, 160, 96), 5),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(dropout),
        *_mlpconv(96, (192, 192, 192), 5),
        nn.AvgPool2d(3, stride=2, padding=1), nn.Dropout(dropout),
        *_mlpconv(192, (192, 192), 3),
        nn.Conv2d(192, num_classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


def small_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Three 3×3 convolutions and two dense layers for 8×8 images (≈ 45e3 params)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(inplace=True),
        nn.Linear(64, num_classes))


def build(dataset: str, in_channels: int, num_classes: int) -> nn.Module:
    if dataset == "digits":
        return small_cnn(in_channels, num_classes)
    return network_in_network(in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
