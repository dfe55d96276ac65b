"""The in-context task suite: does a model + tokenizer pair do tasks it is only *shown*, on unseen objects?

    suite = SuiteConfig(episodes=8, shots=[1, 3, 7])
    episodes = make_episodes(suite, size=tok.resolution)         # held-out objects, rendered here
    result = evaluate_model(model, tok, episodes, suite)          # {task: {...}}
    write_report([("demo", result)], "out/eval", suite)           # tasks.md, tasks.json, PNG plots, grids

Tasks (all rendered by the built-in renderer from *held-out* objects, `render.list_objects("heldout")`):

    next_view     7 views of an orbit (15 deg steps)           -> the 8th view          PSNR (dB)
    next_frame    7 frames of a physics video                  -> the 8th frame         PSNR (dB)
    segmentation  k (rgb, segmentation) pairs + rgb            -> its segmentation      mIoU (palette-snapped)
    depth         k (rgb, depth) pairs + rgb                   -> its depth             abs-rel (and RMSE)
    colorization  k (gray, rgb) pairs + gray                   -> rgb                   PSNR (and MSE)
    inpainting    k (rgb with black boxes, rgb) pairs + query  -> rgb                   PSNR inside the boxes

For each task: the perplexity of the target image's 256 tokens given the prompt (`lvm.eval.perplexity`), the task
metric of the decoded prediction (greedy by default), the same metric for trivial baselines computed on
the raw rendered images (copy the last prompt image; copy the last example answer; the mean of the example
answers / context frames) and for the tokenizer's own reconstruction of the truth (the ceiling any
prediction decoded by this tokenizer can reach). Perplexity is also measured against context length
(1..7 frames) for the sequential tasks and against the number of shots for the analogies.

Metrics are on 8-bit images scaled to [0, 1]. Segmentation: the truth's colors are snapped to the first
`SEG_CLASSES` colors of the renderer's palette (background + labels 0..6; the built-in scenes use labels 0
and 1); a prediction's colors are snapped to the labels the prompt's example answers show, plus background:
the prompt defines the task's classes. mIoU is the mean IoU over the classes present in the truth or the
prediction, averaged over episodes. `miou_palette` snaps predictions to all `SEG_CLASSES` colors instead:
there, a blurred edge between blue (45, 106, 255) and black is nearer to label 5's purple (98, 67, 191) than
to either, and becomes a phantom class with IoU 0 (the tokenizer's own reconstructions lost 0.87 -> 0.72
mIoU to it on 8 episodes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.common.errors import InputError

SEQUENTIAL = ("next_view", "next_frame")
ANALOGY = ("segmentation", "depth", "colorization", "inpainting")
TASKS = SEQUENTIAL + ANALOGY
# task -> (main metric, higher is better)
METRIC = {"next_view": ("psnr", True), "next_frame": ("psnr", True), "segmentation": ("miou", True),
          "depth": ("abs_rel", False), "colorization": ("psnr", True), "inpainting": ("hole_psnr", True)}
BASELINES = ("copy_last", "copy_last_answer", "mean_image")
SEG_CLASSES = 8
DECODINGS = ("greedy", "sample", "mean")


@dataclass
class SuiteConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    episodes: int = 8                 # held-out episodes per task
    shots: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 7])  # analogies; metrics at the largest
    context: int = 7                  # frames shown for next view / next frame (curve over 1..context)
    seed: int = 1234                  # episodes depend on this only (same data for every model)
    # How each task's prediction is decoded: greedy | sample (one sample) | mean (the pixel mean of `samples`
    # samples: the model's estimate of the expected image, which PSNR and abs-rel reward; a single sharp
    # guess at an uncertain colour or pose is penalised twice, once for the missing truth and once for the
    # wrong detail). Segmentation stays greedy: a mean of label maps blends colours that are not labels.
    # Demo model, 8 episodes, greedy -> mean of 8: next view 17.3 -> 20.1 dB, next frame 18.6 -> 20.4,
    # depth abs-rel 0.60 -> 0.36, colorization 16.3 -> 19.5, inpainting 11.9 -> 15.1; seg mIoU 0.77 -> 0.60.
    decoding: dict = field(default_factory=lambda: {t: "greedy" if t == "segmentation" else "mean" for t in TASKS})
    samples: int = 8                  # samples averaged by "mean"
    temperature: float = 1.0          # of "sample" and "mean"
    top_k: int = 50
    device: str = "auto"              # where the model computes (tokenizer.common.hardware.resolve); saved resolved
    precision: str = "auto"           # auto | fp32 | bf16 | fp16 of generation and perplexity; saved resolved
    gen_threads: int = 1              # CPU threads while decoding token by token (0 = leave torch's setting)
    grid_rows: int = 3                # episodes drawn per task grid

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise InputError(f"unknown task(s) {bad}; valid: {', '.join(TASKS)}")
        self.shots = sorted(set(int(s) for s in self.shots))
        if not self.shots or self.shots[0] < 1 or self.shots[-1] > 7:
            raise InputError(f"shots must be between 1 and 7 (k pairs + query + answer <= 16 images), got {self.shots}")
        if not 1 <= self.context <= 15:
            raise InputError(f"context must be 1..15 frames, got {self.context}")
        from tokenizer.common.hardware import PRECISIONS

        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.episodes < 1:
            raise InputError("episodes must be >= 1")
        bad = {t: m for t, m in self.decoding.items() if t not in TASKS or m not in DECODINGS}
        if bad:
            raise InputError(f"decoding {bad}: tasks are {', '.join(TASKS)}; modes are {', '.join(DECODINGS)}")
        if self.samples < 1 or self.temperature < 0:
            raise InputError(f"samples must be >= 1 and temperature >= 0, got {self.samples}, {self.temperature}")

    def decode_mode(self, task: str) -> str:
        return self.decoding.get(task, "greedy")


# ---------------------------------------------------------------- metrics (uint8 RGB arrays in, floats out)

def _f(img) -> np.ndarray:
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    return a.astype(np.float64) / 255.0


def mse(pred, truth, mask: np.ndarray | None = None) -> float:
    d = (_f(pred) - _f(truth)) ** 2
    if mask is not None:
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("empty mask")
        d = d[m]
    return float(d.mean())


def psnr(pred, truth, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0, 1] (inside `mask` when given); capped at 100 dB for identical images."""
    return float(min(100.0, 10 * math.log10(1.0 / max(mse(pred, truth, mask), 1e-10))))


