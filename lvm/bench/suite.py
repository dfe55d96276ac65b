"""`lvm bench suite`: every GPU-relevant check and benchmark in one run, in a time budget, one table.

GPU time is scarce and a GPU machine may have nothing but torch, transformers and accelerate (no taming,
webdataset, PyAV, pybullet, gradio): the parts import only those (tests/test_import_closure.py checks it),
each part that cannot run here is skipped with the reason, one that fails is recorded and the next one
runs, and the parts come most telling first, so a cut-short run still answers the main questions.

Parts (lvm/bench/suite_parts.py), in order:
  env            `lvm env`
  equal          the engine equals HF greedy decoding token for token (tiny, 300m; with and without the
                 CUDA-graph step)
  generate-7b    `lvm bench generate` for 7b (random weights, half precision), batch 1 and 4, beside HF
                 generate() (default and static cache + torch.compile), the batch-1 roofline
  train-300m     `lvm bench train` for 300m: tokens/s and MFU, HF's plain fp32 loop beside it
  resume         `lvm train` a few steps that save, stop as a kill would, resume, and equal the full run
  tokenizer      `lvm bench tokenizer` for lvm-f16-8192 against the taming reference network
  generate-300m  as generate-7b, for 300m
  train-1b       as train-300m, for 1b, where memory allows
--quick runs every part at CPU sizes (a one-layer model, a 32 px tokenizer): the suite's own test.

Writes OUT/suite.json (every figure) and OUT/suite.md (the table, dated, with the device).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lvm.bench import suite_parts as P

# name -> (estimated seconds on a GPU, estimated seconds with --quick); a part starts only when the
# budget has its estimate left, so the last ones give way first.
PARTS = {"env": (5, 5), "equal": (45, 10), "generate-7b": (200, 10), "train-300m": (45, 10), "resume": (40, 15),
         "tokenizer": (30, 5), "generate-300m": (120, 10), "train-1b": (60, 10)}

GPU_COMMAND = "python -m lvm bench suite --out out/gpu-suite"


def _run_part(name: str, ctx: P.Ctx) -> list[dict]:
    quick = ctx.quick
    if name == "env":
        return P.env(ctx)
    if name == "equal":
        rows = []
        for spec in ([ctx.micro_yaml(1024)] if quick else ["tiny", "300m"]):
            try:
                rows += P.equal(ctx, spec)
            except P.Skip as s:
                rows.append(P.row("engine = HF greedy", spec, str(s), status="skipped"))
        return rows
    if quick and name in ("generate-300m", "train-1b"):
        raise P.Skip("--quick has one micro size, measured above")
    if name.startswith("generate-"):
        return P.generate(ctx, ctx.micro_yaml(1024) if quick else name.split("-")[1])
    if name.startswith("train-"):
        return P.train(ctx, ctx.micro_yaml(8192) if quick else name.split("-")[1])
    if name == "tokenizer":
        return P.tokenizer(ctx)
    if name == "resume":
        return P.resume(ctx)
    raise AssertionError(name)


def select(parts: str | None) -> list[str]:
    """The part names of a comma list of names or prefixes ("generate" = both sizes); None = all."""
    from lvm_base.errors import InputError

    if not parts:
        return list(PARTS)
    chosen = []
    for word in (w.strip() for w in parts.split(",") if w.strip()):
        hits = [n for n in PARTS if n == word or n.startswith(word + "-")]
        if not hits:
            raise InputError(f"--parts: unknown part {word!r}; choose from {', '.join(PARTS)}")
        chosen += hits
    return [n for n in PARTS if n in chosen]


def _table(rows: list[dict]) -> list[str]:
    lines = ["| part | item | result | status | target |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r["part"], r["item"], r["result"], r["status"], r["target"] or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return lines


def _carry_hint() -> str:
    """What a GPU machine without a package index needs besides the checkout: taming, for the tokenizer
    part (pure Python, torch and numpy only), from where it is installed here."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("taming")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return "taming (for the tokenizer part; without it that part is skipped)"
    site = Path(spec.origin).parent.parent
    if site.is_relative_to(Path.cwd()):
        site = site.relative_to(Path.cwd())
    return f"{site / 'taming'} (for the tokenizer part), then: PYTHONPATH={site}{os.pathsep}$PYTHONPATH {GPU_COMMAND}"


def _tidy(dev, threads: int, deterministic: tuple[bool, bool]) -> None:
    """Undo what a part leaves behind that would change the next one's figures: torch threads (the
    training bench picks its own), deterministic algorithms (the resume check turns them on; on CUDA they
    fill every new allocation), torch.compile's graphs and CUDA-graph pools (HF's static cache), memory."""
    import gc

    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    if dev.type == "cuda":
        torch._dynamo.reset()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _say(*args, **kw) -> None:
    print(*args, flush=True)  # a run killed at its time limit still shows every line it reached


