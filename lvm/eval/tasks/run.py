"""Running the suite: decode one prediction (`predict`), evaluate one model + tokenizer on the episodes
(`evaluate_model`), and evaluate model directories side by side into a report (`run_suite`).

For each task: the perplexity of the target image's tokens given the prompt (lvm/eval/perplexity.py), the
task metric of the decoded prediction, the same metric for trivial baselines computed on the raw rendered
images (copy the last prompt image; copy the last example answer; the mean of the example answers / context
frames) and for the tokenizer's own reconstruction of the truth (the ceiling any prediction decoded by this
tokenizer can reach). Perplexity is the release's figure (the mean over episodes of each episode's
exp(mean target NLL)); the pooled one (exp of the mean NLL over all episodes' tokens) is kept beside it as
"ppl_pooled". Perplexity is also measured against context length (1..context frames) for the
sequential tasks and against the number of shots for the analogies.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lvm.eval.tasks.checks import best_baseline
from lvm.eval.tasks.config import BASELINES, METRIC, SEQUENTIAL, SuiteConfig
from lvm.eval.tasks.episodes import Episode, make_episodes
from lvm.eval.tasks.metrics import mean_image, seg_classes, task_metrics
from lvm.eval.tasks.report import write_report
from lvm_base.hardware import cpu_threads

ENCODE_BATCH = 16  # images the tokenizer encodes at once
NLL_BATCH = 4      # prompts scored per forward pass


def predict(engine, tok, prompt_codes, mode: str, samples: int, sampling, threads: int = 1) -> Image.Image:
    """The next image after `prompt_codes` ((n, tokens per image) codes), decoded by `mode` (see
    SuiteConfig.decoding)."""
    from lvm.generate.sampling import Sampling

    if mode == "greedy":
        sampling, n = Sampling(temperature=0), 1
    else:
        n = samples if mode == "mean" else 1
    with cpu_threads(threads):
        gen = engine.generate(prompt_codes, n_new=1, candidates=n, sampling=sampling)
    images = tok.decode_to_pil(gen.images[:, 0])
    return images[0] if len(images) == 1 else mean_image(images)


def _avg(ms: list[dict]) -> dict | None:
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} if ms else None


def _evaluate_task(task, eps: list[Episode], model, tok, engine, sampling, layout, plan, cfg: SuiteConfig,
                   bar, lpips=None, seconds: float | None = None) -> dict:
    """One task's result dict (JSON-ready but for "_grid": the first `grid_rows` episodes, PIL). With
    `seconds`, it stops after the episode whose successor would end past them (the first always runs)."""
    import time

    import torch

    from lvm.eval.perplexity import aggregate, target_nll

    metric, higher = METRIC[task]
    xs = list(range(1, cfg.context + 1)) if task in SEQUENTIAL else list(cfg.shots)
    n_main = xs[-1]
    per_metrics, per_base, per_recon, grid = [], {b: [] for b in BASELINES}, [], []
    per_x = {x: [] for x in xs}  # (NLL sum, tokens) of each episode
    t0 = time.perf_counter()
    for e, ep in enumerate(eps):
        used = time.perf_counter() - t0
        if seconds is not None and e and used + used / e > seconds:
            bar.update(len(eps) - e)
            break
        codes = tok.encode_images(ep.images, batch_size=ENCODE_BATCH)  # (n images, tokens per image)
        # perplexity of the target given 1..n_main context images / shots
        examples = [(codes[ep.prompt_indices(x)].numpy(), codes[-1:].numpy()) for x in xs]
        _, _, per = target_nll(model, examples, layout, batch_size=NLL_BATCH, precision=plan.precision)
        for x, p in zip(xs, per):
            per_x[x].append(p)
        # the prediction with the most context, decoded as the suite says for this task
        pred = predict(engine, tok, torch.from_numpy(examples[-1][0]), cfg.decode_mode(task), cfg.samples,
                       sampling, cfg.threads)
        recon = tok.decode_to_pil(codes[-1:])[0]
        truth = ep.target
        classes = seg_classes(ep.prompt(n_main)[1:-1:2]) if task == "segmentation" else None
        per_metrics.append(task_metrics(task, pred, truth, ep.hole, classes, lpips))
        per_recon.append(task_metrics(task, recon, truth, ep.hole, classes, lpips))
        for b, im in ep.baselines(n_main).items():
            if im is not None:
                per_base[b].append(task_metrics(task, im, truth, ep.hole, classes, lpips))
        if e < cfg.grid_rows:
            grid.append((ep.prompt(n_main), pred, truth))
        bar.update(1)
    agg = {x: aggregate(p) for x, p in per_x.items()}
    ppl = {x: a["perplexity"] for x, a in agg.items()}  # the release's figure: mean over episodes
    return {"metric": metric, "higher_is_better": higher, "episodes": len(per_metrics), "decoding": cfg.decode_mode(task),
            "n_context" if task in SEQUENTIAL else "shots": n_main,
            "ppl": ppl[n_main], "ppl_pooled": agg[n_main]["pooled_perplexity"], "model": _avg(per_metrics),
            "baselines": {b: _avg(v) for b, v in per_base.items() if v},
            "tokenizer_recon": _avg(per_recon),
            "ppl_curve": {"x": xs, "ppl": [ppl[x] for x in xs],
                          "ppl_pooled": [agg[x]["pooled_perplexity"] for x in xs],
                          "axis": "context frames" if task in SEQUENTIAL else "shots"},
            "_grid": grid}


def evaluate_model(model, tok, episodes: dict[str, list[Episode]], cfg: SuiteConfig, progress: bool = True,
                   log=print) -> dict:
    """Run the suite for one model + tokenizer. Returns {task: result dict} (JSON-ready) and keeps the
    decoded predictions of the first `grid_rows` episodes under result["_grid"] (PIL, not for JSON)."""
    import time
    from dataclasses import replace

    from tqdm import tqdm

    from lvm.generate.engine import Engine
    from lvm.generate.sampling import Sampling
    from lvm.tokens import TokenLayout
    from lvm_base.hardware import resolve

    layout = TokenLayout.from_model_config(model.config)
    w = next(model.parameters())
    plan = resolve(str(w.device), cfg.precision, "inference")
    # Same dtype and device: the engine shares the model's weights (the model still scores perplexity).
    engine = Engine(model, layout=layout, precision=plan.precision, device=plan.device, max_batch=cfg.samples,
                    consume=w.dtype == plan.dtype, speculative=None if cfg.speculative else False)
    sampling = Sampling(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)
    from tokenizer.lpips import maybe_lpips

    lpips = maybe_lpips(cfg.lpips_vgg, cfg.lpips_lin) if "colorization" in episodes else None
    if lpips is not None:
        lpips = lpips.to(plan.device)
    results = {}
    total = sum(len(v) for v in episodes.values())
    bar = tqdm(total=total, desc="eval tasks", unit="episode", disable=not progress, dynamic_ncols=True)
    deadline = None if cfg.max_minutes is None else time.perf_counter() + cfg.max_minutes * 60
    for i, (task, eps) in enumerate(episodes.items()):
        share = None if deadline is None else max(0.0, deadline - time.perf_counter()) / (len(episodes) - i)
        task_sampling = replace(sampling, temperature=cfg.temperature_of(task))
        res = results[task] = _evaluate_task(task, eps, model, tok, engine, task_sampling, layout, plan, cfg,
                                             bar, lpips, share)
        metric, b = res["metric"], best_baseline(res)
        log(f"{task}: ppl {res['ppl']:.1f}, {metric} {res['model'][metric]:.3f}"
            + (f" (best baseline {b[0]} {b[1]:.3f})" if b else ""))
    bar.close()
    return results


def run_suite(pairs, names, cfg: SuiteConfig, out, progress: bool = True, log=print) -> dict:
    """Evaluate each (model dir, tokenizer dir) on the same episodes; write the report into `out`, with the
    suite's configuration as suite_config.yaml. Returns write_report's dict (table, checks, files, results).

    `cfg.max_minutes` is the first model's budget: the models after it run the episodes it ran, so every
    column of the table scores the same episodes."""
    from dataclasses import replace
    from pathlib import Path

    from lvm.checkpoints import load_pair, tokenizer_for
    from lvm_base.config import save_config

    pairs = [(m, tokenizer_for(m, t)) for m, t in pairs]  # a model's recorded tokenizer where none is given
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "suite_config.yaml")
    named, episodes, size, run_cfg = [], None, None, cfg
    for (model_dir, tok_dir), name in zip(pairs, names):
        model, tok, _ = load_pair(model_dir, tok_dir, cfg.device, cfg.precision)
        if episodes is None or size != tok.resolution:
            size = tok.resolution
            log(f"rendering held-out episodes at {size} px ...")
            episodes = make_episodes(cfg, size)
        log(f"[{name}] {model_dir} + {tok_dir}")
        named.append((name, evaluate_model(model, tok, episodes, run_cfg, progress=progress, log=log)))
        if run_cfg.max_minutes is not None:  # the rest score what the first one scored, however long it takes
            episodes = {t: eps[:named[0][1][t]["episodes"]] for t, eps in episodes.items()}
            run_cfg = replace(cfg, max_minutes=None)
    meta = {"models": {n: {"model": str(m), "tokenizer": str(t)} for n, (m, t) in zip(names, pairs)}}
    return write_report(named, out, cfg, meta)
