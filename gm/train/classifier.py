"""How recognisable are the generated samples? A small CNN trained on the training images scores
them per class (no reference counterpart; the reference only writes grids for a human to look at).

Training takes a few seconds on a CPU for 28x28 digits; the accuracy of the classifier on the
samples of each grid row (= each class) is reported in the run's final metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, classes)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 600,
                     batch_size: int = 128, seed: int = 0) -> SmallCNN:
    """Fit on uint8 (N, C, H, W) images (scaled to [-1, 1] like the diffusion data)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # leave the global RNG of the training run untouched
        torch.manual_seed(seed)
        model = SmallCNN(images.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x = images[idx].float() / 127.5 - 1
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def per_class_accuracy(model: SmallCNN, samples: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> dict[str, float]:
    """samples in [-1, 1] (N, C, H, W) with intended `labels` -> {"0": acc, ..., "mean": acc}."""
    pred = model(samples.float()).argmax(1)
    out = {}
    for c in range(num_classes):
        mask = labels == c
        out[str(c)] = round(float((pred[mask] == c).float().mean()), 4) if mask.any() else 0.0
    out["mean"] = round(float((pred == labels).float().mean()), 4)
    return out
