"""The in-context task suite: metrics, baselines, episodes, and one tiny end-to-end evaluation."""

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image

from lvm.checkpoints import load_pair
from lvm.eval.tasks.checks import verdicts
from lvm.eval.tasks.report import does_summary
from lvm.eval import tasks as te
from lvm_base.errors import InputError
from data_builders.annotations import PALETTE


def _img(a):
    return Image.fromarray(np.asarray(a, np.uint8), "RGB")


def _seg(labels):
    """(H, W) palette indices -> segmentation image, as the renderer draws it."""
    return _img(PALETTE[np.asarray(labels)])


def test_miou_perfect_and_half():
    lab = np.zeros((8, 8), int)
    lab[:, 4:] = 1
    assert te.miou(_seg(lab), _seg(lab)) == 1.0
    pred = np.zeros((8, 8), int)  # all background: class 0 IoU 32/64, class 1 IoU 0
    assert te.miou(_seg(pred), _seg(lab)) == pytest.approx((0.5 + 0.0) / 2)


def test_miou_snaps_noisy_colors_to_the_palette():
    lab = np.zeros((16, 16), int)
    lab[4:12, 4:12] = 2
    truth = _seg(lab)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(truth, np.int64) + rng.integers(-20, 21, size=(16, 16, 3)), 0, 255)
    assert te.miou(_img(noisy), truth) == 1.0  # small color errors vanish after snapping
    # a wrong but valid palette color is a wrong class
    wrong = lab.copy()
    wrong[4:12, 4:8] = 3
    assert te.miou(_seg(wrong), truth) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_miou_with_the_prompts_classes_has_no_phantom_class():
    lab = np.zeros((16, 16), int)
    lab[4:12, 4:12] = 1
    truth = _seg(lab)
    pred = np.asarray(truth).copy()
    pred[4:12, 4] = PALETTE[1] // 2  # a blurred edge: half blue, half black, nearest to label 5's purple
    assert te.snap_to_palette(pred, te.seg_palette())[4, 4] == 6
    assert te.miou(_img(pred), truth) == pytest.approx((1.0 + 56 / 64 + 0.0) / 3)  # class 6: IoU 0
    classes = te.seg_classes([truth, _seg(np.full((4, 4), 2))])
    assert classes == [0, 1, 2]
    # snapped to what the prompt shows, the edge is background or object, as a reader of the map would see it
    m = te.miou(_img(pred), truth, classes=classes)
    assert m == pytest.approx((192 / 200 + 56 / 64) / 2)
    assert te.task_metrics("segmentation", _img(pred), truth, classes=classes) == {
        "miou": pytest.approx(m), "miou_palette": pytest.approx(te.miou(_img(pred), truth)),
        "fg_iou": pytest.approx(te.fg_iou(_img(pred), truth, classes=classes))}


def test_foreground_iou_is_object_vs_background_whatever_the_label():
    lab = np.zeros((8, 8), int)
    lab[2:6, 2:6] = 1                                  # a 16-pixel object
    wrong_label = np.where(lab == 1, 2, 0)             # right place, wrong colour: mIoU 1/3, fg IoU 1
    assert te.fg_iou(_seg(wrong_label), _seg(lab)) == 1.0
    assert te.miou(_seg(wrong_label), _seg(lab)) == pytest.approx(1 / 3)
    shifted = np.zeros((8, 8), int)
    shifted[2:6, 4:8] = 1                              # half of it overlaps: 8 / 24
    assert te.fg_iou(_seg(shifted), _seg(lab)) == pytest.approx(8 / 24)
    empty = np.zeros((8, 8), int)
    assert te.fg_iou(_seg(empty), _seg(lab)) == 0.0 and te.fg_iou(_seg(empty), _seg(empty)) == 1.0


def test_snap_to_palette_nearest():
    pal = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    img = np.array([[[10, 10, 10], [200, 30, 0], [20, 0, 180]]], np.uint8)
    assert te.snap_to_palette(img, pal).tolist() == [[0, 1, 2]]


def test_abs_rel_and_rmse():
    t = np.zeros((4, 4, 3))
    t[:2] = 200  # foreground rows; background 0 is ignored by abs-rel
    p = t.copy()
    p[:2] = 100
    assert te.abs_rel(_img(p), _img(t)) == pytest.approx(0.5)
    assert te.abs_rel(_img(t), _img(t)) == 0.0
    assert te.rmse(_img(p), _img(t)) == pytest.approx(math.sqrt(0.5 * (100 / 255) ** 2))
    with pytest.raises(ValueError):
        te.abs_rel(_img(t), _img(np.zeros((4, 4, 3))))


