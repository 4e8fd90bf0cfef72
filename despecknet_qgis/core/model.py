"""The deSpeckNet network (Mullissa et al., 2022).

Two identical fully convolutional branches with separate weights: FCN_clean estimates
the reflectivity X, FCN_noise the speckle N, and the noisy input is reconstructed as
Y_hat = X_hat * N_hat. Each branch has 17 blocks: Conv3x3+ReLU (1->64), fifteen times
Conv3x3+BatchNorm+ReLU (64->64), Conv3x3 (64->1); no pooling, same-size feature maps.

The branches work in the normalised log-intensity domain of `domain.py`: a branch's
output z maps to intensity as exp(LOG_SCALE * z + offset), so both estimates are
positive whatever the weights, and the product X_hat * N_hat is the sum of the two
branch outputs. See models/MODEL_CARD.md for why.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .model_info import N_BLOCKS, RECEPTIVE_FIELD, RECEPTIVE_RADIUS, WIDTH  # noqa: F401 - re-exported


class Branch(nn.Sequential):
    """One 17-block fully convolutional branch (FCN_clean or FCN_noise)."""

    def __init__(self, width: int = WIDTH, blocks: int = N_BLOCKS):
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(blocks - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        super().__init__(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The paper's "improved Xavier": N(0, 2 / (k*k*max(fan_in, fan_out))).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / (k * max(m.in_channels, m.out_channels)))
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class DeSpeckNet(nn.Module):
    """Both branches; forward returns (clean, noise) in the normalised log domain.

    `reconstruction(clean, noise)` is log(X_hat * N_hat) in the same domain.
    """

    def __init__(self, width: int = WIDTH, blocks: int = N_BLOCKS):
        super().__init__()
        self.clean = Branch(width, blocks)
        self.noise = Branch(width, blocks)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clean(y), self.noise(y)

    @staticmethod
    def reconstruction(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return clean + noise


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
