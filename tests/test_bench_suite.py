"""`lvm bench suite`: the --quick CPU run of every part, its table and files, the budget, part selection,
and a part that raises."""

import json

import pytest
import torch

from lvm.bench import suite
from lvm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_suite_runs_every_part_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["bench", "suite", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "suite.json").read_text())
    assert res["quick"] and res["device"] == "cpu" and res["failed"] == 0 and res["elapsed_s"] < 300
    by_part = {}
    for row in res["rows"]:
        by_part.setdefault(row["part"], []).append(row)
    assert "lvm env" in by_part["env"][0]["item"] and "auto for training" in by_part["env"][0]["data"]["report"]
    equal = by_part["engine = HF greedy"]
    assert [r["status"] for r in equal] == ["ok", "ok"] and all(r["target"] == "equal: pass" for r in equal)
    assert {r["data"]["batch"] for r in by_part["bench generate"]} == {1, 2}
    assert all(r["data"]["ours_tok_s"] > 0 and r["data"]["hf_tok_s"] > 0 and r["data"]["hf_static_tok_s"] > 0
               for r in by_part["bench generate"])
    assert 0 < by_part["roofline"][0]["data"]["fraction"]
    ours = next(iter(by_part["bench train"][0]["data"]["ours"].values()))
    assert 0 < ours["mfu"] and ours["tokens_per_s"] > 0
    assert by_part["train resume"][0]["status"] == "ok" and by_part["train resume"][0]["data"]["max_rel"] <= 1e-4
    assert by_part["bench tokenizer"][0]["data"]["encode_img_s"] > 0
    assert {r["status"] for r in by_part["generate-300m"] + by_part["train-1b"]} == {"skipped"}
    md = (out / "suite.md").read_text()
    assert md.startswith("# lvm bench suite: cpu, ") and "| part | item | result | status | target |" in md
    assert "`lvm env`:" in md and md.count("\n| ") == len(res["rows"]) + 1
    assert "| train resume |" in text and suite.GPU_COMMAND in text  # the table and the GPU command are printed


def test_parts_that_do_not_fit_the_budget_are_skipped_with_the_reason(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["bench", "suite", "--quick", "--out", str(out), "--budget-minutes", "0.01",
                 "--parts", "env,equal"]) == 0
    rows = json.loads((out / "suite.json").read_text())["rows"]
    assert [(r["part"], r["status"]) for r in rows] == [("env", "skipped"), ("equal", "skipped")]
    assert all(r["result"].startswith("budget: ") for r in rows)


def test_a_part_that_raises_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("simulated\nfailure")

    monkeypatch.setattr(suite.P, "env", broken)
    out = tmp_path / "suite"
    monkeypatch.setattr(suite, "PARTS", {"env": (5, 5), "tokenizer": (5, 0)})
    monkeypatch.setattr(suite.P, "tokenizer", lambda ctx: [suite.P.row("bench tokenizer", "x", "fine")])
    assert main(["bench", "suite", "--quick", "--out", str(out)]) == 1
    rows = json.loads((out / "suite.json").read_text())["rows"]
    assert [(r["part"], r["status"]) for r in rows] == [("env", "error"), ("bench tokenizer", "ok")]
    assert rows[0]["result"] == "RuntimeError: simulated failure" and "Traceback" in rows[0]["data"]["traceback"]
    assert "1 check(s) failed" in capsys.readouterr().out


def test_part_selection_and_user_errors(tmp_path, capsys, monkeypatch):
    assert suite.select("generate,env") == ["env", "generate-7b", "generate-300m"]
    assert suite.select(None) == list(suite.PARTS)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "suite", "--parts", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown part 'nonsense'" in err[0]
    if not torch.cuda.is_available():
        assert main(["bench", "suite", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA GPU" in err[0]
    assert not (tmp_path / "out").exists()  # a user error writes nothing


def test_gpu_parts_say_why_they_skip_without_one(tmp_path, monkeypatch):
    """Without --quick on a CPU the GPU sizes are skipped with the reason; the sizes are never attempted."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "suite"
    assert main(["bench", "suite", "--out", str(out), "--device", "cpu",
                 "--parts", "generate,train,tokenizer"]) == 0
    rows = json.loads((out / "suite.json").read_text())["rows"]
    assert [r["part"] for r in rows] == ["generate-7b", "train-300m", "tokenizer", "generate-300m", "train-1b"]
    assert all(r["status"] == "skipped" and "no CUDA device" in r["result"] for r in rows), rows


def test_datasheet_figures_match_the_names_torch_reports():
    from lvm.bench.gpus import nominal

    assert nominal("NVIDIA H100 80GB HBM3") == (989e12, 3.35e12)
    assert nominal("NVIDIA H100 PCIe")[1] == 2.0e12 and nominal("NVIDIA H200")[1] == 4.8e12
    assert nominal("NVIDIA A100-SXM4-80GB")[1] == 2.039e12 and nominal("NVIDIA A100-PCIE-40GB")[1] == 1.555e12
    assert nominal("NVIDIA L40S")[0] == 362e12 and nominal("NVIDIA L4")[0] == 121e12
    assert nominal("Some Future GPU") == (None, None)