def snap_to_palette(img, palette: np.ndarray) -> np.ndarray:
    """RGB image -> (H, W) index of the nearest palette color (Euclidean in RGB)."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img).astype(np.float32)
    pal = np.asarray(palette, np.float32)
    d = ((a[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def seg_palette() -> np.ndarray:
    from data_builders.annotations import PALETTE

    return PALETTE[:SEG_CLASSES]


def seg_classes(images, palette: np.ndarray | None = None) -> list[int]:
    """Palette indices that segmentation images show (background 0 always included)."""
    palette = seg_palette() if palette is None else palette
    return sorted({0}.union(*(np.unique(snap_to_palette(im, palette)).tolist() for im in images)))


def miou(pred, truth, palette: np.ndarray | None = None, classes: list[int] | None = None) -> float:
    """Mean IoU of two segmentation *images* after snapping them to the palette; classes in either count.

    `classes`: the palette indices the prediction may take (default: all); the truth may take any."""
    palette = seg_palette() if palette is None else palette
    t = snap_to_palette(truth, palette)
    if classes is None:
        p = snap_to_palette(pred, palette)
    else:
        p = np.asarray(classes)[snap_to_palette(pred, np.asarray(palette)[classes])]
    ious = []
    for c in np.union1d(np.unique(p), np.unique(t)):
        inter = np.logical_and(p == c, t == c).sum()
        union = np.logical_or(p == c, t == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def _gray(img) -> np.ndarray:
    return _f(img).mean(-1)


def abs_rel(pred, truth) -> float:
    """Mean |pred - gt| / gt over the truth's foreground (gt > 0) of depth *images* (gray levels in [0, 1])."""
    p, t = _gray(pred), _gray(truth)
    fg = t > 1.5 / 255
    if not fg.any():
        raise ValueError("depth truth has no foreground")
    return float((np.abs(p[fg] - t[fg]) / t[fg]).mean())


def rmse(pred, truth) -> float:
    return float(np.sqrt(((_gray(pred) - _gray(truth)) ** 2).mean()))


