"""LPIPS perceptual distance (VGG16 variant) from local weight files only.

Nothing is downloaded: `vgg_path` is a torchvision VGG16 state dict (`features.N.weight` keys, e.g.
vgg16-397923af.pth), `lin_path` the LPIPS linear-layer weights (`lin0.model.1.weight` ... `lin4...`, the
`vgg.pth` of the LPIPS release / taming). Inputs are images in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lvm_base.errors import InputError

_SLICES = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in VGG16.features
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features[:_SLICES[-1]]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path, lin_path) -> "LPIPS":
        m = cls()
        vgg = _load(vgg_path)
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        want = set(m.features.state_dict())
        missing = sorted(want - set(feats))
        if missing:
            raise InputError(f"{vgg_path}: not a torchvision VGG16 state dict (missing {', '.join(missing[:4])})")
        m.features.load_state_dict({k: feats[k] for k in want})
        lin = _load(lin_path)
        try:
            m.lins.load_state_dict({f"{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(5)})
        except KeyError as e:
            raise InputError(f"{lin_path}: not an LPIPS linear-layer file (missing {e})") from None
        return m

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: no dropout, frozen

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance (B,) of images in [-1, 1]."""
        h = (torch.cat([x, y]) - self.shift) / self.scale
        total, start = 0.0, 0
        for lin, end in zip(self.lins, _SLICES):
            h = self.features[start:end](h)
            start = end
            f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            total = total + lin((fx - fy) ** 2).mean((2, 3))
        return total.flatten()


def _load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: LPIPS weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: cannot load weights safely ({str(e).splitlines()[0][:160]})") from None


def maybe_lpips(vgg_path, lin_path) -> LPIPS | None:
    """LPIPS when both weight files are given, else None (caller says so once)."""
    if not vgg_path or not lin_path:
        return None
    return LPIPS.from_files(vgg_path, lin_path)
