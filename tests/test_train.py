import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_builders.shards import write_token_shard
from lvm_base.config import load_config
from lvm.model import ModelConfig
from lvm.train.config import TrainConfig
from lvm.train.loop import TrainingDiverged, list_checkpoints, train

K = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def _sequences(rng, n, prefix):
    """Learnable visual sequences: a ramp (start + t) mod K over all the sequence's tokens."""
    for i in range(n):
        n_img = int(rng.choice([1, 2, 3]))
        start, stride = int(rng.integers(K)), 1
        toks = (start + stride * np.arange(n_img * 256)) % K
        yield f"{prefix}_{i}", toks.reshape(n_img, 256), {"kind": "test"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for s in range(2):
        write_token_shard(root / "train" / f"tokens-{s:06d}.tar", _sequences(rng, 30, f"t{s}"))
    write_token_shard(root / "eval" / "tokens-000000.tar", _sequences(rng, 10, "e"))
    return root


def _cfg(shards, out, **kw):
    over = [f"out_dir={out}", f"data.shards={shards / 'train'}", f"data.eval_shards={shards / 'eval'}",
            f"model.codebook_size={K}", "model.max_position_embeddings=512", "model.hidden_size=96",
            "model.intermediate_size=128", "model.num_hidden_layers=2", "model.num_attention_heads=4",
            "micro_batch=2", "lr=3e-3", "min_lr=3e-4", "warmup_steps=3", "peak_tflops=1.0", "log_every=5",
            "data.shuffle_buffer=16"] + [f"{k}={v}" for k, v in kw.items()]
    return load_config(TrainConfig, "configs/train/tiny.yaml", over)


def test_tiny_config_loss_falls_well_below_uniform(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "run", max_steps=25, eval_every=25, save_every=25)
    s = train(cfg, progress=False)
    losses = s["losses"]
    # the tiny config's grid_copy start already beats uniform codes (its copy of the previous image); training
    # still has to take the loss far below where it starts and below the uniform-code baseline ln(K)
    assert losses[25] < 0.5 * losses[1] and losses[25] < 0.5 * math.log(K), losses
    assert s["eval"]["eval/loss"] < 0.5 * math.log(K) and s["eval"]["eval/next_image_ppl"] < K / 4
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "final.json").is_file() and any((run / "tb").iterdir())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("mfu" in r and r["tokens_per_s"] > 0 for r in recs)


def test_saved_model_loads_with_plain_hf(shards, tmp_path):
    from transformers import LlamaForCausalLM

    cfg = _cfg(shards, tmp_path / "run", max_steps=2, save_every=1, keep_last=1, eval_every=100)
    train(cfg, progress=False)
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step-00000002"]  # keep_last=1 pruned step 1
    assert (ckpts[0] / "model.safetensors").is_file()
    m = LlamaForCausalLM.from_pretrained(ckpts[0])
    assert m.config.vocab_size == K + 100 and m.config.max_position_embeddings == 512
    assert not any(p.name.startswith(".") for p in ckpts[0].parent.iterdir())  # no temp dirs left
    card = (ckpts[0] / "README.md").read_text()
    assert f"K = {K}**" in card and "step 2" in card and "lvm prompt" in card


def test_plain_hf_generate_on_a_saved_checkpoint_never_emits_reserved_ids(shards, tmp_path):
    from transformers import GenerationConfig, LlamaForCausalLM

    cfg = _cfg(shards, tmp_path / "run", max_steps=1, save_every=1, eval_every=100)
    train(cfg, progress=False)
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    gc = json.loads((ckpt / "generation_config.json").read_text())
    assert gc["suppress_tokens"] == list(range(K, K + 100)) and gc["pad_token_id"] == K
    assert gc.get("bos_token_id") is None and gc.get("eos_token_id") is None and gc["top_k"] == 50
    m = LlamaForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():  # make the reserved ids by far the likeliest: only the saved config keeps them out
        m.lm_head.weight[:K] = 0
        m.lm_head.weight[K:] *= 100
    prompt = torch.randint(0, K, (2, 256))
    torch.manual_seed(0)
    out = m.generate(prompt, attention_mask=torch.ones_like(prompt))  # every default from generation_config.json
    new = out[:, 256:]
    assert new.shape == (2, 256) and int(new.max()) < K  # one image per call, image codes only
    unguarded = GenerationConfig(**{**gc, "suppress_tokens": [], "max_new_tokens": 32})
    raw = m.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=unguarded)[:, 256:]
    assert int(raw.max()) >= K  # the test can fail: without the saved config reserved ids come out


