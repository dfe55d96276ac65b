"""`lvm train` records the tokenizer of its shards; `lvm export` ships a run as a half-precision model
directory whose record still points at that tokenizer, with a model card and the run's log."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_builders.shards import write_token_shard
from lvm.checkpoints import TOKENIZER_KEY, recorded_tokenizer, tokenizer_for
from lvm.train.config import TrainConfig
from lvm.train.export import export_model
from lvm.train.loop import list_checkpoints, train
from tests.tiny import save_tiny_tokenizer
from lvm_base.config import load_config
from lvm_base.errors import InputError

K = 64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = root / "tok"
    save_tiny_tokenizer(tok, codebook_size=K)
    rng = np.random.default_rng(0)
    seqs = [(f"s{i}", rng.integers(0, K, size=(2, 256)), {"kind": "test"}) for i in range(8)]
    for name in ("train", "eval"):
        write_token_shard(root / name / "tokens-000000.tar", iter(seqs))
        (root / name / "tokens_info.json").write_text(json.dumps({"tokenizer": str(tok), "codebook_size": K}))
    over = [f"out_dir={root / 'run'}", f"data.shards={root / 'train'}", f"data.eval_shards={root / 'eval'}",
            f"model.codebook_size={K}", "model.max_position_embeddings=512", "model.hidden_size=64",
            "model.intermediate_size=96", "model.num_hidden_layers=1", "model.num_attention_heads=2",
            "model.grid_heads=0", "model.grid_copy=0", "max_steps=2", "save_every=2", "eval_every=2",
            "log_every=1", "warmup_steps=1", "peak_tflops=1.0", "trackers=none", "data.shuffle_buffer=4"]
    train(load_config(TrainConfig, "configs/train/tiny.yaml", over), progress=False)
    return root, tok


def test_a_trained_checkpoint_records_the_tokenizer_of_its_shards(run):
    root, tok = run
    ckpt = list_checkpoints(root / "run")[-1]
    assert json.loads((ckpt / "config.json").read_text())[TOKENIZER_KEY].startswith("../")
    assert recorded_tokenizer(ckpt) == str(tok.resolve())
    assert tokenizer_for(ckpt) == str(tok.resolve()) and tokenizer_for(ckpt, "other") == "other"
    starts = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert starts[0]["event"] == "start" and starts[0]["machine"] and starts[0]["time"] > 0


def test_export_writes_half_precision_weights_that_still_find_their_tokenizer(run):
    from safetensors import safe_open

    root, tok = run
    recipe = ["configs/train/lvm-small.yaml", "configs/model/small.yaml", "configs/data/lvm-small.yaml"]
    out = export_model(root / "run", root / "shipped" / "small", recipe=recipe)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert recorded_tokenizer(out) == str(tok.resolve())  # the relative record was rewritten for OUT
    card = (out / "README.md").read_text()
    assert "2 optimizer steps" in card and "recipe/model/small.yaml" in card and "figures/loss.png" in card
    # two configs named lvm-small.yaml both kept, and the train config's ../model/ include resolves in recipe/
    assert [(out / "recipe" / n).read_text() for n in ("train/lvm-small.yaml", "data/lvm-small.yaml")] == \
        [Path(f).read_text() for f in (recipe[0], recipe[2])]
    assert load_config(TrainConfig, out / "recipe" / "train" / "lvm-small.yaml").model.num_hidden_layers == 6
    assert (out / "figures" / "heldout_ppl.png").is_file() and (out / "generation_config.json").is_file()
    assert sorted(p.name for p in (out / "heldout_tokens").iterdir()) == ["tokens-000000.tar", "tokens_info.json"]
    assert (out / "train_log.jsonl").read_text() == (root / "run" / "metrics.jsonl").read_text()
    export_model(root / "run", out)  # an earlier export is replaced


def test_export_never_writes_into_a_folder_of_something_else(run, tmp_path):
    root, _ = run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not an earlier export"):
        export_model(root / "run", other)
    assert (other / "notes.txt").read_text() == "keep"


def test_export_refuses_two_recipe_files_of_one_name(run, tmp_path):
    root, _ = run
    twin = tmp_path / "data" / "lvm-small.yaml"
    twin.parent.mkdir()
    twin.write_text("a: 1\n")
    with pytest.raises(InputError, match="two files data/lvm-small.yaml"):
        export_model(root / "run", tmp_path / "out", recipe=["configs/data/lvm-small.yaml", twin])
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_record_asks_for_the_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError, match="--tokenizer"):
        tokenizer_for(tmp_path)