def task_metrics(task: str, pred, truth, hole: np.ndarray | None = None, classes: list[int] | None = None) -> dict:
    """All metrics of one prediction for `task` (the main one is METRIC[task][0]).

    `classes`: segmentation labels the prompt shows (`seg_classes` of its example answers)."""
    if task in SEQUENTIAL:
        return {"psnr": psnr(pred, truth), "mse": mse(pred, truth)}
    if task == "segmentation":
        return {"miou": miou(pred, truth, classes=classes), "miou_palette": miou(pred, truth)}
    if task == "depth":
        return {"abs_rel": abs_rel(pred, truth), "rmse": rmse(pred, truth)}
    if task == "colorization":
        return {"psnr": psnr(pred, truth), "mse": mse(pred, truth)}
    if task == "inpainting":
        return {"hole_psnr": psnr(pred, truth, hole), "psnr": psnr(pred, truth)}
    raise InputError(f"unknown task {task!r}")


def mean_image(images) -> Image.Image:
    a = np.mean([np.asarray(im.convert("RGB"), np.float64) for im in images], axis=0)
    return Image.fromarray(np.round(a).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- episodes

@dataclass
class Episode:
    """One held-out example. Sequential: `images` = frames (the last one is the target).
    Analogy: `images` = A1, A1', ..., A7, A7', B, B' (7 example pairs, query, answer)."""

    task: str
    images: list
    hole: np.ndarray | None = None  # inpainting: the target's hidden pixels
    info: dict = field(default_factory=dict)

    def prompt(self, n: int) -> list:
        """The prompt with `n` context frames (sequential) or `n` shots (analogy)."""
        if self.task in SEQUENTIAL:
            return self.images[-1 - n:-1]
        return self.images[14 - 2 * n:14] + [self.images[14]]

    @property
    def target(self):
        return self.images[-1]

    def baselines(self, n: int) -> dict:
        p = self.prompt(n)
        if self.task in SEQUENTIAL:
            return {"copy_last": p[-1], "copy_last_answer": None, "mean_image": mean_image(p)}
        answers = p[1:-1:2]
        return {"copy_last": p[-1], "copy_last_answer": answers[-1], "mean_image": mean_image(answers)}


def make_episodes(cfg: SuiteConfig, size: int) -> dict[str, list[Episode]]:
    """Render the suite's episodes (deterministic in cfg.seed) from held-out objects at `size` px."""
    from data_builders import annotations as ann
    from data_builders import render

    objs = render.list_objects("heldout")
    if not objs:
        raise InputError("the renderer has no held-out objects")
    out = {}
    for ti, task in enumerate(cfg.tasks):
        eps = []
        for e in range(cfg.episodes):
            rng = np.random.default_rng([cfg.seed, ti, e])
            seed = int(rng.integers(2**31))
            if task == "next_view":
                obj = objs[int(rng.integers(len(objs)))]
                o = render.render_orbit(obj, size=size, seed=seed, views=cfg.context + 1)
                eps.append(Episode(task, o["images"], info={"object": o["object"], "elevation": o["elevation"]}))
            elif task == "next_frame":
                v = render.render_video(seed=seed, size=size, n_frames=cfg.context + 1, split="heldout")
                eps.append(Episode(task, v["images"], info={"objects": v["meta"]["objects"],
                                                             "scenario": v["meta"]["scenario"]}))
            else:
                images, names, hole = [], [], None
                for j in range(8):
                    for _ in range(20):  # a view where the object is out of sight teaches nothing: redraw
                        view = render.render_object_view(objs[int(rng.integers(len(objs)))],
                                                         seed=int(rng.integers(2**31)), size=size)
                        if view.mask.sum() >= 16:
                            break
                    names.append(view.meta["object"])
                    if task == "inpainting":
                        inp, boxes = ann.inpainting_input(view.rgb, rng)
                        pair = (inp, view.rgb)
                        if j == 7:
                            hole = np.zeros((size, size), bool)
                            for x0, y0, x1, y1 in boxes:
                                hole[y0:y1, x0:x1] = True
                    else:
                        pair = render.task_pair(view, task, rng)
                    images += list(pair)
                eps.append(Episode(task, images, hole=hole, info={"objects": names}))
        out[task] = eps
    return out


# ---------------------------------------------------------------- evaluation of one model

class cpu_threads:
    """Temporarily run torch on `n` CPU threads (0 = unchanged).

    Decoding a small model token by token is a long chain of tiny ops: with 2 OpenMP threads every op ends
    in a barrier, and on a shared machine a descheduled thread stalls each one (measured here under load:
    127 s vs 1.8 s for one 256-token image of the tiny model with 2 vs 1 threads).
    """

    def __init__(self, n: int):
        self.n, self.old = n, None

    def __enter__(self):
        import torch

        if self.n > 0 and self.n != torch.get_num_threads():
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)


