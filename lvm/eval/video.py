"""Next-frame perplexity of videos, the released `eval_video_perplexity.py` protocol, and its curve against
context length (the paper's headline video figure).

    result = evaluate_videos(model_dir, tokenizer_dir, VideoEvalConfig(videos="clips/*.mp4", context_curve=[1, 3, 7]))

Protocol (per video file, or per folder of frame images with `frames`): take n = context + target frames
(`context` + `targets`) at a stride of `stride` frames, reduced to the largest stride that
fits a short video, from a random start (`random_start`; else frame 0); optionally keep the central
`center_crop` fraction of each frame's height and width; resize as the tokenizer resizes its inputs. The
perplexity of the target frames given the context frames is lvm/eval/perplexity.py's: the release's figure
(mean over clips of exp(mean target NLL)) first, the pooled one beside it. A video with fewer than n frames,
or one that does not decode, is skipped and counted (the release draws another video instead, which makes
its number depend on the draw).

With `context_curve` = [c1, c2, ...], every clip is read once with max(c) context frames, and for each c the same
target is scored given only the last c of them: the curve compares context lengths on identical targets.
"""

from __future__ import annotations

import glob
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvm_base.errors import InputError


@dataclass
class VideoEvalConfig:
    videos: str | None = None      # a glob of video files (or of frame folders with `frames`)
    list_file: str | None = None   # or a text file, one path per line
    frames: bool = False           # inputs are folders of frame images, not video files
    context: int = 15              # context frames before the targets (the release's n_context_frames)
    targets: int = 1               # target frames scored (the release's n_target_frames)
    stride: int = 8
    center_crop: float = 1.0
    random_start: bool = True
    shuffle: bool = False
    max_examples: int = 0
    seed: int = 0
    batch_size: int = 2
    context_curve: list[int] = field(default_factory=list)  # context lengths compared; [] = `context` only

    def contexts(self) -> list[int]:
        cs = sorted(set(int(c) for c in self.context_curve)) or [self.context]
        if cs[0] < 1:
            raise InputError(f"context lengths must be >= 1, got {cs}")
        return cs


def list_videos(cfg: VideoEvalConfig) -> list[str]:
    """The inputs the config names, filtered to video files (or frame folders), in order."""
    from data_builders.sources.base import VIDEO_EXTENSIONS

    if bool(cfg.videos) == bool(cfg.list_file):
        raise InputError("give --videos GLOB or --list FILE (one of them)")
    if cfg.list_file:
        from data_builders.sources.videos import list_file

        if not Path(cfg.list_file).is_file():
            raise InputError(f"{cfg.list_file}: no such list file")
        items = list_file(Path(cfg.list_file))  # relative to the list's folder, '#' lines skipped
    else:
        items = sorted(glob.glob(cfg.videos, recursive=True))
    keep = [p for p in items if (Path(p).is_dir() if cfg.frames else
                                 (Path(p).is_file() and Path(p).suffix.lower() in VIDEO_EXTENSIONS))]
    if not keep:
        what = "frame folders" if cfg.frames else f"video files ({', '.join(VIDEO_EXTENSIONS)})"
        raise InputError(f"{cfg.videos or cfg.list_file}: no {what} found")
    if cfg.shuffle:
        np.random.default_rng(cfg.seed).shuffle(keep)
    return keep[:cfg.max_examples] if cfg.max_examples else keep


def center_crop(img, fraction: float):
    """The central `fraction` of the image's width and height."""
    if fraction >= 1.0:
        return img
    w, h = img.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def read_clip(path: str, cfg: VideoEvalConfig, n: int, rng):
    """n PIL frames of the video (or frame folder) at `path`, or (None, skip reason): the data builders'
    reader and frame picker, with the release's rule for short clips (clamp the stride)."""
    from data_builders.config import Skip
    from data_builders.sources.videos import VideoReader, pick_frames

    try:
        r = VideoReader(path)
        idx, _, _ = pick_frames(r.count(), n, cfg.stride, "clamp", rng if cfg.random_start else None, path)
        return [center_crop(f, cfg.center_crop) for f in r.frames(idx, None)], None
    except Skip as e:
        return None, e.reason
    except (InputError, OSError) as e:
        return None, type(e).__name__


