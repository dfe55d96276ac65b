from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from lvm_base.config import ConfigError, config_to_dict, load_config, save_config
from lvm.model import ModelConfig
from lvm.train.config import TrainConfig


@dataclass
class Inner:
    size: int = 4
    rate: float = 0.5


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    maybe: Optional[int] = None


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  size: 8\n")
    cfg = load_config(Outer, p, ["inner.rate=3e-4", "flag=true", "sizes=[3, 4]", "maybe=7", "mode=b"])
    assert cfg.name == "run" and cfg.inner.size == 8 and cfg.inner.rate == pytest.approx(3e-4)
    assert cfg.flag is True and cfg.sizes == [3, 4] and cfg.maybe == 7 and cfg.mode == "b"
    assert load_config(Outer, None, ["maybe=null"]).maybe is None
    assert load_config(Outer, None, ["inner.size=1e3"]).inner.size == 1000


def test_unknown_keys_list_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'bad_key'.*valid keys: flag, inner, maybe, mode, name, sizes"):
        load_config(Outer, None, ["bad_key=1"])
    with pytest.raises(ConfigError, match="valid keys: rate, size"):
        load_config(Outer, None, ["inner.nope=1"])
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match=f"{p}.*unknown key 'sise'"):
        load_config(Outer, p)


@pytest.mark.parametrize("override, msg", [
    ("inner.size=abc", "inner.size: .*could not be converted to Integer"),
    ("inner.size=1.5", "inner.size: .*could not be converted to Integer"),
    ("flag=maybe", "flag: .*not a valid bool"),
    ("mode=c", "mode: .*expected one of"),
    ("sizes=3", "sizes: .*not a ListConfig"),
    ("name", "key=value"),
    ("name.x=1", "has no sub-keys"),
])
def test_bad_values(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Outer, None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, p)
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)


def test_nested_config_by_path_and_saved_round_trip(tmp_path):
    cfg = load_config(TrainConfig, "configs/train/tiny.yaml", ["model.num_hidden_layers=2"])
    assert cfg.model.hidden_size == 256 and cfg.model.num_hidden_layers == 2
    saved = save_config(cfg, tmp_path / "run")
    assert yaml.safe_load(saved.read_text()) == config_to_dict(cfg)
    assert load_config(TrainConfig, saved) == cfg


@pytest.mark.parametrize("size, params_b", [("100m", 0.1), ("300m", 0.3), ("1b", 1.0), ("7b", 6.7)])
def test_official_model_sizes(size, params_b):
    m = load_config(ModelConfig, f"configs/model/{size}.yaml")
    hf = m.to_hf()
    assert hf.vocab_size == 8292 and hf.max_position_embeddings == 4096 and hf.rms_norm_eps == 1e-6
    assert hf.tie_word_embeddings is False and hf.pad_token_id == 8192
    h, i, n, v = m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.vocab_size
    params = n * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h
    assert params / 1e9 == pytest.approx(params_b, rel=0.35)
