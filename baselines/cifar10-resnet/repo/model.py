"""The network. Editable: proposals may change the architecture.

An airbench94-style residual-free ResNet-ish net for CIFAR-10 (after Keller Jordan's airbench):
a 2x2 patch-whitening stem initialised from the training data, three conv groups
(conv-pool-BN-GELU-conv-BN-GELU) of widths 64/256/256, global max-pool, a scaled linear head.
In eval mode the forward pass averages the logits of the image and its mirror (test-time
augmentation), so the predict harness needs no special casing.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False  # scale fixed at 1: only the shift is learned


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])  # identity-initialise the first cin filters


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout)
        self.conv2, self.norm2, self.act = Conv(cout, cout), BatchNorm(cout), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths=(64, 256, 256)):
        super().__init__()
        whiten_width = 2 * in_channels * 2 * 2
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255)
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=2, padding=0, bias=True)
        self.layers = nn.Sequential(nn.GELU(), ConvGroup(whiten_width, widths[0]), ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = 1 / 9

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    @torch.no_grad()
    def init_whiten(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the ZCA-like whitening of 2x2 patches of (a sample of) the training images."""
        patches = self.normalise(x).unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, x.size(1), 2, 2)
        flat = patches.reshape(patches.size(0), -1).double()
        cov = (flat.T @ flat) / flat.size(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).float()
        filters = filters.view(-1, x.size(1), 2, 2)
        self.whiten.weight.copy_(torch.cat((filters, -filters)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.whiten(self.normalise(x)))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.logits(x)
        return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))  # mirror test-time augmentation


def build_model(input_shape: tuple, num_classes: int) -> nn.Module:
    """input_shape is (channels, height, width); inputs are uint8 images."""
    net = AirNet(input_shape[0], num_classes)
    if torch.cuda.is_available():
        net = net.to(memory_format=torch.channels_last)
    return net