def evaluate_videos(model_dir, tokenizer_dir, cfg: VideoEvalConfig, device: str = "auto", precision: str = "auto",
                    out=None, progress: bool = True, log=print) -> dict:
    """`lvm eval video-perplexity`: per context length, the perplexity of the target frames of every clip.

    Writes OUT/video_perplexity.json (and OUT/context_curve.png with more than one context length) when
    `out` is given. Returns the result dict."""
    from collections import Counter

    from tqdm import tqdm

    from lvm.checkpoints import load_pair
    from lvm.eval.perplexity import aggregate, target_nll
    from lvm.tokens import TokenLayout

    contexts = cfg.contexts()
    videos = list_videos(cfg)
    model, tok, plan = load_pair(model_dir, tokenizer_dir, device, precision)
    layout = TokenLayout.from_model_config(model.config)
    longest = contexts[-1] + cfg.targets
    if longest > layout.images_per_context:
        raise InputError(f"{contexts[-1]} context + {cfg.targets} target frames do not fit the model's "
                         f"context of {layout.images_per_context} images")
    rng = np.random.default_rng(cfg.seed)
    per = {c: [] for c in contexts}
    skipped, used = Counter(), []
    for path in tqdm(videos, unit="video", disable=not progress, dynamic_ncols=True):
        frames, why = read_clip(path, cfg, longest, rng)
        if frames is None:
            skipped[why] += 1
            continue
        codes = tok.encode_images(frames).numpy()
        ctx, tgt = codes[:contexts[-1]], codes[contexts[-1]:]
        nll = target_nll(model, [(ctx[len(ctx) - c:], tgt) for c in contexts], layout,
                         batch_size=cfg.batch_size, precision=plan.precision)[2]
        for c, p in zip(contexts, nll):
            per[c].append(p)
        used.append(path)
    if not used:
        raise InputError(f"{cfg.videos or cfg.list_file}: no usable clips ({dict(skipped)} skipped)")
    curve = [{"context": c, **aggregate(per[c])} for c in contexts]
    for row in curve:
        log(f"context {row['context']:>2} frames: perplexity {row['perplexity']:.4f} (the release's mean over "
            f"{len(used)} clips) | pooled {row['pooled_perplexity']:.4f}")
    if skipped:
        print(f"warning: skipped {sum(skipped.values())} videos ({dict(skipped)})", file=sys.stderr)
    result = {"config": vars(cfg) | {"context": contexts[-1], "context_curve": contexts}, "clips": len(used), "skipped": dict(skipped),
              "device": plan.device, "precision": plan.precision, "curve": curve,
              "per_clip": [{"video": v, **{f"ppl_context_{c}": math.exp(per[c][i][0] / per[c][i][1]) for c in contexts}}
                           for i, v in enumerate(used)]}
    if out:
        write_outputs(result, Path(out), log)
    return result


def write_outputs(result: dict, out: Path, log=print) -> None:
    """video_perplexity.json, and context_curve.png when the result has a curve."""
    from lvm_base.files import atomic_path, atomic_write_text

    atomic_write_text(out / "video_perplexity.json", json.dumps(result, indent=1))
    curve = result["curve"]
    if len(curve) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["context"] for r in curve]
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot(xs, [r["perplexity"] for r in curve], "o-", label="mean over clips (release)")
        ax.plot(xs, [r["pooled_perplexity"] for r in curve], "s--", label="pooled", alpha=0.7)
        ax.set_xlabel("context frames")
        ax.set_ylabel("next-frame perplexity")
        ax.set_xticks(xs)
        ax.set_title(f"{result['clips']} clips", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(out / "context_curve.png") as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
    log(f"wrote {out / 'video_perplexity.json'}" + (f" and {out / 'context_curve.png'}" if len(curve) > 1 else ""))
