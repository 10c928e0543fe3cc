"""The network. Editable: proposals may change the architecture and the input normalisation."""
import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    """Two 3x3 conv layers with max-pooling, then a linear classifier: a textbook small CNN."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * (height // 4) * (width // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0  # uint8 pixels -> [0, 1]
        return self.classifier(self.features(x).flatten(1))


def build_model(input_shape: tuple, num_classes: int) -> nn.Module:
    """input_shape is (channels, height, width) of one image."""
    channels, height, width = input_shape
    return SmallCNN(channels, height, width, num_classes)
