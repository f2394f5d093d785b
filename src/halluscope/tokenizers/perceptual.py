"""An LPIPS-style perceptual distance on VGG16 features, built without torchvision and used
only when the user points at local weight files (nothing is downloaded).

Weights: a VGG16 state dict with torchvision's key names (`features.<i>.weight/bias`), and
optionally LPIPS's linear heads (`lin<k>.model.1.weight`, as in the `vgg.pth` of lpips or
taming). Several files may be given; their keys are merged. Without heads every channel
weighs the same (a plain normalized VGG feature distance).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from halluscope.errors import UserError
from halluscope.io import find_state_dict, load_untrusted_checkpoint

# VGG16's conv widths, "M" = max-pool; LPIPS reads the ReLU after the last conv of each stage.
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# LPIPS input scaling (ImageNet statistics expressed for inputs in [-1, 1]).
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


class Perceptual(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c, self.taps = [], 3, []
        for v in VGG16:
            if v == "M":
                self.taps.append(len(layers) - 1)  # the ReLU just before the pool
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)  # indices match torchvision's vgg16().features
        widths = [v for i, v in enumerate(VGG16) if v != "M" and (i + 1 == len(VGG16) or VGG16[i + 1] == "M")]
        self.heads = nn.ParameterList([nn.Parameter(torch.full((1, w, 1, 1), 1.0 / w)) for w in widths])
        self.register_buffer("shift", SHIFT.clone(), persistent=False)
        self.register_buffer("scale", SCALE.clone(), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, paths: list[str | os.PathLike]) -> "Perceptual":
        model = cls()
        merged: dict[str, torch.Tensor] = {}
        for path in paths:
            sd = load_file(str(path)) if str(path).endswith(".safetensors") else find_state_dict(
                load_untrusted_checkpoint(path), path)
            merged.update(sd)
        # LPIPS heads are 1x1 convs named lin<k>.model.1.weight; map them onto our heads.
        renamed = {f"heads.{k[3]}": v for k, v in merged.items() if k.startswith("lin") and k.endswith(".model.1.weight")}
        renamed |= {k: v for k, v in merged.items() if k.startswith("features.")}
        expected = model.state_dict()
        conv_keys = [k for k in expected if k.startswith("features.")]
        missing = [k for k in conv_keys if k not in renamed]
        if missing:
            raise UserError(f"perceptual weights {', '.join(map(str, paths))} lack VGG16 key `{missing[0]}`")
        for k, v in renamed.items():
            if k in expected and v.shape != expected[k].shape:
                raise UserError(f"perceptual weight `{k}` has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        model.load_state_dict({**expected, **{k: v for k, v in renamed.items() if k in expected}})
        return model.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per example (B,) between images x and y in [-1, 1]."""
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total = 0
        taps = iter(self.heads)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                fx, fy = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                total = total + ((fx - fy).pow(2) * next(taps)).sum(1).mean((1, 2))
        return total
