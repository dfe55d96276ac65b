"""Property test of the config layer (lvm_base.config + validate) over random keys, types and values.

For TrainConfig, DataConfig and SuiteConfig, any list of `key=value` overrides (or any bytes as a YAML file)
either loads into a config whose every declared range holds (and whose int / float fields fit int64 / are
finite), or raises InputError with a message. Any other exception is a bug. Derandomized, so CI
sees the same examples on every run.
"""

from __future__ import annotations

import dataclasses
import math
import string
import types
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_builders.config import DataConfig, SourceConfig
from lvm.eval.tasks.config import SuiteConfig
from lvm.train.config import TrainConfig
from lvm_base.config import load_config
from lvm_base.errors import InputError, one_line
from lvm_base.validate import rules_of

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# Values as a user might type them: numbers at and past every edge, YAML's special words, strings, lists,
# mappings, broken YAML and anchors/aliases.
EDGE_NUMBERS = ["0", "-1", "1", "-256", "256", "1e30", "-1e30", "1e400", "nan", ".nan", ".inf", "-.inf", "0.5",
                "1.0", "99999999999999999999", str(2**63), str(2**63 - 1), str(2**32), "4294967295", "3e-4"]
WORDS = ["true", "false", "null", "~", "none", "abc", "''", "[]", "{}", "[1, 2]", "[0.9, 0.95]", "[.nan]",
         "{a: 1}", "{multiview: -1}", "[{type: builtin}]", "[{type: builtin, count: -3}]", "&a [*a]",
         "[&a [1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b], "
         "[*c,*c,*c,*c,*c,*c,*c,*c], [*c,*c,*c,*c,*c,*c,*c,*c]]", "[1", "{a: [}", "greedy", "auto", "png"]
scalars = st.one_of(
    st.integers(-2, 300).map(str),  # mostly in range: accepted configs get checked too, not only refusals
    st.floats(-0.5, 1.5).map(repr),
    st.sampled_from(EDGE_NUMBERS + WORDS),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=string.printable, max_size=12),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
                      max_leaves=6)


def _field_types(cls, prefix="") -> dict[str, object]:
    """Override key -> the field's type hint, nested configs included."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        out[prefix + f.name] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_field_types(hints[f.name], f"{prefix}{f.name}."))
    return out


def _typed(hint):
    """YAML text of a value of type `hint`, mostly near the ranges that matter (0, 1, small counts)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.just("null"), *[_typed(a) for a in args if a is not type(None)])
    if origin is typing.Literal:
        return st.sampled_from([str(a) for a in args])
    if hint is bool:
        return st.sampled_from(["true", "false"])
    if hint is int:
        return st.one_of(st.integers(-2, 5000).map(str), st.sampled_from(EDGE_NUMBERS))
    if hint is float:
        return st.one_of(st.floats(-1, 10).map(repr), st.sampled_from(EDGE_NUMBERS))
    if origin in (list, tuple) or hint in (list, tuple):
        item = _typed(args[0]) if args else st.one_of(st.integers(-2, 40).map(str), st.floats(-1, 2).map(repr))
        return st.lists(item, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
    return values


def _overrides(cls):
    """Overrides of `cls`: a known key with a value of its type or of any other, now and then an unknown key."""
    hints = _field_types(cls)
    known = st.sampled_from(sorted(hints)).flatmap(
        lambda k: st.builds(lambda v: f"{k}={v}", st.one_of(_typed(hints[k]), _typed(hints[k]), values)))
    unknown = st.builds(lambda k, v: f"{k}={v}", st.text(alphabet=string.ascii_lowercase + "._=", max_size=8), values)
    one = st.integers(0, 9).flatmap(lambda i: unknown if i == 0 else known)
    return st.lists(one, max_size=3)


def _source_entries():
    """A `sources` value of DataConfig: a YAML list of mappings with SourceConfig's keys and random values."""
    hints = _field_types(SourceConfig)
    item = st.sampled_from(sorted(hints)).flatmap(
        lambda k: st.builds(lambda v: f"{k}: {v}", st.one_of(_typed(hints[k]), _typed(hints[k]), values)))
    entry = st.lists(item, max_size=4).map(lambda xs: "{" + ", ".join(xs) + "}")
    return st.lists(entry, max_size=2).map(lambda xs: "sources=[" + ", ".join(xs) + "]")


def _scalar_ok(value, hint) -> bool:
    """An int field fits int64, a float field is finite (Optional and tuple hints included)."""
    if value is None:
        return True
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_scalar_ok(value, a) for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple and isinstance(value, tuple):
        return all(_scalar_ok(v, a) for v, a in zip(value, args))
    if hint is int:
        return isinstance(value, int) and -2**63 <= value < 2**63
    if hint is float:
        return isinstance(value, float) and math.isfinite(value)
    return True


def _check(cfg) -> None:
    """Every declared rule and typed scalar of `cfg` and of the configs inside it holds."""
    for key, rule in rules_of(type(cfg)).items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        assert rule(value), (type(cfg).__name__, key, value)
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        assert _scalar_ok(value, hints[f.name]), (type(cfg).__name__, f.name, value)
        for inner in value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(inner):
                _check(inner)


def _load_or_refuse(cls, path=None, overrides=()):
    try:
        cfg = load_config(cls, path, list(overrides))
    except InputError as e:  # the CLI prints one_line(e): user text inside (an override's value) may hold newlines
        assert one_line(e) and one_line(e) != type(e).__name__, repr(e)
        return None
    _check(cfg)
    return cfg


@SETTINGS
@given(_overrides(TrainConfig))
@example(["model=-1", "model.hidden_size=8"])  # found by a longer run: a sub-key under a scalar (TypeError)
@example(["model=[&a [*a]]"])
def test_train_overrides(overrides):
    _load_or_refuse(TrainConfig, "configs/train/tiny.yaml", overrides)


@SETTINGS
@given(_overrides(DataConfig), _source_entries())
def test_data_overrides(overrides, sources):
    _load_or_refuse(DataConfig, None, overrides + [sources])


@SETTINGS
@given(_overrides(SuiteConfig))
def test_suite_overrides(overrides):
    _load_or_refuse(SuiteConfig, None, overrides)


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig, SuiteConfig], ids=lambda c: c.__name__)
def test_random_bytes_as_a_config_file(cls, tmp_path):
    @SETTINGS
    @given(st.one_of(st.binary(max_size=200),
                     st.lists(st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(sorted(_field_types(cls))), values),
                              max_size=4).map(lambda ls: "\n".join(ls).encode())))
    @example(b"\x00")  # found by this test: PyYAML's reader refused it outside the loader's error handling
    @example(b"a: \xff")
    def check(data):
        path = tmp_path / "cfg.yaml"
        path.write_bytes(data)
        _load_or_refuse(cls, path)

    check()


def test_the_checker_sees_a_broken_rule():
    """`_check` would pass vacuously if it missed the declared rules; it must see these."""
    cfg = load_config(TrainConfig, "configs/train/tiny.yaml")
    cfg.micro_batch = 0
    with pytest.raises(AssertionError, match="micro_batch"):
        _check(cfg)
    cfg = load_config(TrainConfig, "configs/train/tiny.yaml")
    cfg.model.num_attention_heads = 0
    with pytest.raises(AssertionError, match="num_attention_heads"):
        _check(cfg)
    cfg = load_config(TrainConfig, "configs/train/tiny.yaml")
    cfg.lr = float("nan")
    with pytest.raises(AssertionError, match="lr"):
        _check(cfg)
