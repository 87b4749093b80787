"""`tiny_cnn`: a seeded two-layer conv net, as a subject source of its own."""
from __future__ import annotations

from torch import nn

from rig.subjects import SubjectRequest, from_module, seeded


class TinyCNN(nn.Module):
    input_size = 64

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 5, stride=2, padding=2)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, 3)
        self.class_names = ["bar", "blank", "other"]

    def forward(self, x):
        return self.head(self.pool(self.relu(self.conv2(self.relu(self.conv1(x))))).flatten(1))


def build(req: SubjectRequest):
    """The builder `rig.subjects.load_subject(source="tiny_cnn", ...)` calls."""
    with seeded(req.seed):
        model = TinyCNN(**req.options)
    return from_module(req, model, label="tiny_cnn")
