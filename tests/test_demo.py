"""`lvm demo`: every stage at a very small scale (32 px, K=64 tokenizer, one-layer LLaMA), skip and --fresh.

`lvm demo --quick` itself (128 px, the real small configs) is the slow test at the bottom.
"""

import json

import pytest

from lvm.checkpoints import demo_checkpoints
from lvm.demo import STAGES, Demo, DemoConfig

TINY_TOKENIZER = ["model.resolution=32", "model.hidden_channels=32", "model.channel_mult=[1, 2]",
                  "model.z_channels=8", "model.embed_dim=8", "model.codebook_size=64", "batch_size=4",
                  "warmup_steps=1", "save_every=100", "log_every=1"]
TINY_MODEL = ["model.hidden_size=48", "model.grid_heads=2", "model.intermediate_size=64",
              "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.codebook_size=64",
              "tokens_per_step=4096", "warmup_steps=1", "log_every=1", "save_every=100", "precision=fp32"]


def tiny_config(out) -> DemoConfig:
    return DemoConfig(out=str(out), workers=1, sequences=3, image_size=32, tokenizer_checkpoint=None,
                      tokenizer_overrides=TINY_TOKENIZER,
                      tokenizer_steps=2, tokenizer_minutes=1.0, train_overrides=TINY_MODEL, train_steps=2,
                      prompt_candidates=1, eval_episodes=1, shots=[1, 2], context=2, precision="fp32",
                      budget_minutes=1, shipped_model=None)