def test_psnr_inside_hole_only():
    t = np.full((8, 8, 3), 100)
    p = t.copy()
    p[:, :4] = 0  # wrong outside the hole
    hole = np.zeros((8, 8), bool)
    hole[:, 4:] = True
    p[:, 4:] = 100 + 51  # error 0.2 inside the hole -> 10*log10(1/0.04) dB
    assert te.psnr(_img(p), _img(t), hole) == pytest.approx(10 * math.log10(1 / 0.2 ** 2), abs=1e-6)
    assert te.psnr(_img(t), _img(t)) == 100.0
    m = te.task_metrics("inpainting", _img(p), _img(t), hole)
    assert m["hole_psnr"] > m["psnr"]


def test_psnr_is_the_tokenizers_on_the_same_images():
    """The suite and `lvm tokenizer eval` share one PSNR: equal values, identical images capped alike."""
    import torch

    from tokenizer.evaluate import PSNR_MAX_DB, psnr_per_image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 8, 3))
    b = np.clip(a + rng.integers(-30, 31, (8, 8, 3)), 0, 255)

    def chw(x):
        return torch.from_numpy(np.asarray(x, np.float64) / 255).permute(2, 0, 1)[None]

    mse = float((((a - b) / 255.0) ** 2).mean())
    assert te.psnr(_img(a), _img(b)) == pytest.approx(float(psnr_per_image(chw(a), chw(b))[0]), abs=1e-9)
    # torchmetrics scales to dB by a float32 1 / ln(10): about 5e-8 of the value
    assert te.psnr(_img(a), _img(b)) == pytest.approx(10 * math.log10(1 / mse), rel=1e-7)
    assert float(psnr_per_image(chw(a), chw(a))[0]) == te.psnr(_img(a), _img(a)) == PSNR_MAX_DB == 100.0


def test_baselines_sequential_and_analogy():
    frames = [_img(np.full((4, 4, 3), 10 * i)) for i in range(8)]
    ep = te.Episode("next_view", frames)
    assert ep.prompt(3) == frames[4:7] and ep.target is frames[7]
    b = ep.baselines(3)
    assert b["copy_last"] is frames[6] and b["copy_last_answer"] is None
    assert np.asarray(b["mean_image"])[0, 0, 0] == 50  # mean of 40, 50, 60
    imgs = [_img(np.full((4, 4, 3), i)) for i in range(16)]
    ep = te.Episode("depth", imgs)
    p = ep.prompt(2)
    assert p == imgs[10:15]  # A6 A6' A7 A7' B
    b = ep.baselines(2)
    assert b["copy_last"] is imgs[14] and b["copy_last_answer"] is imgs[13]
    assert np.asarray(b["mean_image"])[0, 0, 0] == 12  # mean of answers 11 and 13


def test_best_baseline_checks_and_verdicts():
    res = {"metric": "abs_rel", "higher_is_better": False, "model": {"abs_rel": 0.2},
           "baselines": {"copy_last": {"abs_rel": 0.5}, "mean_image": {"abs_rel": 0.3}},
           "ppl_curve": {"x": [1, 7], "ppl": [50.0, 20.0], "axis": "shots"}}
    assert te.best_baseline(res) == ("mean_image", 0.3)
    checks = dict((c, ok) for c, ok, _ in te.quality_checks({"depth": res}))
    assert checks["depth beats every baseline"] and checks["depth perplexity falls as shots grow (by >= 2%)"]
    assert verdicts({"depth": res}) == {"depth": True}
    res["ppl_curve"]["ppl"] = [4.499, 4.497]  # a flat curve drifting in the third digit is not a fall
    checks = dict((c, ok) for c, ok, _ in te.quality_checks({"depth": res}))
    assert not checks["depth perplexity falls as shots grow (by >= 2%)"]
    res["model"]["abs_rel"] = 0.4  # beats copy last (0.5), not the mean image (0.3): does not do the task
    checks = dict((c, ok) for c, ok, _ in te.quality_checks({"depth": res}))
    assert not checks["depth beats every baseline"] and verdicts({"depth": res}) == {"depth": False}
    ceiling = "depth: the tokenizer's reconstruction of the truth beats every baseline (the bar is reachable)"
    assert ceiling not in checks  # no reconstruction measured: no ceiling line
    res["tokenizer_recon"] = {"abs_rel": 0.35}
    assert not dict((c, ok) for c, ok, _ in te.quality_checks({"depth": res}))[ceiling]
    res["tokenizer_recon"] = {"abs_rel": 0.1}
    assert dict((c, ok) for c, ok, _ in te.quality_checks({"depth": res}))[ceiling]
    summary = does_summary("m", {"depth": res})
    assert "m does 0 of 1 tasks" in summary and "depth: does **not** do it: abs_rel 0.400 vs mean image 0.300" in summary
    # segmentation is judged by foreground IoU; mIoU keeps its own bar beside it
    seg = {"metric": "fg_iou", "higher_is_better": True, "model": {"fg_iou": 0.7, "miou": 0.6},
           "baselines": {"copy_last_answer": {"fg_iou": 0.4, "miou": 0.65}}, "tokenizer_recon": {"fg_iou": 0.8},
           "ppl_curve": {"x": [7], "ppl": [3.0], "axis": "shots"}}
    checks = dict((c, ok) for c, ok, _ in te.quality_checks({"segmentation": seg}))
    assert checks["segmentation beats every baseline"] and not checks["segmentation mIoU >= 0.75"]


