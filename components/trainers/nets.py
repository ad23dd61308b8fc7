"""The torch modules behind the ``mlp`` and ``cnn`` estimators.

Both take flat float32 feature rows (a cnn also takes ready-shaped ``(N, C, H, W)``
batches) and return class logits, or regression values in the target's units. Everything
needed to rebuild one is its :func:`build_net` config, which ``trainer.json`` records; the
weights (and, for regression, the target's mean and scale, as buffers) live in the
state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _Net(nn.Module):
    """Hidden layers (``body``) then the output layer, kept in float32 under autocast."""

    def __init__(self, body: nn.Module, width: int, n_outputs: int, regression: bool) -> None:
        super().__init__()
        self.body = body
        self.out = nn.Linear(width, n_outputs)
        self.regression = regression
        if regression:
            self.register_buffer("target_mean", torch.zeros(1))
            self.register_buffer("target_std", torch.ones(1))

    def set_target_scale(self, mean: float, std: float) -> None:
        self.target_mean.fill_(mean)
        self.target_std.fill_(std)

    def standardize(self, values: torch.Tensor) -> torch.Tensor:
        """Targets (or predictions) in units of the training targets' standard deviation."""
        return (values - self.target_mean) / self.target_std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        # The last layer runs in float32 even under bf16 autocast: logits and regression
        # values keep full precision, at the cost of one small matmul.
        with torch.autocast(device_type=h.device.type, enabled=False):
            z = self.out(h.float())
        if self.regression:
            return (z * self.target_std + self.target_mean).squeeze(-1)
        return z


def _dense(width: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    return nn.Sequential(*layers), width


class MLP(_Net):
    """Linear-ReLU(-Dropout) blocks, one per entry of ``hidden``, then the output layer."""

    def __init__(self, n_features: int, hidden: list[int], n_outputs: int, dropout: float,
                 regression: bool) -> None:
        body, width = _dense(n_features, hidden, dropout)
        super().__init__(body, width, n_outputs, regression)


class CNN(_Net):
    """conv3x3-ReLU-maxpool2, twice, then dense hidden[0], dense hidden[1] and the output.

    The flattened size follows the input: 8x8 digits pool to 2x2, 32x32 CIFAR images to 8x8
    (max-pooling floors odd sizes).
    """

    def __init__(self, image_shape: list[int], channels: list[int], hidden: list[int],
                 n_outputs: int, dropout: float, regression: bool) -> None:
        c, h, w = image_shape
        c1, c2 = channels
        conv = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        dense, width = _dense(c2 * (h // 4) * (w // 4), hidden, dropout)
        super().__init__(nn.Sequential(conv, dense), width, n_outputs, regression)
        self.image_shape = tuple(image_shape)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat pixel rows, (channel, row, column) ordered
            x = x.view(x.shape[0], *self.image_shape)
        return self.body(x)


def build_net(config: dict[str, Any]) -> _Net:
    """A fresh module from its config (see ``TorchTrainer._architecture``)."""
    regression = config["task"] == "regression"
    if config["estimator"] == "cnn":
        return CNN(config["image_shape"], config["channels"], config["hidden"],
                   config["n_outputs"], config["dropout"], regression)
    return MLP(config["n_features"], config["hidden"], config["n_outputs"], config["dropout"],
               regression)
