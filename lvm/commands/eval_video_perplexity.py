"""Next-frame perplexity of videos, as the released eval_video_perplexity.py measures it, and its curve
against context length.

Inputs: --videos GLOB (video files; with --frames, folders of frame images in natural name order) or
--list FILE (one path per line, relative to the list's folder). Per input: --context + --targets frames at
--stride (the largest stride that fits a shorter video), from a random start (--no-random-start:
frame 0), optionally the central --center-crop fraction of each frame, tokenized with --tokenizer. A video
with too few frames or that does not decode is skipped and counted.

Printed per context length: the release's figure (mean over clips of exp(mean NLL of the target tokens)) and
the pooled one (exp of the mean NLL over all target tokens) beside it. --context-curve 1,3,7,11,15 scores the
same targets of the same clips given only the last c context frames for each c, and writes the curve to
OUT/context_curve.png; OUT/video_perplexity.json holds every figure and one row per clip.

examples:
  lvm eval video-perplexity --videos 'kinetics/val/**/*.mp4' --model runs/lvm --tokenizer runs/tok --max-examples 500
  lvm eval video-perplexity --list clips.txt --frames --context-curve 1,3,7,11,15 --out out/video --model runs/lvm --tokenizer runs/tok
"""

from lvm.commands.arg_types import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, SEED_INT


def _ints(text: str) -> list[int]:
    import argparse

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p):
    from lvm.commands.pair_args import add_pair_arguments
    from lvm.eval.video import VideoEvalConfig

    d = VideoEvalConfig()  # the flags' defaults are the config's
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="glob of video files (quote it; ** recurses), or of frame folders with --frames")
    src.add_argument("--list", dest="list_file", help="text file with one video (or frame folder) path per line")
    p.add_argument("--frames", action="store_true", help="inputs are folders of frame images")
    add_pair_arguments(p)
    p.add_argument("--context", type=POSITIVE_INT, default=d.context,
                   help=f"context frames before the targets (default {d.context}, as the release)")
    p.add_argument("--targets", type=POSITIVE_INT, default=d.targets,
                   help=f"target frames scored after the context (default {d.targets})")
    p.add_argument("--stride", type=POSITIVE_INT, default=8, help="frames between the frames used (default 8)")
    p.add_argument("--center-crop", type=FRACTION, default=1.0, help="keep this central fraction of each frame")
    p.add_argument("--no-random-start", dest="random_start", action="store_false", help="start at frame 0")
    p.add_argument("--shuffle", action="store_true", help="shuffle the inputs (with --seed) before --max-examples")
    p.add_argument("--max-examples", type=NON_NEGATIVE_INT, default=0, help="only the first N inputs (0 = all)")
    p.add_argument("--seed", type=SEED_INT, default=0, help="seed of the start frames and the shuffle")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=2, help="sequences per forward pass (default 2)")
    p.add_argument("--context-curve", type=_ints, default=[], metavar="C1,C2,...",
                   help="context lengths to compare on the same clips (the largest replaces --context)")
    p.add_argument("--out", default=None, help="folder for video_perplexity.json (and context_curve.png)")
    p.add_argument("--no-progress", action="store_true")


def run(args):
    from lvm.eval.video import VideoEvalConfig, evaluate_videos
    from lvm_base.hardware import from_args

    from_args(args)  # a device that is not there is a one-line error before anything loads
    cfg = VideoEvalConfig(videos=args.videos, list_file=args.list_file, frames=args.frames,
                          context=args.context, targets=args.targets,
                          stride=args.stride, center_crop=args.center_crop, random_start=args.random_start,
                          shuffle=args.shuffle, max_examples=args.max_examples, seed=args.seed,
                          batch_size=args.batch_size, context_curve=args.context_curve)
    evaluate_videos(args.model, args.tokenizer, cfg, args.device, args.precision, out=args.out,
                    progress=not args.no_progress)
    return 0