def test_suite_config_validates():
    with pytest.raises(InputError):
        te.SuiteConfig(shots=[0, 3])
    with pytest.raises(InputError):
        te.SuiteConfig(shots=[8])
    with pytest.raises(InputError):
        te.SuiteConfig(tasks=["nope"])
    with pytest.raises(InputError, match="max_minutes"):
        te.SuiteConfig(max_minutes=0)
    with pytest.raises(InputError, match="task_temperature"):
        te.SuiteConfig(task_temperature={"nope": 0.5})
    with pytest.raises(InputError, match="task_temperature"):
        te.SuiteConfig(task_temperature={"depth": -1})


def test_inpainting_samples_cooler_unless_one_temperature_is_asked():
    from lvm.commands import eval_tasks
    from lvm.eval.tasks.report import _temperatures

    cfg = te.SuiteConfig()
    assert cfg.temperature_of("inpainting") == 0.7 and cfg.temperature_of("depth") == cfg.temperature == 1.0
    assert _temperatures(cfg) == "1 (inpainting 0.7)"
    assert _temperatures(te.SuiteConfig(tasks=["depth"])) == "1"
    p = argparse.ArgumentParser()
    eval_tasks.add_arguments(p)
    assert p.parse_args([]).temperature is None and "inpainting 0.7" in p.format_help()


def tiny_pair(tmp_path, seed=0):
    """A random tiny tokenizer (32 px, 256 codes, K=64) and a random tiny LLaMA, saved to disk."""
    import torch

    from lvm.model import ModelConfig
    from tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(seed)
    tok = VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8,
                            codebook_size=64))
    tok.save_pretrained(tmp_path / f"tok{seed}")
    model = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        codebook_size=64).build()
    model.save_pretrained(tmp_path / f"lm{seed}")
    return tmp_path / f"lm{seed}", tmp_path / f"tok{seed}"


def test_episodes_are_heldout_and_deterministic():
    cfg = te.SuiteConfig(tasks=["next_view", "segmentation", "inpainting"], episodes=1, context=3)
    a = te.make_episodes(cfg, size=32)
    b = te.make_episodes(cfg, size=32)
    from data_builders.objects import list_objects

    held = {o.name for o in list_objects("heldout")}
    assert a["next_view"][0].info["object"] in held
    assert set(a["segmentation"][0].info["objects"]) <= held
    assert len(a["next_view"][0].images) == 4 and len(a["segmentation"][0].images) == 16
    for t in a:
        for x, y in zip(a[t][0].images, b[t][0].images):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    ep = a["inpainting"][0]
    hole = ep.hole
    assert hole.any() and not hole.all()
    assert (np.asarray(ep.images[14])[hole] == 0).all()  # the query's boxes are black where the hole is


def test_blank_orbits_are_redrawn():
    """random_168's vertices are NaN: it renders nothing, and a blank orbit's frames are all identical."""
    from data_builders import render
    from data_builders.objects import list_objects
    from lvm.eval.tasks.episodes import MIN_VISIBLE_PIXELS, _orbit

    objs = list_objects("heldout")
    broken = [o for o in objs if o.name == "random_168"]
    assert broken, "the catalog's broken mesh moved: pick another blank object"
    blank = render.render_orbit(broken[0], size=32, seed=0, views=2)
    assert max(int(v.mask.sum()) for v in blank["views"]) == 0
    pool = broken + [o for o in objs if o.name != "random_168"][:1]
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(2) == 0)  # draws the blank one first
    ep = _orbit(pool, 32, seed=0, views=2, rng=np.random.default_rng(seed))
    assert ep.info["object"] != "random_168"
    assert not np.array_equal(np.asarray(ep.images[0]), np.asarray(blank["images"][0]))
    assert MIN_VISIBLE_PIXELS > 0