def predict(engine, tok, prompt_codes, mode: str, samples: int, sampling, threads: int = 1) -> Image.Image:
    """The next image after `prompt_codes` ((n, 256) codes), decoded by `mode` (see SuiteConfig.decoding)."""
    from lvm.generate.engine import Sampling

    if mode == "greedy":
        sampling, n = Sampling(temperature=0), 1
    else:
        n = samples if mode == "mean" else 1
    with cpu_threads(threads):
        gen = engine.generate(prompt_codes, n_new=1, candidates=n, sampling=sampling)
    images = tok.decode_to_pil(gen.images[:, 0])
    return images[0] if len(images) == 1 else mean_image(images)


def evaluate_model(model, tok, episodes: dict[str, list[Episode]], cfg: SuiteConfig, progress: bool = True,
                   log=print) -> dict:
    """Run the suite for one model + tokenizer. Returns {task: result dict} (JSON-ready) and keeps the
    decoded predictions of the first `grid_rows` episodes under result["_grid"] (PIL, not for JSON)."""
    import torch
    from tqdm import tqdm

    from lvm.generate.engine import Engine, Sampling
    from lvm.eval.perplexity import target_nll
    from lvm.tokens import TokenLayout
    from tokenizer.common.hardware import resolve

    layout = TokenLayout.from_vocab_size(model.config.vocab_size)
    w = next(model.parameters())
    plan = resolve(str(w.device), cfg.precision, "inference")
    # Same dtype and device: the engine shares the model's weights (the model still scores perplexity).
    engine = Engine(model, layout=layout, precision=plan.precision, device=plan.device, max_batch=cfg.samples,
                    consume=w.dtype == plan.dtype)
    sampling = Sampling(temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)
    results = {}
    total = sum(len(v) for v in episodes.values())
    bar = tqdm(total=total, desc="eval tasks", unit="episode", disable=not progress, dynamic_ncols=True)
    for task, eps in episodes.items():
        metric, higher = METRIC[task]
        xs = list(range(1, cfg.context + 1)) if task in SEQUENTIAL else list(cfg.shots)
        n_main = xs[-1]
        per_metrics, per_base, per_recon, grid = [], {b: [] for b in BASELINES}, [], []
        nll_x = {x: [0.0, 0] for x in xs}
        for e, ep in enumerate(eps):
            codes = tok.encode_images(ep.images, batch_size=16)  # (n, 256)
            # perplexity of the target given 1..n_main context images / shots
            examples, idx = [], {}
            for x in xs:
                p = ep.prompt(x)
                n_in = len(p)
                sl = codes[len(ep.images) - 1 - n_in:len(ep.images) - 1] if task in SEQUENTIAL else \
                    torch.cat([codes[14 - 2 * x:14], codes[14:15]])
                assert sl.shape[0] == n_in
                examples.append((sl.numpy(), codes[-1:].numpy()))
            _, _, per = target_nll(model, examples, layout, batch_size=4, precision=plan.precision)
            for x, (nll, n) in zip(xs, per):
                nll_x[x][0] += nll
                nll_x[x][1] += n
            # the prediction with the most context, decoded as the suite says for this task
            pred = predict(engine, tok, torch.from_numpy(examples[-1][0]), cfg.decode_mode(task), cfg.samples,
                           sampling, cfg.gen_threads)
            recon = tok.decode_to_pil(codes[-1:])[0]
            truth = ep.target
            classes = seg_classes(ep.prompt(n_main)[1:-1:2]) if task == "segmentation" else None
            per_metrics.append(task_metrics(task, pred, truth, ep.hole, classes))
            per_recon.append(task_metrics(task, recon, truth, ep.hole, classes))
            for b, im in ep.baselines(n_main).items():
                if im is not None:
                    per_base[b].append(task_metrics(task, im, truth, ep.hole, classes))
            if e < cfg.grid_rows:
                grid.append((ep.prompt(n_main), pred, truth))
            bar.update(1)

        def avg(ms):
            return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} if ms else None

        ppl = {x: math.exp(s / n) for x, (s, n) in nll_x.items()}
        res = {"metric": metric, "higher_is_better": higher, "episodes": len(eps), "decoding": cfg.decode_mode(task),
               "n_context" if task in SEQUENTIAL else "shots": n_main,
               "ppl": ppl[n_main], "model": avg(per_metrics),
               "baselines": {b: avg(v) for b, v in per_base.items() if v},
               "tokenizer_recon": avg(per_recon),
               "ppl_curve": {"x": xs, "ppl": [ppl[x] for x in xs],
                             "axis": "context frames" if task in SEQUENTIAL else "shots"},
               "_grid": grid}
        results[task] = res
        b = best_baseline(res)
        log(f"{task}: ppl {res['ppl']:.1f}, {metric} {res['model'][metric]:.3f}"
            + (f" (best baseline {b[0]} {b[1]:.3f})" if b else ""))
    bar.close()
    return results


