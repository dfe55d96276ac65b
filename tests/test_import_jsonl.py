"""`lvm data import-jsonl`: the release's JSON lines -> token shards, the inverse of export-jsonl."""

import base64
import json
import shutil

import numpy as np
import pytest

from data_builders.encode import export_jsonl, write_tokens_info
from data_builders.import_jsonl import import_jsonl
from data_builders.shards import iter_token_shard, write_token_shard
from lvm_base.errors import InputError
from lvm_base.tar import list_shards

CPI, K = 16, 64
INFO = {"tokenizer": "runs/tok", "codebook_size": K, "codes_per_image": CPI, "resolution": 64,
        "value_range": [-1, 1], "resize_mode": "crop"}


def read(out):
    """[(key, codes, meta)] of every sequence of the token shards in `out`, in shard order."""
    return [t for sh in list_shards(out) for t in iter_token_shard(sh)]


def row(tokens) -> str:
    """One JSONL line of the release's format."""
    raw = np.ascontiguousarray(np.asarray(tokens).reshape(-1).astype("<i4")).tobytes()
    return json.dumps({"tokens": base64.b64encode(raw).decode("ascii")})


@pytest.fixture
def original(tmp_path):
    """Token shards made by the project's own writer: 2 shards, sequences of 1..16 images."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, K, (n, CPI)) for n in (1, 3, 16, 2, 5)]
    src = tmp_path / "orig"
    write_token_shard(src / "a-000000.tar", [(f"s{i}", c, {"kind": "video"}) for i, c in enumerate(seqs[:3])])
    write_token_shard(src / "a-000001.tar", [(f"s{i}", c, {"kind": "pairs"}) for i, c in enumerate(seqs[3:], 3)])
    write_tokens_info(src, INFO)
    return src, seqs


def test_round_trip_keeps_sequences_order_and_alignment(original, tmp_path):
    src, seqs = original
    jsonl = tmp_path / "x" / "orig.jsonl"
    assert export_jsonl(src, jsonl, progress=False) == len(seqs)
    s = import_jsonl(jsonl, tmp_path / "imp", codes_per_image=CPI, codebook_size=K, shard_size=2, progress=False)
    assert (s["sequences"], s["images"], s["shards"], s["skipped"]) == (5, 27, 3, 0)
    got = read(tmp_path / "imp")
    assert [c.shape for _, c, _ in got] == [c.shape for c in seqs]  # image alignment: (n_images, CPI)
    assert all(np.array_equal(a, c) for (_, a, _), c in zip(got, seqs))
    assert all("." not in key for key, _, _ in got) and got[2][2]["n_images"] == 16
    info = json.loads((tmp_path / "imp" / "tokens_info.json").read_text())
    assert (info["codebook_size"], info["codes_per_image"]) == (K, CPI)
    # the tokens info beside the JSONL gives K, and the rest of it is carried over
    shutil.copy(src / "tokens_info.json", jsonl.parent / "tokens_info.json")
    s = import_jsonl(jsonl, tmp_path / "imp2", codes_per_image=CPI, progress=False)
    assert s["codebook_size"] == K
    assert json.loads((tmp_path / "imp2" / "tokens_info.json").read_text()) == {**INFO, "imported_from": str(jsonl)}
    with pytest.raises(InputError, match="codebook size 64"):
        import_jsonl(jsonl, tmp_path / "imp3", codes_per_image=CPI, codebook_size=128, progress=False)
    with pytest.raises(InputError, match="16 codes per image"):
        import_jsonl(jsonl, tmp_path / "imp3", progress=False)


def test_released_4096_token_row_keeps_16_images_and_longer_rows_split(tmp_path):
    rng = np.random.default_rng(1)
    full, long = rng.integers(0, 8192, (16, 256)), rng.integers(0, 8192, (20, 256))
    jsonl = tmp_path / "rel.v1.jsonl"
    jsonl.write_text(row(full) + "\n" + row(long) + "\n")
    s = import_jsonl(jsonl, tmp_path / "out", progress=False)  # defaults: 256 codes, K = 8192
    assert (s["codebook_size"], s["rows"], s["rows_split"], s["sequences"]) == (8192, 2, 1, 3)
    got = read(tmp_path / "out")
    assert [k for k, _, _ in got] == ["rel-000000001-00", "rel-000000002-00", "rel-000000002-01"]
    assert np.array_equal(got[0][1], full)
    assert np.array_equal(got[1][1], long[:16]) and np.array_equal(got[2][1], long[16:])
    assert (got[2][2]["line"], got[2][2]["part"], got[2][2]["parts"]) == (2, 1, 2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")}
    import_jsonl(jsonl, tmp_path / "out", progress=False)  # deterministic: a rerun gives the same bytes
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.tar")} == before


def test_bad_lines_are_skipped_with_a_warning_and_counted(tmp_path, capsys):
    good = np.arange(2 * CPI).reshape(2, CPI) % K
    lines = [row(good), "{not json", json.dumps({"x": 1}), json.dumps({"tokens": "!!"}),
             json.dumps({"tokens": base64.b64encode(b"12345").decode()}), row(np.zeros(CPI + 1)),
             json.dumps({"tokens": ""}), row(np.full(CPI, -1)), row(np.full(CPI, K)), "", row(good[:1])]
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    s = import_jsonl(jsonl, tmp_path / "out", codes_per_image=CPI, codebook_size=K, progress=False)
    assert (s["lines"], s["sequences"], s["skipped"]) == (11, 2, 8)
    assert s["skipped_by_reason"] == {"base64": 1, "empty": 1, "json": 1, "length": 2, "no_tokens": 1, "range": 2}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 8 and all(e.startswith(f"warning: {jsonl}:") for e in err)
    assert [int(e.split(":")[2]) for e in err] == [2, 3, 4, 5, 6, 7, 8, 9]
    got = read(tmp_path / "out")
    assert [m["line"] for _, _, m in got] == [1, 11] and np.array_equal(got[0][1], good)
    jsonl.write_text("\n".join(lines[1:3]) + "\n")
    with pytest.raises(InputError, match="no importable rows"):
        import_jsonl(jsonl, tmp_path / "none", codes_per_image=CPI, codebook_size=K, progress=False)


def test_cli_summary_and_missing_file(original, tmp_path, capsys):
    from lvm.cli import main

    src, _ = original
    export_jsonl(src, tmp_path / "t.jsonl", progress=False)
    out = tmp_path / "imp"
    assert main(["data", "import-jsonl", str(tmp_path / "t.jsonl"), "--out", str(out), "--codes-per-image",
                 str(CPI), "--codebook-size", str(K), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imported 5 sequences (27 images, codebook 64)"), lines
    missing = tmp_path / "missing.jsonl"
    assert main(["data", "import-jsonl", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and str(missing) in err


def test_lvm_train_reads_the_imported_shards(original, tmp_path, capsys):
    from data_builders.token_stream import TokenStreamConfig
    from lvm.tokens import TokenLayout
    from lvm.train.config import TrainConfig
    from lvm.train.data import make_loader

    src, _ = original
    export_jsonl(src, tmp_path / "t.jsonl", progress=False)
    import_jsonl(tmp_path / "t.jsonl", tmp_path / "imp", codes_per_image=CPI, codebook_size=K, progress=False)
    cfg = TrainConfig(data=TokenStreamConfig(shards=str(tmp_path / "imp"), shuffle_buffer=4), micro_batch=2)
    layout = TokenLayout(codebook_size=K, tokens_per_image=CPI, images_per_context=4)
    _, loader = make_loader(cfg, layout, 4 * CPI, rank=0, world=1)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (2, 4 * CPI)
    assert int(batch["input_ids"].max()) <= layout.pad_id and "skipping" not in capsys.readouterr().out