def test_evaluate_and_report_end_to_end(tmp_path, monkeypatch, capsys):
    """Tiny random model + tokenizer through the whole suite, files written and sane; colorization's LPIPS
    from the weight files given (a randomly initialised LPIPS stands in for the 500 MB VGG file here)."""
    import tokenizer.lpips as tl
    from lvm.cli import main

    given = []

    def random_lpips(vgg, lin):
        given.append((vgg, lin))
        lp = tl.LPIPS()
        for layer in lp.lins:  # LPIPS's linear layers are non-negative: distances are >= 0
            layer.weight.data.abs_()
        return lp

    monkeypatch.setattr(tl, "maybe_lpips", random_lpips)
    lm, tok = tiny_pair(tmp_path, 0)
    out = tmp_path / "eval"
    rc = main(["eval", "tasks", "--model", str(lm), "--tokenizer", str(tok), "--episodes", "1", "--shots", "1,2",
               "--context", "2", "--precision", "fp32", "--out", str(out), "--no-progress",
               "--lpips-vgg", "vgg.pth", "--lpips-lin", "lin.pth", "--top-p", "0.8"])
    assert rc == 0 and given == [("vgg.pth", "lin.pth")]
    printed = capsys.readouterr().out
    assert "model does " in printed and "segmentation: does" in printed  # the plain verdict, also in tasks.md
    data = json.loads((out / "tasks.json").read_text())
    assert [m["name"] for m in data["models"]] == ["model"]
    tasks = data["models"][0]["tasks"]
    assert set(tasks) == set(te.TASKS)
    for task, r in tasks.items():
        assert r["ppl"] > 1 and math.isfinite(r["ppl"])
        assert 1 < r["ppl_pooled"] <= r["ppl"] * (1 + 1e-9)  # one episode: equal; more: pooled is lower
        assert r["metric"] in r["model"] and r["metric"] in r["tokenizer_recon"]
        assert len(r["ppl_curve"]["ppl"]) == 2
        assert "copy_last" in r["baselines"] and "mean_image" in r["baselines"]
        assert ("copy_last_answer" in r["baselines"]) == (task in te.ANALOGY)
    # a random 64-code model is close to uniform: perplexity near K
    assert 20 < tasks["segmentation"]["ppl"] < 200
    for f in ("tasks.md", "tasks.png", "ppl.png", "grids/model-segmentation.png", "suite_config.yaml"):
        assert (out / f).is_file(), f
    md = (out / "tasks.md").read_text()
    assert "| segmentation |" in md and "## What model does" in md and "LPIPS: n/a" not in md
    assert tasks["segmentation"]["metric"] == "fg_iou" and "miou" in tasks["segmentation"]["model"]
    for k in ("model", "tokenizer_recon"):
        assert tasks["colorization"][k]["lpips"] > 0 and "mse" in tasks["colorization"][k]
    assert tasks["colorization"]["baselines"]["copy_last"]["lpips"] > 0
    assert tasks["segmentation"]["decoding"] == "greedy" and tasks["depth"]["decoding"] == "mean"
    import yaml

    saved = yaml.safe_load((out / "suite_config.yaml").read_text())
    assert saved["device"] == "cpu" and saved["precision"] == "fp32"  # what auto / the flags resolved to
    assert saved["top_p"] == 0.8 and saved["top_k"] == te.SuiteConfig().top_k
    assert "top-p 0.8" in md and "temperature 1 (inpainting 0.7)" in md
    assert saved["task_temperature"] == {"inpainting": 0.7}


def test_suite_config_precisions():
    assert te.SuiteConfig(precision="fp16").precision == "fp16" and te.SuiteConfig().precision == "auto"
    with pytest.raises(InputError, match="precision must be one of"):
        te.SuiteConfig(precision="float64")


