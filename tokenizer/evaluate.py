"""Tokenizer quality over a whole image set: PSNR, SSIM, LPIPS, codebook usage and code perplexity.

Usage and perplexity come from one histogram of every code the set produced (not a rolling window):
usage = distinct codes used / K, perplexity = exp(entropy of the code distribution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y in [0, 1], (B, C, H, W) -> (B,) dB."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, per channel, averaged), images in [0, 1] -> (B,)."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum())
    w = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


class TokenizerMetrics:
    """Accumulate per-image metrics and the code histogram batch by batch."""

    def __init__(self, codebook_size: int):
        self.k = codebook_size
        self.hist = torch.zeros(codebook_size, dtype=torch.long)
        self.sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
        self.n = 0
        self.n_lpips = 0
        self.skipped = 0

    def update(self, x01, rec01, codes, lpips_values=None):
        self.hist += torch.bincount(codes.flatten().cpu(), minlength=self.k)
        self.sums["psnr"] += float(psnr_per_image(x01, rec01).sum())
        self.sums["ssim"] += float(ssim_per_image(x01, rec01).sum())
        if lpips_values is not None:
            self.sums["lpips"] += float(lpips_values.sum())
            self.n_lpips += lpips_values.numel()
        self.n += x01.shape[0]

    def result(self) -> dict:
        total = int(self.hist.sum())
        p = self.hist.double() / max(total, 1)
        nz = p[p > 0]
        out = {
            "images": self.n,
            "skipped": self.skipped,
            "psnr": self.sums["psnr"] / max(self.n, 1),
            "ssim": self.sums["ssim"] / max(self.n, 1),
            "lpips": (self.sums["lpips"] / self.n_lpips) if self.n_lpips else None,
            "codebook_usage": 100.0 * int((self.hist > 0).sum()) / self.k,
            "codes_used": int((self.hist > 0).sum()),
            "codebook_size": self.k,
            "code_perplexity": float(math.exp(float(-(nz * nz.log()).sum()))) if total else 0.0,
        }
        return out


def evaluate(model, loader, lpips=None, progress: bool = False, max_images: int | None = None) -> dict:
    """Run `model` (a VQGAN) over `loader` (batches from `tokenizer.data.collate`) and return metrics."""
    lo, hi = model.value_range
    m = TokenizerMetrics(model.codebook_size)
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc="eval", unit="batch")
    for x, skipped in it:
        m.skipped += skipped
        if x is None:
            continue
        if max_images is not None and m.n >= max_images:
            break
        if max_images is not None:
            x = x[:max_images - m.n]
        codes = model.encode(x)
        rec = model.decode(codes).to(x.device)  # the model may sit on a GPU; metrics are computed here
        x01, rec01 = ((x - lo) / (hi - lo)).clamp(0, 1), ((rec - lo) / (hi - lo)).clamp(0, 1)
        lp = None
        if lpips is not None:
            dev = next(lpips.parameters()).device
            with torch.inference_mode():
                lp = lpips(x01.to(dev) * 2 - 1, rec01.to(dev) * 2 - 1).cpu()
        m.update(x01, rec01, codes, lp)
    return m.result()


def format_metrics(r: dict) -> str:
    lp = f"{r['lpips']:.4f}" if r.get("lpips") is not None else "n/a (no VGG weights)"
    return (f"images {r['images']} (skipped {r['skipped']})  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  "
            f"LPIPS {lp}  codebook usage {r['codebook_usage']:.2f}% ({r['codes_used']}/{r['codebook_size']})  "
            f"code perplexity {r['code_perplexity']:.1f}")
