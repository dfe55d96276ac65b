"""Config loading in one place: dataclass configs <- YAML file <- `key=value` overrides, through OmegaConf.

    cfg = load_config(TrainConfig, "configs/train/tiny.yaml", ["model.num_hidden_layers=4", "lr=3e-4"])

OmegaConf's structured configs hold the types: the dataclass is the schema, the YAML file and each override
merge into it, and a wrong type or an unknown key is refused there. Around it, this module adds what a
command line needs:
- every error is one line naming the key (unknown keys list the valid ones), and the file or override;
- YAML is read by lvm_base.validate (UTF-8, size and alias-expansion limits) and override values are YAML
  (`true`, `[1, 2]`, `null`, `1e4`);
- a nested config may be a path to its own YAML file (`model: ../model/tiny.yaml`, or `model=...yaml`);
- every integer fits int64 and every float is finite; `${...}` interpolations are refused (a config file
  could otherwise copy environment variables into the configs saved next to a run);
- the dataclasses are built by their own `__init__`, so their declared ranges (lvm_base.validate.checks)
  and cross-field checks run, and a range error gets the nested key's dotted path.
`save_config` writes the resolved config (YAML) next to a run's outputs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, TupleConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import InputError
from .files import atomic_write_text
from .validate import ConfigError, FieldError, YAMLSyntaxError, read_yaml_file, safe_yaml

T = TypeVar("T")

# Project root: shipped configs (configs/...) resolve from here when not found relative to the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAX_INCLUDE_DEPTH = 8  # nested config files inside nested config files; a loop stops here


def find_config_file(path: str | Path) -> Path:
    return project_path(path, Path.is_file)


def project_path(path: str | Path, exists=Path.exists) -> Path:
    """`path` as given, else relative to the project root where only that exists (shipped configs and
    assets resolve from any working directory)."""
    path = Path(path)
    if not exists(path) and not path.is_absolute() and exists(PROJECT_ROOT / path):
        return PROJECT_ROOT / path
    return path


def read_yaml_mapping(path: Path, what: str = "file", expected: str = "a YAML mapping") -> dict:
    """The top-level mapping of a YAML file (empty file -> {}); one-line ConfigError naming `path` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    loaded = read_yaml_file(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return loaded


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = safe_yaml(raw, f"override '{text}'") if raw != "" else ""
    except YAMLSyntaxError:  # not YAML: the text as it is (a string field takes it)
        value = raw
    return key.split("."), value


def _join(where: str, key) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)


def _dataclass_in(hint):
    """The dataclass a field holds (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _include(value: str, cls, base: Path | None, where: str, depth: int) -> dict:
    """The mapping of the config file `value` names (looked up beside the including file first)."""
    if depth >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{where}: config files nested more than {MAX_INCLUDE_DEPTH} deep (a file including itself?)")
    for path in ([base / value] if base else []) + [find_config_file(value)]:
        if path.is_file():
            data = read_yaml_mapping(path, "config file", "a mapping of config keys at the top level")
            return _inline(data, cls, path.parent, str(path), depth + 1)
    raise ConfigError(f"{where}: config file '{value}' not found")


def _inline(data: dict, cls, base: Path | None, where: str, depth: int = 0) -> dict:
    """`data` with every nested config given as a file path replaced by that file's mapping."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        hint = hints.get(key) if isinstance(key, str) else None
        sub, at = _dataclass_in(hint), _join(where, key)
        items = typing.get_args(hint) if typing.get_origin(hint) is list else ()
        if sub and isinstance(value, (str, dict)):
            out[key] = (_include(value, sub, base, at, depth) if isinstance(value, str)
                        else _inline(value, sub, base, at, depth))
        elif items and dataclasses.is_dataclass(items[0]) and isinstance(value, list):
            out[key] = [_include(v, items[0], base, _join(at, i), depth) if isinstance(v, str) else v
                        for i, v in enumerate(value)]
    return out


