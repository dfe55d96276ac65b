"""Range checks of config values, declared once per dataclass, and YAML read within limits.

    @dataclass
    @checks(micro_batch=POSITIVE, lr=above(0), seq_len=optional(POSITIVE), betas=each(between(0, 1)))
    class TrainConfig: ...

`checks` goes *under* `@dataclass`: the dataclass then generates an `__init__` that calls the checks (before
the class's own `__post_init__`, whose cross-field checks may divide by a value the table keeps positive). So
a config is checked however it is made: from a YAML file, from `key=value` overrides (also under
`--print-config`), or in code. A bad value is a `FieldError` (a ConfigError, so an InputError) naming the
key; the loader (lvm_base.config) puts the dotted path of a nested config in front of it.

`safe_yaml` is the one YAML reader of config-like files: UTF-8 only, at most `MAX_YAML_BYTES`, and at most
`MAX_YAML_NODES` values once aliases are expanded. Aliases stay allowed (an anchor shared by two sources is
fair YAML), but what they expand to is counted on the composed node graph before any Python object is
built: a few hundred bytes of nested aliases ("billion laughs") expand to millions of values, which every
later walk of the config (coercion, saving it next to a run) would pay for.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from .errors import InputError

MAX_YAML_BYTES = 1 << 20  # a hand-written config or prompt file is a few KB
MAX_YAML_NODES = 100_000  # values after alias expansion; the largest shipped config has a few hundred
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (accelerate's set_seed) takes 0 .. 2**32 - 1


class ConfigError(InputError):
    """A config file or override that does not fit its dataclass (re-exported by lvm_base.config)."""


class YAMLSyntaxError(ConfigError):
    """Text that is not YAML (as opposed to YAML over the limits)."""


class FieldError(ConfigError):
    """A config value outside its declared range; `key` is the field (dotted for nested checks)."""

    def __init__(self, key: str, message: str):
        self.key, self.problem = key, message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class Rule:
    """What a good value is (`text`, for the error) and the test (`ok`, never raises)."""

    text: str
    ok: Callable[[Any], bool]

    def __call__(self, value) -> bool:
        return self.ok(value)


def _number(v) -> bool:
    # ints of any size are finite (math.isfinite would overflow on them); bools are not numbers here
    return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)))


def _kind(lo, hi=None) -> str:
    return "an integer" if isinstance(lo, int) and (hi is None or isinstance(hi, int)) else "a finite number"


def at_least(lo) -> Rule:
    whole = isinstance(lo, int)
    return Rule(f"{_kind(lo)} >= {lo}", lambda v: _number(v) and (not whole or isinstance(v, int)) and v >= lo)


def above(lo) -> Rule:
    return Rule(f"a finite number > {lo}", lambda v: _number(v) and v > lo)


def between(lo, hi, *, open_hi: bool = False, open_lo: bool = False) -> Rule:
    whole = isinstance(lo, int) and isinstance(hi, int) and not (open_lo or open_hi)
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"
    text = f"an integer in {lo}..{hi}" if whole else f"a finite number in {left}{lo}, {hi}{right}"

    def ok(v):
        if not _number(v) or (whole and not isinstance(v, int)):
            return False
        return (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)

    return Rule(text, ok)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.text}", lambda v: v is None or rule(v))


def each(rule: Rule) -> Rule:
    """Every item of a list / tuple, or every value of a mapping."""

    def ok(v):
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else None
        return items is not None and all(rule(x) for x in items)

    return Rule(f"a list (or mapping) of {rule.text}", ok)


FINITE = Rule("a finite number", _number)
POSITIVE = at_least(1)  # counts and sizes
NON_NEGATIVE = at_least(0)  # counts where 0 means "none" or "off"
PROBABILITY = between(0.0, 1.0)
SEED = between(0, SEED_MAX)


def checks(**table: Rule):
    """Class decorator (under @dataclass): the field -> Rule table, checked whenever an instance is made.
    Keys may be dotted (`"data.num_workers"`) to check a field of a nested config that this one owns."""

    def deco(cls):
        if dataclasses.is_dataclass(cls) and "__post_init__" not in cls.__dict__:
            raise TypeError(f"@checks goes under @dataclass on {cls.__name__} (its __init__ must call the checks)")
        annotated = set(getattr(cls, "__annotations__", {}))
        unknown = [k for k in table if k.split(".")[0] not in annotated]
        if unknown:
            raise TypeError(f"@checks on {cls.__name__}: no fields {unknown}")
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self):
            check_fields(self, table)
            if own is not None:
                own(self)

        cls.__field_rules__ = dict(table)
        cls.__post_init__ = __post_init__
        return cls

    return deco


def rules_of(cls) -> dict[str, Rule]:
    """The declared table of a config class ({} when it declares none)."""
    return dict(getattr(cls, "__field_rules__", {}))


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_fields(obj, table: dict[str, Rule]) -> None:
    """Raise FieldError for the first field of `obj` that breaks its rule."""
    for key, rule in table.items():
        value = _get(obj, key)
        if not rule(value):
            raise FieldError(key, f"must be {rule.text}, got {value!r}")


# ---- YAML within limits ----

def decode_utf8(data: bytes, name) -> str:
    """`data` as text; a one-line ConfigError naming `name` and the first bad byte otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line})") from None


def _expanded_size(node, limit: int, name) -> int:
    """Values under `node` with every alias expanded, stopping past `limit`; shared nodes are counted once
    per use, each node's own size once (memoised), so the walk costs the size of the file, not its expansion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(f"{name}: a YAML alias refers to the node that contains it (recursive alias)")
        open_.add(key)
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        total = 1
        for c in children:
            total += size(c)
            if total > limit:
                break
        open_.discard(key)
        sizes[key] = total
        return total

    return size(node)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads `1e4` and `3e-4` as numbers (YAML 1.1 wants `1.0e+4`), a whole
    one as an int, so that `max_steps=1e4` is 10000."""


def _scientific(loader, node):
    text = loader.construct_scalar(node)
    try:
        x = float(text.replace("_", ""))
    except ValueError:  # reachable only through an explicit tag
        raise yaml.constructor.ConstructorError(None, None, f"not a number: {text!r}", node.start_mark) from None
    return int(x) if x.is_integer() else x


_Loader.add_implicit_resolver("tag:lvm:scientific", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))
_Loader.add_constructor("tag:lvm:scientific", _scientific)


def safe_yaml(text: str, name, max_nodes: int = MAX_YAML_NODES):
    """`yaml.safe_load(text)` after checking that aliases expand to at most `max_nodes` values; any YAML
    error is one line naming `name`."""
    loader = None
    try:
        loader = _Loader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, max_nodes, name) > max_nodes:
            raise ConfigError(f"{name}: more than {max_nodes:,} values once YAML aliases are expanded "
                              "(an alias bomb?)")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise YAMLSyntaxError(f"{name}: not valid YAML ({first})") from None
    except RecursionError:
        raise ConfigError(f"{name}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path, max_bytes: int = MAX_YAML_BYTES):
    """The YAML document of the file `path` (None when empty), within the limits above."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes // 1024} KiB, too large for a config file")
    return safe_yaml(decode_utf8(data, path), path)