def best_baseline(res: dict):
    """(name, value) of the best trivial baseline on the task's main metric."""
    metric, higher = res["metric"], res["higher_is_better"]
    vals = [(b, m[metric]) for b, m in res["baselines"].items() if m]
    if not vals:
        return None
    return (max if higher else min)(vals, key=lambda kv: kv[1])


# A curve that only drifts in its third digit (4.499 -> 4.497) is no sign of using the context; a model
# that uses it cuts the target perplexity by far more than this.
PPL_FALL = 0.02


def quality_checks(result: dict, miou_bar: float = 0.75) -> list[tuple[str, bool, str]]:
    """The issue's quality bars for one model's results: [(check, passed, detail)]."""
    out = []

    def beats(a, b, higher):
        return a > b if higher else a < b

    for task, res in result.items():
        metric, higher = res["metric"], res["higher_is_better"]
        v = res["model"][metric]
        bl = res["baselines"]
        # The bars this task must clear: (check, what it needs, passes(value), detail(value)).
        if task == "segmentation":
            b = best_baseline(res)
            bars = [(f"segmentation mIoU >= {miou_bar}", f">= {miou_bar}", lambda x: x >= miou_bar,
                     lambda x: f"{x:.3f}"),
                    ("segmentation beats every baseline", "the best baseline", lambda x: beats(x, b[1], higher),
                     lambda x: f"{x:.3f} vs best baseline {b[0]} {b[1]:.3f}")]
        elif task in ANALOGY:
            b = best_baseline(res)
            bars = [(f"{task} beats the best baseline", "the best baseline", lambda x: beats(x, b[1], higher),
                     lambda x: f"{metric} {x:.3f} vs {b[0]} {b[1]:.3f}")]
        else:
            m = bl["mean_image"][metric]
            bars = [(f"{task} beats the mean image", "the mean image", lambda x: beats(x, m, higher),
                     lambda x: f"{metric} {x:.2f} vs {m:.2f}")]
        out += [(check, passes(v), detail(v)) for check, _, passes, detail in bars]
        if task in SEQUENTIAL:
            c = bl["copy_last"][metric]
            out.append((f"{task} beats copy-last (stretch)", beats(v, c, higher), f"{metric} {v:.2f} vs {c:.2f}"))
        rec = (res.get("tokenizer_recon") or {}).get(metric)
        if rec is not None:
            # Whatever the model predicts is decoded by the tokenizer, so a bar its own reconstruction of
            # the truth misses is out of reach for every model paired with it: say so next to the bars.
            need = " and ".join(n for _, n, _, _ in bars)
            out.append((f"{task}: the tokenizer's reconstruction of the truth can reach the bar ({need})",
                        all(passes(rec) for _, _, passes, _ in bars), f"{metric} {rec:.3f}"))
        curve = res["ppl_curve"]["ppl"]
        if len(curve) >= 2:
            out.append((f"{task} perplexity falls as {res['ppl_curve']['axis']} grow (by >= {PPL_FALL:.0%})",
                        curve[-1] <= curve[0] * (1 - PPL_FALL), " -> ".join(f"{p:.2f}" for p in curve)))
    return out


# ---------------------------------------------------------------- report