def test_demo_stages_tiny(tmp_path):
    out = tmp_path / "demo"
    logs = []
    times = Demo(tiny_config(out), progress=False, log=logs.append).run()
    assert list(times) == list(STAGES)
    for st in STAGES[:-1]:
        rec = json.loads((out / "stages" / f"{st}.json").read_text())
        assert rec["seconds"] >= 0 and "estimate_seconds" in rec
    # each stage announced an estimate before running
    assert sum("estimated ~" in ln for ln in logs) == len(STAGES)
    model, tok = demo_checkpoints(out)
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert (tok / "config.json").is_file() and (tok / "model.safetensors").is_file()
    assert not list(model.glob("trainer_state*"))
    # the checkpoints work together and fit the token contract
    from lvm.checkpoints import load_pair

    m, t, _ = load_pair(model, tok)
    assert m.config.vocab_size == t.codebook_size + 100 == 164
    # the data are training objects only
    from data_builders.objects import list_objects
    from lvm_base.tar import iter_tar_samples
    from data_builders.sequence import sample_meta

    held = {o.name for o in list_objects("heldout")}
    for shard in sorted((out / "work" / "images").glob("*.tar")):
        for s in iter_tar_samples(shard):
            meta = sample_meta(s)
            names = set(meta.get("objects", [])) | ({meta["object"]} if "object" in meta else set())
            assert not names & held, meta
    # report, figures, grids, resolved configs
    for f in ("report.md", "demo_config.yaml", "figures/tokenizer_loss.png", "figures/transformer_loss.png",
              "prompts/next_view.png", "prompts/segmentation.png", "prompts/colorization.png",
              "prompts/next_frame.png", "eval/tasks.md", "eval/tasks.json", "eval/tasks.png", "eval/ppl.png",
              "eval/suite_config.yaml", "work/images/data_config.yaml", "work/lvm-run/config.yaml",
              "work/tokenizer-run/config.yaml"):
        assert (out / f).is_file(), f
    import yaml

    suite = yaml.safe_load((out / "eval/suite_config.yaml").read_text())
    assert suite["samples"] == 8  # the demo's eval_samples
    # the demo's eval fits what the budget leaves after the stages before it
    spent = sum(json.loads((out / "stages" / f"{st}.json").read_text())["seconds"] for st in STAGES[:5])
    cfg = tiny_config(out)
    assert abs(suite["max_minutes"] - max(cfg.budget_minutes * 60 * 0.95 - spent - 1.0, 1.0) / 60) < 1e-3
    md = (out / "report.md").read_text()
    for st in STAGES[:-1]:
        assert f"| {st} |" in md
    assert "![transformer training loss](figures/transformer_loss.png)" in md
    assert "| segmentation |" in md and "Quality checks" in md
    for line in md.splitlines():  # every image the report links exists
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).is_file(), line

    # a rerun skips every finished stage (and rewrites only the report)
    logs.clear()
    before = (out / "stages" / "train.json").read_text()
    Demo(tiny_config(out), progress=False, log=logs.append).run()
    assert sum("skipped" in ln for ln in logs) == len(STAGES) - 1
    assert not any("changed since" in ln for ln in logs)
    logs.clear()
    cfg = tiny_config(out)
    cfg.train_steps = 5
    Demo(cfg, progress=False, log=logs.append).run(stages=("train",))
    assert any("train_steps changed since" in ln for ln in logs)
    assert (out / "stages" / "train.json").read_text() == before

    # a stage without its marker (killed) runs again; fresh redoes finished ones (here two, to stay fast)
    (out / "stages" / "eval.json").unlink()
    (out / "prompts" / "next_view.png").unlink()
    logs.clear()
    Demo(tiny_config(out), progress=False, log=logs.append).run(fresh=True, stages=("prompts", "eval", "report"))
    assert any(ln.startswith("[5/7] prompts: estimated") for ln in logs)
    assert any(ln.startswith("[6/7] eval: estimated") for ln in logs)
    assert (out / "prompts" / "next_view.png").is_file() and (out / "stages" / "eval.json").is_file()
    assert (out / "stages" / "train.json").read_text() == before  # not asked for: untouched

    # a shipped model beside the fresh one (here a copy of this run's, with its log and held-out tokens):
    # its rows in the prompt grids, its column in the task table, both runs' held-out curves in one plot
    import shutil

    from lvm.checkpoints import recorded_tokenizer, write_tokenizer_record

    assert recorded_tokenizer(model) == str(tok.resolve())  # the copied model points at the demo's tokenizer
    shipped = tmp_path / "shipped-small"
    shutil.copytree(model, shipped)
    write_tokenizer_record(shipped, tok)
    shutil.copytree(out / "work" / "tokens", shipped / "heldout_tokens")
    shutil.copyfile(out / "work" / "lvm-run" / "metrics.jsonl", shipped / "train_log.jsonl")
    cfg = tiny_config(out)
    cfg.shipped_model, cfg.heldout_every = str(shipped), 1
    Demo(cfg, progress=False, log=logs.append).run(fresh=True, stages=("train", "prompts", "eval", "report"))
    recs = [json.loads(x) for x in (out / "work" / "lvm-run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/next_image_ppl" in r for r in recs)  # the fresh run scored the shipped held-out tokens
    tasks = json.loads((out / "eval" / "tasks.json").read_text())
    assert [m["name"] for m in tasks["models"]] == ["demo", "shipped-small"]
    assert [m["tasks"]["segmentation"]["episodes"] for m in tasks["models"]] == [1, 1]
    md = (out / "report.md").read_text()
    assert "figures/scaling.png" in md and "**shipped-small**" in md
    assert (out / "figures" / "scaling.png").is_file()


def test_demo_cli_print_config_and_quick_overrides(capsys):
    from lvm.cli import main

    assert main(["demo", "--quick", "train_steps=7", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "train_steps: 7" in text and "out: runs/demo-quick" in text and "eval_episodes: 1" in text
    assert "tokenizer_checkpoint: null" in text  # --quick trains its own tokenizer
    assert main(["demo", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "out: runs/demo" in text and "budget_minutes: 17.0" in text
    assert "tokenizer_checkpoint: assets/demo-tokenizer" in text
    assert main(["demo", "--train-tokenizer", "--print-config"]) == 0
    assert "tokenizer_checkpoint: null" in capsys.readouterr().out


def test_demo_on_cuda_takes_the_cuda_overrides_and_the_command_line_wins(monkeypatch):
    import lvm.demo.config as dc

    assert dc.demo_config().sequences == 400 and dc.demo_config().eval_samples == 8  # this CPU
    monkeypatch.setattr(dc, "_on_cuda", lambda cfg: True)
    cfg = dc.demo_config(overrides=["eval_episodes=2"])
    assert cfg.sequences == 4000 and cfg.eval_episodes == 2 and cfg.train_steps == 20000
    assert cfg.eval_samples == 16
    assert "model.num_hidden_layers=12" in cfg.train_overrides
    assert dc.demo_config(quick=True).sequences == 16  # a smoke run stays one


def test_demo_with_a_shipped_tokenizer_copies_it_and_trains_on_its_codes(tmp_path):
    """The tokenizer stage takes the checkpoint named by tokenizer_checkpoint (byte-identical copy, no
    tokenizer training); the transformer gets its K; a checkpoint of another resolution is a one-line error."""
    import dataclasses

    from tiny import save_tiny_tokenizer
    from lvm_base.errors import InputError

    shipped = save_tiny_tokenizer(tmp_path / "shipped", codebook_size=48)
    out = tmp_path / "demo"
    cfg = dataclasses.replace(tiny_config(out), tokenizer_checkpoint=str(shipped))
    logs = []
    Demo(cfg, progress=False, log=logs.append).run(stages=("data", "tokenizer", "tokenize", "train"))
    model, tok = demo_checkpoints(out)
    for f in ("config.json", "model.safetensors"):
        assert (tok / f).read_bytes() == (shipped / f).read_bytes()
    assert not (out / "work" / "tokenizer-run").exists()
    rec = json.loads((out / "stages" / "tokenizer.json").read_text())
    assert rec["info"] == {"shipped": str(shipped), "codebook_size": 48}
    assert json.loads((model / "config.json").read_text())["vocab_size"] == 48 + 100
    assert any("the shipped one" in ln for ln in logs)
    with pytest.raises(InputError, match="resolution 32 != demo image_size 64"):
        Demo(dataclasses.replace(cfg, image_size=64, out=str(tmp_path / "d2")), progress=False,
             log=lambda *a: None).run(stages=("tokenizer",))
    with pytest.raises(InputError, match="not a tokenizer checkpoint"):
        Demo(dataclasses.replace(cfg, tokenizer_checkpoint=str(tmp_path), out=str(tmp_path / "d3")),
             progress=False, log=lambda *a: None).run(stages=("tokenizer",))


def test_demo_bad_config_is_one_line_error(tmp_path, capsys):
    from lvm.cli import main

    rc = main(["demo", f"out={tmp_path}", "no_such_key=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "no_such_key" in err and "\n" not in err


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """The real `lvm demo --quick` (128 px small tokenizer config, tiny LLaMA): about 3 minutes idle."""
    from lvm.cli import main

    out = tmp_path / "q"
    assert main(["demo", "--quick", f"out={out}", "--no-progress"]) == 0
    assert (out / "report.md").is_file() and (out / "model" / "config.json").is_file()
    data = json.loads((out / "eval" / "tasks.json").read_text())
    assert len(data["models"][0]["tasks"]) == 6


def test_train_minutes_shrink_only_when_the_budget_needs_it(tmp_path):
    """The transformer stage gives up minutes only when the stages before it (here: recorded as slow) and
    the estimates of those after it would pass the demo's budget."""
    import json

    from lvm.demo import Demo, DemoConfig

    # without the shipped lvm-small, whose prompts and eval would take their own share of the budget
    demo = Demo(DemoConfig(out=str(tmp_path), budget_minutes=20, train_minutes=10, shipped_model=None),
                log=lambda *a: None)
    (demo.work).mkdir(parents=True)
    (demo.work / "plan-tokenizer.json").write_text(json.dumps({"seconds_per_step": 0.3}))

    def spent(tokenize_s):
        for st, sec in (("data", 10), ("tokenizer", 240), ("tokenize", tokenize_s)):
            demo.marker(st).parent.mkdir(parents=True, exist_ok=True)
            demo.marker(st).write_text(json.dumps({"seconds": sec}))

    spent(60)
    assert demo.train_minutes() == 10  # a fast machine keeps the stage's share
    spent(360)  # 5 minutes more before training: what is left of the budget decides
    # on a CPU the stages after training are planned at the table's speed, whatever the probe read
    from lvm.demo.config import after_at_table_speed

    after = after_at_table_speed(demo.cfg)
    expected = (20 * 60 * 0.95 - (10 + 240 + 360) - after) / 60
    assert 1 < demo.train_minutes() < 10 and abs(demo.train_minutes() - expected) < 1e-6
    at_table = demo.estimate("eval", probe=False)
    for probe_s in (0.15, 0.6):  # a probe that reads the CPU twice as fast or slow as the table
        other = Demo(DemoConfig(out=str(tmp_path), budget_minutes=20, train_minutes=10, device="cpu",
                                shipped_model=None), log=lambda *a: None)
        (other.work / "plan-tokenizer.json").write_text(json.dumps({"seconds_per_step": probe_s}))
        assert other.estimate("eval", probe=False) != at_table  # the estimate follows the probe
        assert abs(other.train_minutes() - expected) < 1e-6  # the plan does not