def _write(out_dir: Path, meta: dict, rows: list[dict], timings: dict, elapsed: float) -> tuple[str, list[str]]:
    """Write suite.md and suite.json as they stand (after every part, so a run cut short by the machine's
    time limit leaves what it measured); returns the header line and the table."""
    from lvm_base.files import atomic_write_text

    failed = sum(r["status"] in ("FAIL", "error") for r in rows)
    v = meta["versions"]
    head = (f"lvm {v['lvm']}, torch {v['torch']}, transformers {v['transformers']}; device {meta['where']}; "
            f"{'--quick; ' if meta['quick'] else ''}budget {meta['budget_s'] / 60:g} min, ran {elapsed:.0f} s")
    table = _table(rows)
    md = [f"# lvm bench suite: {meta['gpu'] or meta['device']}, {meta['date']}", "", head, "", *table, ""]
    env = next((r["data"].get("report") for r in rows if r["part"] == "env" and r["data"].get("report")), None)
    if env:
        md += ["`lvm env`:", "", "```", env, "```", ""]
    atomic_write_text(out_dir / "suite.md", "\n".join(md))
    atomic_write_text(out_dir / "suite.json", json.dumps(
        {**meta, "elapsed_s": elapsed, "part_seconds": timings, "rows": rows, "failed": failed},
        indent=1, default=str))
    return head, table


def run_suite(quick: bool = False, out: str = "out/suite", budget_minutes: float = 8.0, device: str = "auto",
              parts: str | None = None, echo=_say) -> int:
    """Run the chosen parts in the budget; print the table, write OUT/suite.json and OUT/suite.md.
    Returns 1 when a correctness check failed or a part raised, else 0 (a figure below its target is a
    'miss' in the table, not a failure)."""
    import datetime
    import tempfile
    import traceback

    import torch
    import transformers

    import lvm
    from lvm_base.errors import one_line
    from lvm_base.hardware import resolve

    names = select(parts)
    dev = torch.device(resolve(device, "auto", "inference").device)  # a missing GPU is a one-line error
    started = time.monotonic()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": str(dev), "gpu": gpu, "where": f"{dev}" + (f" ({gpu})" if gpu else ""), "quick": quick,
            "budget_s": 60 * budget_minutes, "parts": names,
            "versions": {"lvm": lvm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}
    threads = torch.get_num_threads()
    if quick:  # a smoke test on a shared CI machine, where a second thread only spins at each op's barrier
        torch.set_num_threads(1)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    rows, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="lvm-suite-") as work:
        ctx = P.Ctx(device=dev, quick=quick, work=Path(work), deadline=started + 60 * budget_minutes,
                    echo=lambda *a, **k: echo("    " + " ".join(str(x) for x in a)), gpu_name=gpu)
        for name in names:
            need = PARTS[name][1 if quick else 0]
            if ctx.left() < need:
                rows.append(P.row(name, "-", f"budget: {ctx.left():.0f} s left, the part needs ~{need} s",
                                  status="skipped"))
                echo(f"[suite] {name}: skipped (budget)")
                continue
            echo(f"[suite] {name} ({ctx.left():.0f} s of the budget left)")
            t = time.monotonic()
            try:
                got = _run_part(name, ctx)
            except P.Skip as s:
                got = [P.row(name, "-", str(s), status="skipped")]
            except Exception as e:  # noqa: BLE001 - one part's failure must not cost the rest of the GPU time
                got = [P.row(name, "-", f"{type(e).__name__}: {one_line(e)}"[:400], status="error",
                             traceback=traceback.format_exc())]
            timings[name] = time.monotonic() - t
            for r in got:
                echo(f"[suite]   {r['status']}: {r['item']}: {r['result']}")
            rows += got
            _tidy(dev, 1 if quick else threads, deterministic)
            _write(out_dir, meta, rows, timings, time.monotonic() - started)
    torch.set_num_threads(threads)
    head, table = _write(out_dir, meta, rows, timings, time.monotonic() - started)
    failed = sum(r["status"] in ("FAIL", "error") for r in rows)
    echo("")
    echo(head)
    for line in table:
        echo(line)
    echo(f"wrote {out_dir / 'suite.md'} and {out_dir / 'suite.json'}"
         + (f"; {failed} check(s) failed" if failed else ""))
    if dev.type != "cuda":
        echo(f"on a GPU (only torch, transformers and accelerate needed): {GPU_COMMAND}")
        echo(f"  the run needs this checkout (tracked files) and, to carry along: {_carry_hint()}")
    return 1 if failed else 0