def _one_line(e: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line message as `key: problem`; unknown keys list the valid ones."""
    key = e.full_key or ""
    cls = e.object_type if dataclasses.is_dataclass(e.object_type) else None
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and cls is not None:
        at = key.rpartition(".")[0] if "." in key else ""
        valid = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
        return f"unknown key '{e.key}'{' in ' + at if at else ''}; valid keys: {valid}"
    problem = (str(e.msg) if e.msg else type(e).__name__).splitlines()[0]
    problem = problem.replace("'$VALUE' of type '$VALUE_TYPE'", repr(e.value))  # OmegaConf leaves these in
    return f"{key}: {problem}" if key else problem


def _merge(cfg: DictConfig, data, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_one_line(e)}") from None
    except (OverflowError, ValueError, TypeError) as e:  # e.g. an int past float's range into a float field
        raise ConfigError(f"{where}: {e}") from None


def _override(cfg: DictConfig, text: str) -> DictConfig:
    """`cfg` with one `key=value` override merged in; a nested config given whole (a mapping or a file path)
    replaces the one there."""
    keys, value = parse_override(text)
    node, cls = cfg, None
    for i, key in enumerate(keys):
        cls = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override '{text}': '{'.'.join(keys[:i])}' has no sub-keys")
        if key not in node:
            under = f" (under '{'.'.join(keys[:i])}')" if i else ""
            valid = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
            raise ConfigError(f"unknown key '{key}' in override '{text}'{under}; valid keys: {valid}")
        if i < len(keys) - 1:
            node = node[key]
    where, last = f"override '{text}'", keys[-1]
    sub = _dataclass_in(typing.get_type_hints(cls).get(last))
    if sub is not None and isinstance(value, (str, dict)):
        try:
            whole = _inline({last: value}, cls, None, ".".join(keys[:-1]))[last]
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        node[last] = _merge(OmegaConf.structured(sub), whole, where)
        return cfg
    for key in reversed(keys):
        value = {key: value}
    return _merge(cfg, value, where)


def _build(node, where: str = ""):
    """The plain value of `node`: dataclasses built by their own __init__ (so their checks run), lists, tuples
    and mappings; every int within int64, every float finite, no interpolation."""
    if isinstance(node, (DictConfig, ListConfig, TupleConfig)):
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
        for k in keys:
            if OmegaConf.is_interpolation(node, k):
                raise ConfigError(f"{_join(where, k)}: ${{...}} interpolations are not supported")
        items = {k: _build(node[k], _join(where, k)) for k in keys}
        if isinstance(node, TupleConfig):
            return tuple(items.values())
        if isinstance(node, ListConfig):
            return list(items.values())
        cls = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(cls):
            return items
        try:
            return cls(**items)
        except FieldError as e:  # a declared range: name the key by its full dotted path
            raise ConfigError(f"{_join(where, e.key)}: {e.problem}") from None
        except ConfigError:
            raise
        except InputError as e:  # a class's own cross-field check, already one line
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from None
    if isinstance(node, int) and not isinstance(node, bool) and not -2**63 <= node < 2**63:
        # every integer ends up in torch or numpy, whose integers are int64
        raise ConfigError(f"{where}: expected an integer in int64's range, got {node!r}")
    if isinstance(node, float) and not math.isfinite(node):
        # nan and inf are never a setting: nan passes every comparison-based range check by failing it
        raise ConfigError(f"{where}: expected a finite number, got {node!r}")
    return node


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file and `key=value` overrides (later ones win)."""
    cfg, where = OmegaConf.structured(cls), ""
    if path is not None:
        path = find_config_file(path)
        where = str(path)
        data = read_yaml_mapping(path, "config file", "a mapping of config keys at the top level")
        cfg = _merge(cfg, _inline(data, cls, path.parent, where), where)
        if overrides:
            try:  # the file alone first, so that its own errors name only the file
                _build(cfg)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    for text in overrides:
        cfg = _override(cfg, text)
    try:
        return _build(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}{' + overrides' if overrides else ''}: {e}" if where else str(e)) from None


def config_to_dict(cfg) -> dict:
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def config_to_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(directory) / name
    atomic_write_text(path, config_to_yaml(cfg))
    return path
