"""Tokenizer quality over a whole image set: PSNR, SSIM, LPIPS, codebook usage and code perplexity.

Usage and perplexity come from one histogram of every code the set produced (not a rolling window):
usage = distinct codes used / K, perplexity = exp(entropy of the code distribution).

PSNR and SSIM here are the project's only ones (the in-context task suite, lvm/eval/tasks/metrics.py,
scores its predictions with them too). Both come from torchmetrics, imported on first use because it
takes seconds to import.
"""

from __future__ import annotations

import math

import torch

# The PSNR of identical images is infinite (MSE 0), which JSON cannot hold and a mean cannot use: every
# PSNR is capped at 100 dB (MSE 1e-10), past which two 256 x 256 RGB 8-bit images differ in one value by
# one step at most.
PSNR_MAX_DB = 100.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Gaussian window of the SSIM paper


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x, y in [0, 1], (B, ...) -> (B,) dB over each image's values, at most PSNR_MAX_DB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    db = peak_signal_noise_ratio(x.double(), y.double(), data_range=1.0, reduction="none",
                                 dim=tuple(range(1, x.ndim)))
    return db.clamp(max=PSNR_MAX_DB)


def psnr(x, y) -> float:
    """PSNR in dB of two same-shaped arrays or tensors in [0, 1] over all their values, at most PSNR_MAX_DB.

    The PSNR of a region (an inpainting hole) is the PSNR of the region's values: `psnr(x[mask], y[mask])`."""
    return float(psnr_per_image(torch.as_tensor(x).reshape(1, -1), torch.as_tensor(y).reshape(1, -1))[0])


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, per channel, averaged), images in [0, 1] -> (B,).

    The mean runs over the windows that lie wholly inside the image, as in the SSIM paper's reference code;
    torchmetrics' own mean also counts the windows it reflects over the border, so its full map is cropped."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        x.double(), y.double(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW,
        reduction="none", data_range=1.0, k1=0.01, k2=0.03, return_full_image=True)
    r = SSIM_WINDOW // 2
    return full[..., r:-r, r:-r].flatten(1).mean(1)


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


def evaluate_checkpoint(checkpoint, images, batch_size: int = 16, max_images: int | None = None,
                        lpips_vgg=None, lpips_lin=None, device: str = "auto", precision: str = "auto",
                        out=None, log=print) -> dict:
    """`lvm tokenizer eval`: load `checkpoint`, measure it on `images` (a folder, a .txt list or .tar shards),
    log one line of metrics and write them as JSON to `out` when given. Returns the metrics."""
    import json

    from torch.utils.data import DataLoader

    from lvm_base.files import atomic_write_text
    from .data import build_dataset, collate
    from .loaders import load_tokenizer
    from .lpips import maybe_lpips

    tok = load_tokenizer(checkpoint, device=device, precision=precision)
    ds = build_dataset(images, tok.resolution, tok.value_range, tok.resize_mode, loop=False)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    r = evaluate(tok, loader, maybe_lpips(lpips_vgg, lpips_lin), progress=True, max_images=max_images)
    r["checkpoint"] = str(checkpoint)
    r["images_spec"] = str(images)
    plan = tok.inference_plan()
    r["device"], r["precision"] = plan.device, plan.precision
    log(format_metrics(r))
    if out:
        atomic_write_text(out, json.dumps(r, indent=2) + "\n")
    return r


def reconstruction_grid(checkpoint, images, out, max_images: int = 16, device: str = "auto",
                        precision: str = "auto", log=print) -> dict:
    """`lvm tokenizer recon`: an original | reconstruction PNG grid at `out`, one row per image of `images`
    (files, folders or .txt lists), each labelled with its PSNR. Returns {"images", "psnr" (mean dB)}."""
    from pathlib import Path

    from .data import image_paths
    from lvm_base.image_io import load_image, make_grid, pil_to_tensor, resize_square, save_png
    from .loaders import load_tokenizer

    paths = [q for p in images for q in image_paths(p)][:max_images]
    tok = load_tokenizer(checkpoint, device=device, precision=precision)
    originals = [resize_square(load_image(p), tok.resolution, tok.resize_mode) for p in paths]
    recons = tok.decode_to_pil(tok.encode_images(originals))
    x = torch.stack([pil_to_tensor(im, (0, 1)) for im in originals])
    y = torch.stack([pil_to_tensor(im, (0, 1)) for im in recons])
    db = psnr_per_image(x, y)
    labels = [f"{Path(p).name[:14]} {float(v):.1f}dB" for p, v in zip(paths, db)]
    grid = make_grid([[o, r] for o, r in zip(originals, recons)], labels=labels,
                     col_labels=["original", "reconstruction"])
    save_png(grid, out)
    log(f"wrote {out} ({len(paths)} images, mean PSNR {float(db.mean()):.2f} dB)")
    return {"images": len(paths), "psnr": float(db.mean())}