def test_resume_continues_exactly(shards, tmp_path):
    common = dict(max_steps=6, save_every=3, eval_every=100, deterministic="true", precision="fp32")
    full = train(_cfg(shards, tmp_path / "a", **common), progress=False)["losses"]
    first = train(_cfg(shards, tmp_path / "b", **common), progress=False, stop_at_step=3)  # "killed" at 3
    assert first["step"] == 3 and len(list_checkpoints(tmp_path / "b")) == 1
    second = train(_cfg(shards, tmp_path / "b", **common), resume=True, progress=False)["losses"]
    assert sorted(second) == [4, 5, 6]
    saved = load_config(TrainConfig, tmp_path / "b" / "config.yaml")
    assert saved.model.grid_rope and saved.model.grid_heads == 3  # the shipped tiny priors, kept on resume
    for k in (1, 2, 3):
        assert first["losses"][k] == full[k]
    for k in (4, 5, 6):
        assert second[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), (k, second[k], full[k])
    with pytest.raises(Exception, match="--resume"):
        train(_cfg(shards, tmp_path / "b", **common), progress=False)


def test_init_from_released_layout_trains_one_step(shards, tmp_path):
    # A tiny random model in the released LVM layout: vocab 8292 (K = 8192), untied embeddings, ctx 4096.
    torch.manual_seed(0)
    released = ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           codebook_size=8192, max_position_embeddings=4096)
    m = released.build()
    m.config.bos_token_id, m.config.eos_token_id = 1, 2  # as in the released config (meaningless ids)
    m.save_pretrained(tmp_path / "lvm7b-like")
    before = m.model.layers[0].mlp.up_proj.weight.clone()
    cfg = _cfg(shards, tmp_path / "ft", max_steps=1, eval_every=100, save_every=1, seq_len=512)
    s = train(cfg, init_from=str(tmp_path / "lvm7b-like"), progress=False)
    assert s["step"] == 1 and math.isfinite(s["losses"][1])
    from transformers import LlamaForCausalLM

    after = LlamaForCausalLM.from_pretrained(list_checkpoints(tmp_path / "ft")[-1])
    assert after.config.vocab_size == 8292 and not torch.equal(after.model.layers[0].mlp.up_proj.weight, before)
    saved = (tmp_path / "ft" / "config.yaml").read_text()
    assert "codebook_size: 8192" in saved and "hidden_size: 32" in saved


def test_nan_loss_stops_with_clear_message(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "run", max_steps=4, save_every=1, eval_every=100, lr=1e30, warmup_steps=1,
               grad_clip=1e30)
    with pytest.raises(TrainingDiverged, match="Last good checkpoint: .*step-0000000"):
        train(cfg, progress=False)
    for c in list_checkpoints(tmp_path / "run"):
        assert (c / "model.safetensors").is_file()


def test_cli_print_config_and_help():
    out = subprocess.run([sys.executable, "-m", "lvm", "train", "configs/train/tiny.yaml", "max_steps=7",
                          "--print-config"], capture_output=True, text=True)
    assert out.returncode == 0 and "max_steps: 7" in out.stdout and "hidden_size: 256" in out.stdout
    out = subprocess.run([sys.executable, "-m", "lvm", "train", "--help"], capture_output=True, text=True)
    assert "--init-from" in out.stdout and "--resume" in out.stdout and "--no-progress" in out.stdout


