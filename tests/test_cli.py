import subprocess
import sys

import pytest

from lvm.cli import COMMANDS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lvm", *args], capture_output=True, text=True)


def _all_commands():
    out = [()]
    for name, entry in COMMANDS.items():
        out.append((name,))
        if isinstance(entry[1], dict):
            out += [(name, leaf) for leaf in entry[1]]
    return out


@pytest.mark.parametrize("words", _all_commands(), ids=lambda w: " ".join(w) or "lvm")
def test_every_command_has_help_with_an_example(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lvm") and "example" in out


def test_console_entry_and_bad_key_is_one_line_exit_2():
    r = _run("--help")
    assert r.returncode == 0 and "commands" in r.stdout
    r = _run("train", "bad_key=1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "valid keys: " in lines[0]
    assert all(k in lines[0] for k in (" model,", " out_dir,", " max_steps,"))
    assert "Traceback" not in r.stderr


def test_user_errors_are_one_line_and_debug_shows_traceback(tmp_path):
    r = _run("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.yaml" in r.stderr
    r = _run("train", "model.hidden_size=abc")
    assert r.returncode == 2 and "expected an integer" in r.stderr
    r = _run("train", "--no-such-flag")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    r = _run("--debug", "train", "bad_key=1")
    assert r.returncode != 0 and "Traceback" in r.stderr
