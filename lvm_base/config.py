"""Config loading in one place: dataclass configs <- YAML file <- `key=value` overrides.

    cfg = load_config(TrainConfig, "configs/train/tiny.yaml", ["model.n_layer=4", "lr=3e-4"])

- Nested dataclasses are nested YAML mappings; overrides reach into them with dots (`model.n_layer=4`).
- Override values are parsed as YAML (`true`, `[1, 2]`, `null`) and then checked against the field's type.
- Unknown keys are rejected with the list of valid keys; wrong types name the key and the expected type.
- Every integer fits int64 and every float is finite; each dataclass declares its ranges once
  (lvm_base.validate.checks), enforced whenever the dataclass is built, so for files and overrides alike.
- YAML is read as UTF-8, within a size limit and an alias-expansion limit (lvm_base.validate).
- `save_config` writes the resolved config (YAML) next to a run's outputs.

The dataclasses themselves live with the code they configure (any package); this loader and
writer lives in the project-wide base so that every package loads and saves its configs the same way.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import InputError
from .files import atomic_write_text
from .validate import ConfigError, FieldError, YAMLSyntaxError, read_yaml_file, safe_yaml

T = TypeVar("T")

# Project root: shipped configs (configs/...) resolve from here when not found relative to the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def find_config_file(path: str | Path) -> Path:
    return project_path(path, Path.is_file)


def project_path(path: str | Path, exists=Path.exists) -> Path:
    """`path` as given, else relative to the project root where only that exists (shipped configs and
    assets resolve from any working directory)."""
    path = Path(path)
    if not exists(path) and not path.is_absolute() and exists(PROJECT_ROOT / path):
        return PROJECT_ROOT / path
    return path


# Directory of the config file being read: a nested config given as a path (`model: ../model/tiny.yaml`)
# is looked up relative to it first, then relative to the working directory.
_base_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("_base_dir", default=None)


def _resolve_include(value: str, where: str) -> Path:
    base = _base_dir.get()
    for cand in ([base / value] if base else []) + [find_config_file(value)]:
        if cand.is_file():
            return cand
    raise ConfigError(f"{where}: config file '{value}' not found")


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    """Check/convert `value` to type `tp`; raise ConfigError naming `where` otherwise."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, (str, Path)):
            return load_config(tp, _resolve_include(str(value), where))
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, Sequence) or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        out = None
        if isinstance(value, int) and not isinstance(value, bool):
            out = value
        # YAML 1.1 reads "1e4" as a string; accept numbers written that way when they are whole.
        elif isinstance(value, (str, float)):
            try:
                f = float(value)
                out = int(f) if f.is_integer() else None
            except (ValueError, OverflowError):
                pass
        if out is None:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if not -2**63 <= out < 2**63:  # every integer ends up in torch or numpy, whose integers are int64
            raise ConfigError(f"{where}: expected an integer in int64's range, got {value!r}")
        return out
    if tp is float:
        out = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:  # an int past float's range
                pass
        elif isinstance(value, str):
            try:
                out = float(value)  # "3e-4" is a string to PyYAML
            except ValueError:
                pass
        # nan and inf are never a setting: nan passes every comparison-based range check by failing it.
        if out is None or not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return value


def _fields(cls) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown(cls, key: str, where: str) -> ConfigError:
    valid = ", ".join(sorted(_fields(cls)))
    at = f" in {where}" if where else ""
    return ConfigError(f"unknown key '{key}'{at}; valid keys: {valid}")


def _build(cls: type[T], data: dict, where: str = "") -> T:
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(cls, key, where)
        kwargs[key] = _coerce(value, fields[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except FieldError as e:  # a declared range: name the key by its full dotted path
        raise ConfigError(f"{where + '.' if where else ''}{e.key}: {e.problem}") from None
    except ConfigError:
        raise
    except InputError as e:  # a class's own cross-field check, already one line
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


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


def _set_path(data: dict, cls, path: list[str], value, text: str):
    """Put `value` at `path` inside the nested dict `data`, validating keys against `cls` on the way."""
    node, node_cls = data, cls
    for i, key in enumerate(path):
        fields = _fields(node_cls)
        if key not in fields:
            prefix = ".".join(path[:i])
            raise _unknown(node_cls, key, f"override '{text}'" + (f" (under '{prefix}')" if prefix else ""))
        if i == len(path) - 1:
            node[key] = value
            return
        sub = fields[key]
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(f"override '{text}': '{'.'.join(path[: i + 1])}' has no sub-keys")
        existing = node.get(key)
        if isinstance(existing, (str, Path)):
            existing = load_config(sub, _resolve_include(str(existing), ".".join(path[: i + 1])))
        if dataclasses.is_dataclass(existing):
            existing = config_to_dict(existing)
        if existing is not None and not isinstance(existing, dict):  # e.g. `model=-1 model.hidden_size=8`
            raise ConfigError(f"override '{text}': '{'.'.join(path[: i + 1])}' is {existing!r}, not a mapping "
                              f"of {sub.__name__} fields")
        node[key] = dict(existing or {})
        node, node_cls = node[key], sub


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from an optional YAML file and `key=value` overrides (later ones win)."""
    data: dict = {}
    where = ""
    if path is not None:
        path = find_config_file(path)
        data = read_yaml_mapping(path, "config file", "a mapping of config keys at the top level")
        where = str(path)
    token = _base_dir.set(path.parent if path is not None else None)
    try:
        if path is not None:
            # Validate the file alone first so its errors name the file.
            try:
                _build(cls, data)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        for text in overrides:
            keys, value = parse_override(text)
            _set_path(data, cls, keys, value, text)
        try:
            return _build(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{where + ' + overrides: ' if where else ''}{e}") from None
    finally:
        _base_dir.reset(token)


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
