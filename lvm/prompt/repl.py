"""The interactive `lvm prompt` loop and its /commands, driving a `Session` (lvm/prompt/session.py).

`command(session, line)` runs one REPL line, so the REPL and the tests drive the same code. `repl()` is the
interactive loop: readline history, one-line errors that never end the session, Ctrl-C cancels a running
generation (and clears the input line otherwise), Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from lvm.prompt.prompts import Prompt, expand_paths
from lvm.prompt.session import Session
from lvm_base.errors import InputError, one_line

HISTORY = Path(os.environ.get("LVM_HISTORY", Path.home() / ".lvm_history"))

HELP = """\
  PATH|GLOB ...        add images (frames of a sequential prompt)
  /pair A B            add an example pair A -> A' (analogy prompt)
  /query B             set the analogy query (the image whose B' is generated)
  /gen [n]             generate n new images (default: the prompt's n, 1 for analogies)
  /candidates k        generate k candidates at once (one batch, seeds seed..seed+k-1)
  /set temperature|top_k|top_p|seed VALUE
  /show                list the prompt and the settings (and preview the prompt)
  /undo                remove the last added image / pair / query
  /clear               empty the prompt
  /load FILE.yaml      load a prompt file
  /save DIR            save the prompt (prompt.yaml + images) and the last results to DIR
  /help                this help
  /quit                leave (Ctrl-D works too; Ctrl-C cancels a running generation)"""


def command(s: Session, line: str) -> bool:
    """Run one line; returns False when the session should end. Raises InputError for bad input."""
    line = line.strip()
    if not line or line.startswith("#"):
        return True
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise InputError(f"cannot parse the line ({e})") from None
    # "/gen" is a command, "/data/x.png" a path: command names are one word of letters.
    if not re.fullmatch(r"/[A-Za-z_]+", words[0]):
        paths = s.check_images(expand_paths(words))
        s.prompt.add_frames(paths)
        s.print(f"added {len(paths)} image(s); prompt has {len(s.prompt.images)}")
        return True
    cmd, args = words[0].lower(), words[1:]
    handler = COMMANDS.get(cmd[1:])
    if handler is None:
        raise InputError(f"unknown command {cmd} (type /help)")
    return handler(s, args) is not False


def _nargs(args, n, usage):
    if len(args) not in (n if isinstance(n, tuple) else (n,)):
        raise InputError(f"usage: {usage}")


def _int(s, what):
    try:
        return int(s)
    except ValueError:
        raise InputError(f"{what} must be an integer, got {s!r}") from None


def _help(s, args):
    s.print(HELP)


def _quit(s, args):
    return False


def _pair(s, args):
    _nargs(args, 2, "/pair A B")
    a, b = s.check_images(expand_paths(args))
    s.prompt.add_pair(a, b)
    s.print(f"added pair {a.name} -> {b.name}; prompt has {len(s.prompt.images)} images")


def _query(s, args):
    _nargs(args, 1, "/query B")
    (b,) = s.check_images(expand_paths(args))
    s.prompt.set_query(b)
    s.print(f"query {b.name}; prompt has {len(s.prompt.images)} images")


def _candidates(s, args):
    _nargs(args, 1, "/candidates k")
    k = _int(args[0], "candidates")
    if not 1 <= k <= 16:
        raise InputError("candidates must be between 1 and 16")
    s.candidates = k
    s.print(f"candidates = {k}")


def _set(s, args):
    import dataclasses

    from lvm.generate.sampling import Sampling

    _nargs(args, 2, "/set temperature|top_k|top_p|seed VALUE")
    key, value = args[0].lower().replace("-", "_"), args[1]
    kinds = {"temperature": float, "top_k": int, "top_p": float, "seed": int}
    if key not in kinds:
        raise InputError(f"/set: unknown setting {key!r} (temperature, top_k, top_p, seed)")
    try:
        v = kinds[key](value)
    except ValueError:
        raise InputError(f"/set {key}: {value!r} is not a number") from None
    s.sampling = Sampling(**{**dataclasses.asdict(s.sampling), key: v})
    s.print(f"{key} = {v}")


def _show(s, args):
    p = s.prompt
    s.print(f"mode {p.mode}; {len(p.images)} images; n {p.n_new}; candidates {s.candidates}; "
            f"temperature {s.sampling.temperature}, top_k {s.sampling.top_k}, "
            f"top_p {s.sampling.top_p}, seed {s.sampling.seed}")
    for label, path in zip(p.labels, p.images):
        s.print(f"  {label:>4}  {path}")
    if p.target:
        s.print(f"  target {' '.join(map(str, p.target))}")
    if p.images and s.display != "none":
        from lvm.prompt import display
        from lvm_base.image_io import load_image, make_grid

        display.preview(make_grid([[load_image(x) for x in p.images]], col_labels=p.labels, cell=64), s.display)


def _undo(s, args):
    kind, paths = s.prompt.undo()
    s.print(f"removed {kind} {' '.join(q.name for q in paths)}; prompt has {len(s.prompt.images)}")


def _clear(s, args):
    s.prompt = Prompt()
    s.print("prompt cleared")


def _load(s, args):
    _nargs(args, 1, "/load prompt.yaml")
    s.load(args[0])


def _gen(s, args):
    _nargs(args, (0, 1), "/gen [n]")
    n = _int(args[0], "n") if args else s.default_n()
    if n < 1:
        raise InputError("/gen n: n must be >= 1")
    try:
        res = s.generate(n)
    except KeyboardInterrupt:
        s.print("\ngeneration cancelled")
        return
    s.print(f"wrote {len(res['files'])} candidate PNGs and {res['grid']}")
    if s.display != "none":
        from lvm.prompt import display

        display.preview(res["grid_image"], s.display)


def _save(s, args):
    _nargs(args, 1, "/save DIR")
    s.save(Path(args[0]))


# command name (after the slash) -> handler(session, args); a handler returning False ends the session
COMMANDS = {"help": _help, "quit": _quit, "exit": _quit, "q": _quit, "pair": _pair, "query": _query,
            "candidates": _candidates, "set": _set, "show": _show, "undo": _undo, "clear": _clear,
            "load": _load, "gen": _gen, "save": _save}


def repl(session: Session, stdin=None) -> int:
    """The interactive loop. Piped input (not a terminal) is echoed so transcripts read like sessions."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline

            HISTORY.parent.mkdir(parents=True, exist_ok=True)
            if HISTORY.is_file():
                readline.read_history_file(HISTORY)
            readline.set_history_length(1000)
        except (ImportError, OSError):
            readline = None
    session.print("type /help for commands, /quit to leave")
    try:
        while True:
            try:
                if interactive:
                    line = input("lvm> ")
                else:
                    line = stdin.readline()
                    if not line:
                        break
                    line = line.rstrip("\n")
                    session.print(f"lvm> {line}")
            except EOFError:
                session.print("")
                break
            except KeyboardInterrupt:
                session.print("^C")
                continue
            try:
                if not command(session, line):
                    break
            except KeyboardInterrupt:
                session.print("\ncancelled")
            except (InputError, OSError) as e:
                session.print(f"error: {one_line(e)}")
    finally:
        if interactive and readline is not None:
            try:
                readline.write_history_file(HISTORY)
            except OSError:
                pass
    return 0
