"""The in-context task suite: does a model + tokenizer pair do tasks it is only *shown*, on unseen objects?

    suite = SuiteConfig(episodes=8, shots=[1, 3, 7])
    episodes = make_episodes(suite, size=tok.resolution)         # held-out objects, rendered here
    result = evaluate_model(model, tok, episodes, suite)          # {task: {...}}
    write_report([("demo", result)], "out/eval", suite)           # tasks.md, tasks.json, PNG plots, grids
    run_suite([(model_dir, tok_dir)], ["demo"], suite, "out/eval")  # all of it, from checkpoint directories

Tasks (rendered from *held-out* objects, episodes.py), each with its main metric (metrics.py):

    next_view     context views of an orbit         -> the next view           PSNR (dB)
    next_frame    context frames of a physics video -> the next frame          PSNR (dB)
    segmentation  k (rgb, segmentation) pairs + rgb -> its segmentation        mIoU (palette-snapped)
    depth         k (rgb, depth) pairs + rgb        -> its depth               abs-rel (and RMSE)
    colorization  k (gray, rgb) pairs + gray        -> rgb                     PSNR (and MSE)
    inpainting    k (rgb with black boxes, rgb) pairs + query -> rgb           PSNR inside the boxes

The modules: config.py (tasks, SuiteConfig), metrics.py, episodes.py, run.py
(decoding, the evaluation loop, run_suite), checks.py (quality bars), report.py (markdown, JSON, plots).
"""

from .checks import PPL_FALL, best_baseline, quality_checks
from .config import (ANALOGY, BASELINES, DECODINGS, MAX_CONTEXT, MAX_SHOTS, METRIC, QUERY, SEG_CLASSES,
                     SEQUENTIAL, TASKS, SuiteConfig)
from .episodes import Episode, make_episodes
from .metrics import (abs_rel, fg_iou, mean_image, miou, mse, psnr, rmse, seg_classes, seg_palette, snap_to_palette,
                      task_metrics)
from .report import markdown_table, save_grid, write_report
from .run import evaluate_model, predict, run_suite

__all__ = ["ANALOGY", "BASELINES", "DECODINGS", "Episode", "MAX_CONTEXT", "MAX_SHOTS", "METRIC",
           "PPL_FALL", "QUERY", "SEG_CLASSES", "SEQUENTIAL", "SuiteConfig", "TASKS", "abs_rel", "best_baseline",
           "evaluate_model", "fg_iou", "make_episodes", "markdown_table", "mean_image", "miou", "mse",
           "predict", "psnr", "quality_checks", "rmse", "run_suite", "save_grid", "seg_classes", "seg_palette",
           "snap_to_palette", "task_metrics", "write_report"]
