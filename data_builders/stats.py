"""The totals of a built dataset, summed from the per-shard stats JSON files that `build` writes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from lvm_base.errors import InputError


def collect_stats(root: str | os.PathLike) -> dict:
    """Sum every `*.stats.json` under `root`: counts per kind and source, failures per reason."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory")
    files = sorted(root.rglob("*.stats.json"))
    if not files:
        raise InputError(f"{root}: no shard stats (*.stats.json) found; was it built with 'lvm data build'?")
    total = {"shards": 0, "sequences": 0, "images": 0, "kinds": Counter(), "sources": Counter(),
             "failures": Counter(), "failed_items": []}
    for f in files:
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{f}: unreadable stats file ({e})") from None
        total["shards"] += 1
        total["sequences"] += st.get("sequences", 0)
        total["images"] += st.get("images", 0)
        total["kinds"].update(st.get("kinds", {}))
        total["sources"][st.get("source", "?")] += st.get("sequences", 0)
        total["failures"].update(st.get("failures", {}))
        total["failed_items"].extend(st.get("failed_items", [])[: max(0, 20 - len(total["failed_items"]))])
    for k in ("kinds", "sources", "failures"):
        total[k] = dict(sorted(total[k].items()))
    return total


def stats_report(root: str | os.PathLike, as_json: bool = False) -> str:
    """`lvm data stats`: the totals of `collect_stats(root)` as text (or as JSON)."""
    st = collect_stats(root)
    if as_json:
        return json.dumps(st, indent=1)
    lines = [f"{root}: {st['shards']} shards, {st['sequences']} sequences, {st['images']} images"]
    for title, key in (("kinds", "kinds"), ("sources", "sources"), ("failures (skipped)", "failures")):
        lines.append(f"{title}:" + ("" if st[key] else " none"))
        lines += [f"  {k:<32} {v}" for k, v in st[key].items()]
    lines += [f"  e.g. {it['reason']}: {it['item']}" for it in st["failed_items"][:10]]
    return "\n".join(lines)