def _fmt(v, metric=None):
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(named: list[tuple[str, dict]]) -> str:
    """One row per task; per model: target perplexity and the main metric; then baselines and the ceiling."""
    first = named[0][1]
    head = ["task", "metric", "decoding"]
    for name, _ in named:
        head += [f"{name} ppl", f"{name}"]
    head += ["copy last", "copy last answer", "mean image", "tokenizer recon" + (f" ({named[0][0]})" if len(named) > 1 else "")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in first:
        metric, higher = first[task]["metric"], first[task]["higher_is_better"]
        row = [task, f"{metric} ({'higher' if higher else 'lower'} better)", first[task].get("decoding", "greedy")]
        for _, res in named:
            r = res.get(task)
            row += [_fmt(r["ppl"]) if r else "-", _fmt(r["model"][metric]) if r else "-"]
        bl = first[task]["baselines"]
        row += [_fmt(bl[b][metric]) if b in bl else "-" for b in BASELINES]
        row.append(_fmt(first[task]["tokenizer_recon"][metric]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _plot_bars(named, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(named[0][1])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        r0 = named[0][1][task]
        metric, higher = r0["metric"], r0["higher_is_better"]
        labels, vals, colors = [], [], []
        for i, (name, res) in enumerate(named):
            labels.append(name)
            vals.append(res[task]["model"][metric])
            colors.append(f"C{i}")
        for b, m in r0["baselines"].items():
            labels.append(b.replace("_", " "))
            vals.append(m[metric])
            colors.append("0.6")
        labels.append("tok. recon")
        vals.append(r0["tokenizer_recon"][metric])
        colors.append("0.85")
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{task}\n{metric} ({'higher' if higher else 'lower'} better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ppl(named, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(named[0][1])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (name, res) in enumerate(named):
            c = res[task]["ppl_curve"]
            ax.plot(c["x"], c["ppl"], "o-", color=f"C{i}", label=name)
        ax.set_xlabel(named[0][1][task]["ppl_curve"]["axis"], fontsize=8)
        ax.set_title(f"{task}: target perplexity", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(named) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_grid(grid, path, title: str = ""):
    """Rows of (prompt images, prediction, truth) -> one PNG: prompt | prediction | truth."""
    from tokenizer.image_io import make_grid, save_png

    width = max(len(p) for p, _, _ in grid)
    rows = [list(p) + [None] * (width - len(p)) + [pred, truth] for p, pred, truth in grid]
    cols = [f"prompt {i + 1}" for i in range(width)] + ["prediction", "truth"]
    return save_png(make_grid(rows, labels=[f"{title} {i}".strip() for i in range(len(rows))], col_labels=cols), path)


def write_report(named: list[tuple[str, dict]], out, cfg: SuiteConfig, meta: dict | None = None) -> dict:
    """tasks.md, tasks.json, tasks.png (bars), ppl.png (curves), grids/<model>-<task>.png into `out`."""
    from tokenizer.common.files import atomic_write_text

    out = Path(out)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    files = {"table": "tasks.md", "json": "tasks.json", "bars": "tasks.png", "ppl": "ppl.png", "grids": []}
    for name, res in named:
        for task, r in res.items():
            if r.get("_grid"):
                p = out / "grids" / f"{name}-{task}.png"
                save_grid(r["_grid"], p, task)
                files["grids"].append(str(p.relative_to(out)))
    clean = [(n, {t: {k: v for k, v in r.items() if k != "_grid"} for t, r in res.items()}) for n, res in named]
    table = markdown_table(clean)
    checks = {n: [{"check": c, "passed": bool(ok), "detail": d} for c, ok, d in quality_checks(res)]
              for n, res in clean}
    md = [f"# In-context task suite\n",
          f"{cfg.episodes} held-out episodes per task; analogies at {cfg.shots[-1]} shots, sequential tasks with "
          f"{cfg.context} context frames; predictions decoded as the `decoding` column says (mean = the pixel "
          f"mean of {cfg.samples} samples, temperature {cfg.temperature:g}, top-k {cfg.top_k}; sample = one such "
          f"sample).\n", table,
          "\n![task metrics](tasks.png)\n\n![target perplexity](ppl.png)\n"]
    for n, cs in checks.items():
        md.append(f"\n## Quality checks: {n}\n")
        md += [f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in cs]
    atomic_write_text(out / "tasks.md", "\n".join(md) + "\n")
    data = {"suite": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "meta": meta or {},
            "models": [{"name": n, "tasks": r, "checks": checks[n]} for n, r in clean]}
    atomic_write_text(out / "tasks.json", json.dumps(data, indent=1))
    _plot_bars(clean, out / "tasks.png")
    _plot_ppl(clean, out / "ppl.png")
    return {"table": table, "checks": checks, "files": files, "results": clean}