def test_shipped_tiny_yaml_trains_on_full_contract_shards(tmp_path):
    # configs/train/tiny.yaml as shipped (K = 8192, 4096-token rows); only data, run dir and length changed.
    rng = np.random.default_rng(0)
    items = [(f"s{i}", rng.integers(0, 8192, (int(rng.integers(1, 17)), 256)), {"kind": "test"}) for i in range(8)]
    write_token_shard(tmp_path / "tok" / "tokens-000000.tar", items)
    cfg = load_config(TrainConfig, "configs/train/tiny.yaml",
                      [f"data.shards={tmp_path / 'tok'}", f"out_dir={tmp_path / 'run'}", "max_steps=1",
                       "tokens_per_step=0", "peak_tflops=1"])
    assert cfg.model.codebook_size == 8192 and cfg.model.max_position_embeddings == 4096
    s = train(cfg, progress=False)
    assert s["step"] == 1 and abs(s["losses"][1] - math.log(8192)) < 1.0


def test_shards_from_another_tokenizer_are_refused(shards, tmp_path):
    rng = np.random.default_rng(0)
    items = [(f"s{i}", rng.integers(K, 8192, (1, 256)), {"kind": "test"}) for i in range(120)]
    write_token_shard(tmp_path / "big" / "tokens-000000.tar", items)
    cfg = _cfg(shards, tmp_path / "run", max_steps=1)
    cfg.data.shards = str(tmp_path / "big")
    with pytest.raises(Exception, match="another tokenizer"):
        train(cfg, progress=False)


def _timed_run(step_seconds, first_seconds=5.0, minutes=1.0, ceiling=1000, warmup=50):
    """TimeBudget on a fake clock: steps of `step_seconds` after a first one of `first_seconds`; returns
    the horizons it set (step -> max_steps) and the step the run ended at."""
    from types import SimpleNamespace

    from lvm.train.loop import TimeBudget

    now = [0.0]
    cfg = SimpleNamespace(max_minutes=minutes, warmup_steps=warmup, max_steps=ceiling)
    run = SimpleNamespace(cfg=cfg, ceiling=ceiling, step=0, accelerator=SimpleNamespace(num_processes=1))
    bar = SimpleNamespace(total=ceiling, refresh=lambda: None)
    budget, horizons = TimeBudget(run, clock=lambda: now[0]), {}
    while run.step < cfg.max_steps:
        now[0] += first_seconds if run.step == 0 else step_seconds
        run.step += 1
        before = cfg.max_steps
        budget.after_step(run, bar)
        if cfg.max_steps != before:
            horizons[run.step] = cfg.max_steps
    return horizons, run.step, budget.pace


def test_time_budget_fits_the_horizon_to_the_measured_pace():
    # 5 s first step, then 0.5 s: fitted after 20 more steps (t = 15 s) to the 45 s left = 90 steps
    horizons, end, pace = _timed_run(0.5)
    assert horizons == {21: 111} and end == 111 and pace == pytest.approx(0.5)
    # a fast machine stays at the configured max_steps (a ceiling); fits come before warmup's end
    assert _timed_run(0.01)[:2] == ({}, 1000)
    assert min(_timed_run(0.5, warmup=4)[0]) == 5
    # a machine that slows down is stopped at the deadline: the horizon becomes that step
    horizons, end, _ = _timed_run(0.5, first_seconds=70.0)
    assert horizons == {1: 1} and end == 1


def test_timed_run_ends_with_a_checkpoint_and_resumes_on_its_horizon(shards, tmp_path):
    from lvm.train.loop import Run

    res = train(_cfg(shards, tmp_path / "t", max_steps=100000, max_minutes=0.05, save_every=100000,
                     eval_every=100000), progress=False)
    assert 1 <= res["step"] == res["max_steps"] < 100000
    assert list_checkpoints(tmp_path / "t")[-1].name == f"step-{res['step']:08d}"
    assert json.loads((tmp_path / "t" / "final.json").read_text())["max_steps"] == res["step"]
    # the saved horizon comes back on resume for a timed run only (an untimed one keeps its config's)
    for minutes, expect in ((1.0, 40), (None, 500)):
        cfg = _cfg(shards, tmp_path / "t", max_steps=500)
        cfg.max_minutes = minutes
        fake = Run(cfg, *[None] * 9)
        Run.load_state_dict(fake, {"step": 7, "consumed_batches": 7, "tokens_seen": 1, "horizon": 40})
        assert cfg.max_steps == expect
