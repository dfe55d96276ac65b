"""The `CONFIG [key=value ...] [--print-config]` arguments of every config-taking command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from lvm_base.config import config_to_yaml, load_config

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """`CONFIG [key=value ...]` positionals plus `--print-config`."""
    dflt = f" (default: {default})" if default else ""
    parser.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                        help=f"YAML config file{dflt}")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="override config values (nested keys with dots; --print-config shows every key)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    parser.set_defaults(_config_default=default)


def resolve_config(cls: type[T], args: argparse.Namespace) -> T | None:
    """`config_from_args`, except that with --print-config it prints the config and returns None."""
    cfg = config_from_args(cls, args)
    if getattr(args, "print_config", False):
        print(config_to_yaml(cfg), end="")
        return None
    return cfg


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Resolve the config of a command from its parsed `CONFIG [key=value ...]` arguments."""
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path and not Path(path).exists():
        # `lvm train lr=1e-3` with no file: the first override landed in the CONFIG slot.
        overrides.insert(0, path)
        path = None
    if path is None:
        path = getattr(args, "_config_default", None)
    return load_config(cls, path, overrides)
