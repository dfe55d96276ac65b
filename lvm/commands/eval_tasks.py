"""In-context task suite on held-out objects: does the model do tasks it is only shown?

Tasks, rendered on the fly by the built-in renderer from objects never used for training: next view of a
rotating object, next frame of a physics video, and four analogies (k example pairs + a query):
rgb -> segmentation (foreground IoU, the paper's figure, and mIoU, after snapping colors to the labels the
prompt shows), rgb -> depth (abs-rel, RMSE), colorization (PSNR, MSE, and LPIPS given --lpips-vgg and
--lpips-lin), inpainting (PSNR inside the hidden boxes). A model "does" a task when it beats every trivial
baseline on the task's main metric; the report says which it does.

Per task: the target image's perplexity given the prompt (the release's figure, the mean over episodes of
exp(mean target NLL); "ppl pooled", exp of the mean NLL over all target tokens, beside it); the task metric of the decoded prediction
(segmentation: greedy; the others: the pixel mean of --samples samples, the model's expected image, since
PSNR and abs-rel reward it; --decoding sets one mode for all); the same metric for trivial baselines (copy
the last image, copy the last example answer, the mean image) and for the tokenizer's reconstruction of the
truth (the ceiling). Perplexity is also measured against the number of context frames (1..--context) and of
shots (--shots).

Writes OUT/tasks.md (table + quality checks), tasks.json, tasks.png (bars), ppl.png (perplexity curves),
grids/<model>-<task>.png (prompt | prediction | truth) and suite_config.yaml. Without --model it evaluates
the shipped assets/lvm-small, else the model `lvm demo` leaves (runs/demo/model); without --tokenizer, the
tokenizer the model records. docs/tasks.md says what each task asks.

examples:
  lvm eval tasks --model runs/demo/model --tokenizer runs/demo/tokenizer --shots 1,3,7 --out runs/eval
  lvm eval tasks --model runs/a --tokenizer runs/tok --compare runs/b --names small,big --episodes 16
  lvm eval tasks --episodes 16 --lpips-vgg vgg16-397923af.pth --lpips-lin vgg.pth   # colorization's LPIPS too
  lvm eval tasks --decoding greedy --tasks next_view,depth
"""

from lvm.commands.arg_types import (FRACTION, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT,
                                    SEED_INT)
from lvm.eval.tasks.config import DECODINGS, MAX_SHOTS, TASKS, SuiteConfig
from lvm_base.errors import InputError

_D = SuiteConfig()  # the flags' defaults are the suite's


def add_arguments(p):
    from lvm.commands.pair_args import add_pair_arguments

    add_pair_arguments(p, default_model=True)  # --model, --tokenizer, --device, --precision
    p.add_argument("--compare", default=None, metavar="MODEL", help="a second model, evaluated side by side")
    p.add_argument("--compare-tokenizer", default=None, metavar="TOKENIZER",
                   help="tokenizer of --compare (default: --tokenizer)")
    p.add_argument("--names", default="model,compare", help="labels of the two models in tables and plots")
    p.add_argument("--tasks", default=None, help=f"comma-separated subset of: {','.join(TASKS)} (default: all)")
    p.add_argument("--episodes", type=POSITIVE_INT, default=_D.episodes,
                   help=f"held-out episodes per task (default {_D.episodes})")
    shots = ",".join(map(str, _D.shots))
    p.add_argument("--shots", default=shots, help=f"analogy shots, 1..{MAX_SHOTS}; metrics at the largest "
                                                  f"(default {shots})")
    p.add_argument("--context", type=POSITIVE_INT, default=_D.context,
                   help=f"frames shown for next view / next frame (default {_D.context})")
    p.add_argument("--decoding", choices=list(DECODINGS), default=None,
                   help="how every task's prediction is decoded (default: greedy for segmentation, the pixel mean "
                        "of --samples samples for the others)")
    p.add_argument("--samples", type=POSITIVE_INT, default=_D.samples,
                   help=f"samples averaged by the mean decoding (default {_D.samples})")
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=None,
                   help=f"sampling temperature of every task (default {_D.temperature:g}, "
                        + ", ".join(f"{t} {v:g}" for t, v in _D.task_temperature.items()) + ")")
    p.add_argument("--top-k", type=NON_NEGATIVE_INT, default=_D.top_k,
                   help=f"sample from the k likeliest tokens only (default {_D.top_k}; 0 = off)")
    p.add_argument("--top-p", type=FRACTION, default=_D.top_p,
                   help=f"sample from the smallest set of tokens holding this much probability "
                        f"(default {_D.top_p:g}; 1 = off)")
    p.add_argument("--seed", type=SEED_INT, default=_D.seed, help="seed of the held-out episodes and of sampling")
    p.add_argument("--lpips-vgg", default=None, metavar="FILE",
                   help="torchvision VGG16 state dict, for colorization's LPIPS (with --lpips-lin; else n/a)")
    p.add_argument("--lpips-lin", default=None, metavar="FILE", help="LPIPS linear-layer weights (vgg.pth)")
    p.add_argument("--max-minutes", type=POSITIVE_FLOAT, default=None, metavar="M",
                   help="wall budget per model: each task draws episodes while its equal share of the minutes "
                        "left lasts (at least one each; the table says how many ran). Default: all --episodes")
    p.add_argument("--no-speculative", action="store_true",
                   help="decode one token per forward pass (default: speculative decoding where it pays)")
    p.add_argument("--out", default="runs/eval-tasks", help="output folder (default runs/eval-tasks)")
    p.add_argument("--no-progress", action="store_true")


def _ints(s: str, what: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {s!r}") from None


def run(args):
    from pathlib import Path

    from lvm.checkpoints import resolve_pair
    from lvm_base.hardware import from_args

    plan = from_args(args)  # a device that is not there is a one-line error before anything loads
    model, tok = resolve_pair(args.model, args.tokenizer)
    cfg = SuiteConfig(tasks=args.tasks.split(",") if args.tasks else list(TASKS), episodes=args.episodes,
                      shots=_ints(args.shots, "--shots"), context=args.context, seed=args.seed,
                      top_k=args.top_k, top_p=args.top_p, samples=args.samples,
                      lpips_vgg=args.lpips_vgg, lpips_lin=args.lpips_lin, max_minutes=args.max_minutes,
                      device=plan.device, precision=plan.precision,  # saved as resolved
                      speculative=not args.no_speculative,
                      **({"decoding": {t: args.decoding for t in TASKS}} if args.decoding else {}),
                      **({"temperature": args.temperature, "task_temperature": {}}
                         if args.temperature is not None else {}))
    pairs = [(model, tok)]
    if args.compare:
        pairs.append((args.compare, args.compare_tokenizer or tok))
    names = [n.strip() for n in args.names.split(",")][:len(pairs)]
    if len(names) < len(pairs) or len(set(names)) != len(names):
        raise InputError(f"--names needs {len(pairs)} distinct labels, got {args.names!r}")
    from lvm.eval.tasks.run import run_suite

    rep = run_suite(pairs, names, cfg, args.out, progress=not args.no_progress)
    out = Path(args.out)
    print(rep["table"], end="")
    from lvm.eval.tasks.report import does_summary

    for name, res in rep["results"]:
        print(does_summary(name, res), end="")
    print(f"wrote {out / 'tasks.md'}, tasks.json, tasks.png, ppl.png, grids/")
    return 0