def test_predict_modes(tmp_path):
    """greedy = the temperature-0 image; mean = the pixel mean of the sampled candidates, which differ."""
    import torch

    from lvm.generate.engine import Engine
    from lvm.generate.sampling import Sampling
    from lvm.tokens import TokenLayout

    lm, tokp = tiny_pair(tmp_path, 0)
    model, tok, _ = load_pair(lm, tokp)
    engine = Engine(model, layout=TokenLayout.from_vocab_size(model.config.vocab_size), precision="fp32",
                    max_batch=4)
    prompt = torch.randint(0, 64, (2, tok.codes_per_image))
    s = Sampling(temperature=1.0, top_k=0, seed=3)
    greedy = te.predict(engine, tok, prompt, "greedy", 4, s)
    ref = tok.decode_to_pil(engine.generate(prompt, sampling=Sampling(temperature=0)).images[:, 0])[0]
    assert np.array_equal(np.asarray(greedy), np.asarray(ref))
    codes = engine.generate(prompt, candidates=4, sampling=s).images[:, 0]
    cands = tok.decode_to_pil(codes)
    assert len({np.asarray(c).tobytes() for c in cands}) > 1
    mean = np.asarray(te.predict(engine, tok, prompt, "mean", 4, s)).astype(float)
    assert np.abs(mean - np.mean([np.asarray(c, float) for c in cands], 0)).max() <= 0.5
    one = te.predict(engine, tok, prompt, "sample", 4, s)
    # the first candidate's codes, decoded alone (a bf16 decoder's batch of 1 vs 4 rounds pixels differently)
    assert np.array_equal(np.asarray(one), np.asarray(tok.decode_to_pil(codes[:1])[0]))
    with pytest.raises(InputError, match="decoding"):
        te.SuiteConfig(decoding={"depth": "blurry"})


def test_compare_two_models(tmp_path):
    from lvm.cli import main

    lm, tok = tiny_pair(tmp_path, 0)
    lm2, tok2 = tiny_pair(tmp_path, 1)
    out = tmp_path / "eval"
    rc = main(["eval", "tasks", "--model", str(lm), "--tokenizer", str(tok), "--compare", str(lm2),
               "--compare-tokenizer", str(tok2), "--names", "a,b", "--tasks", "next_view,depth", "--episodes", "1",
               "--shots", "1", "--context", "1", "--precision", "fp32", "--out", str(out), "--no-progress"])
    assert rc == 0
    data = json.loads((out / "tasks.json").read_text())
    a, b = data["models"]
    assert (a["name"], b["name"]) == ("a", "b") and set(a["tasks"]) == {"next_view", "depth"}
    assert a["tasks"]["depth"]["ppl"] != b["tasks"]["depth"]["ppl"]  # different random models
    # baselines are computed on the same rendered episodes for both
    assert a["tasks"]["depth"]["baselines"] == b["tasks"]["depth"]["baselines"]
    md = (out / "tasks.md").read_text()
    assert "a ppl" in md and "b ppl" in md
    assert (out / "grids" / "b-depth.png").is_file()


def test_max_minutes_cuts_each_tasks_episodes_but_never_the_first(tmp_path):
    """A budget too small for anything still runs one episode per task, and the report says how many ran
    of how many; a budget far above the suite's work runs them all."""
    from lvm.cli import main

    lm, tok = tiny_pair(tmp_path, 0)
    args = ["eval", "tasks", "--model", str(lm), "--tokenizer", str(tok), "--tasks", "next_view,depth",
            "--episodes", "3", "--shots", "1", "--context", "1", "--samples", "2", "--precision", "fp32",
            "--no-progress"]
    assert main(args + ["--max-minutes", "0.0001", "--out", str(tmp_path / "cut")]) == 0
    tasks = json.loads((tmp_path / "cut" / "tasks.json").read_text())["models"][0]["tasks"]
    assert {t: r["episodes"] for t, r in tasks.items()} == {"next_view": 1, "depth": 1}
    assert "(of 3; the suite's 0.0 minutes cut the rest): next_view 1, depth 1" in (tmp_path / "cut" / "tasks.md").read_text()
    assert main(args + ["--max-minutes", "60", "--out", str(tmp_path / "all")]) == 0
    tasks = json.loads((tmp_path / "all" / "tasks.json").read_text())["models"][0]["tasks"]
    assert {t: r["episodes"] for t, r in tasks.items()} == {"next_view": 3, "depth": 3}
    assert "3 held-out episodes per task;" in (tmp_path / "all" / "tasks.md").read_text()


def test_eval_tasks_mismatched_pair_is_one_line_error(tmp_path, capsys):
    import torch

    from lvm.cli import main
    from tokenizer import VQGAN, VQGANConfig

    lm, _ = tiny_pair(tmp_path, 0)
    torch.manual_seed(0)
    VQGAN(VQGANConfig(resolution=32, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(), mid_attention=False, z_channels=8, embed_dim=8,
                      codebook_size=128)).save_pretrained(tmp_path / "tok128")
    rc = main(["eval", "tasks", "--model", str(lm), "--tokenizer", str(tmp_path / "tok128"), "--out",
               str(tmp_path / "e"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 2 and len(err) == 1 and "128 codes" in err[0]
