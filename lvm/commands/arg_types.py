"""argparse `type=` helpers for the numeric flags of every command, on the same rules as config values
(lvm_base.validate): a flag out of range ends in argparse's one-line error (exit 2) while parsing,
before any model or data loads.

    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=1.0)
"""

from __future__ import annotations

import argparse

from lvm_base.validate import NON_NEGATIVE, POSITIVE, SEED, Rule, above, at_least, between


def number(rule: Rule, kind=int):
    """A `type=` that parses `kind` (int or float) and checks `rule`."""

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not rule(value):
            raise argparse.ArgumentTypeError(f"expected {rule.text}, got {text!r}")
        return value

    parse.__name__ = rule.text  # argparse names the type in some messages
    return parse


POSITIVE_INT = number(POSITIVE)
NON_NEGATIVE_INT = number(NON_NEGATIVE)
# seeds: torch takes any int64, but numpy's legacy seeding (accelerate's set_seed) only 0 .. 2**32 - 1
SEED_INT = number(SEED)
NON_NEGATIVE_FLOAT = number(at_least(0.0), float)  # temperatures
POSITIVE_FLOAT = number(above(0), float)  # minutes
FRACTION = number(between(0.0, 1.0, open_lo=True), float)  # top-p, a centre crop: (0, 1]


def int_range(lo: int, hi: int):
    return number(between(lo, hi))


def resize_spec(text: str) -> str:
    """`--resize-output`: '' (off), 'original', or W,H / WxH (lvm.prompt.batch.parse_resize); returned as given."""
    from lvm.prompt.batch import parse_resize
    from lvm_base.errors import InputError

    try:
        parse_resize(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    return text
