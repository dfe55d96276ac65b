"""`lvm eval video-perplexity`: the release's protocol on mp4 files written here (PyAV), the context curve,
and a tiny model trained on moving-object clips whose next-frame perplexity falls as it sees more frames."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lvm.cli import main
from tiny import save_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

K = 64
SIZE = 32  # px; the tiny tokenizer makes 16 x 16 = 256 codes per image
PALETTE = np.array([(230, 60, 40), (40, 200, 80), (50, 90, 230), (240, 220, 40), (200, 60, 220), (30, 210, 220)])


def clip(rng, n_frames: int) -> np.ndarray:
    """(n, SIZE, SIZE, 3) uint8: an 8 px square of one color swinging between two random places over a
    still, blocky random background. Where the next frame's square goes, one frame cannot tell; the frame
    before it can. (A plain background would not do: a random tokenizer's group norms turn a uniform image
    into noise codes.)"""
    bg = np.kron(rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    fg = PALETTE[rng.integers(len(PALETTE))].astype(np.uint8)
    places = rng.choice((SIZE - 8) // 4 + 1, (2, 2)) * 4  # two (y, x) corners on a 4 px grid
    out = np.empty((n_frames, SIZE, SIZE, 3), np.uint8)
    for t in range(n_frames):
        y, x = places[t % 2]
        out[t] = bg
        out[t][y:y + 8, x:x + 8] = fg
    return out


def write_mp4(path, frames: np.ndarray):
    import av

    with av.open(str(path), "w") as c:
        # lossless RGB: the clips decode to exactly the frames the model was trained on
        s = c.add_stream("libx264rgb", rate=25, options={"crf": "0"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _videos(root, n, n_frames, seed):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_mp4(root / f"clip{i:02d}.mp4", clip(rng, n_frames))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model dir, tokenizer dir, eval video folder): a tiny model trained on the tokens of moving-square clips."""
    from data_builders.shards import write_token_shard
    from lvm.train.config import TrainConfig
    from lvm.train.loop import list_checkpoints, train
    from tokenizer import load_tokenizer
    from lvm_base.config import load_config

    root = tmp_path_factory.mktemp("video")
    tok_dir = save_tiny_tokenizer(root / "tok", K)
    tok = load_tokenizer(tok_dir, precision="fp32")
    rng = np.random.default_rng(1)

    def sequences(n):
        for i in range(n):
            frames = [Image.fromarray(f) for f in clip(rng, 8)]
            yield f"c{i}", tok.encode_images(frames).numpy(), {"kind": "video"}

    write_token_shard(root / "tokens" / "tokens-000000.tar", sequences(160))
    over = [f"out_dir={root / 'run'}", f"data.shards={root / 'tokens'}", f"model.codebook_size={K}",
            "model.max_position_embeddings=2048", "model.hidden_size=96", "model.intermediate_size=192",
            "model.num_hidden_layers=2", "model.num_attention_heads=4", "micro_batch=1", "tokens_per_step=0",
            "lr=3e-3", "min_lr=3e-4", "warmup_steps=10", "max_steps=150", "save_every=150", "eval_every=1000",
            "log_every=50", "peak_tflops=1.0", "data.shuffle_buffer=32", "precision=fp32", "trackers=none"]
    train(load_config(TrainConfig, "configs/train/tiny.yaml", over), progress=False)
    return list_checkpoints(root / "run")[-1], tok_dir, _videos(root / "eval", 12, 12, seed=2)


def test_trained_model_perplexity_falls_with_context(trained, tmp_path, capsys):
    model, tok, videos = trained
    out = tmp_path / "out"
    rc = main(["eval", "video-perplexity", "--videos", str(videos / "*.mp4"), "--model", str(model),
               "--tokenizer", str(tok), "--context-curve", "1,3,7", "--stride", "1", "--out", str(out),
               "--precision", "fp32", "--device", "cpu", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "video_perplexity.json").read_text())
    assert (out / "context_curve.png").is_file() and Image.open(out / "context_curve.png").size[0] > 200
    ppl = [r["perplexity"] for r in res["curve"]]
    assert [r["context"] for r in res["curve"]] == [1, 3, 7] and res["clips"] == 12
    print("video perplexity vs context 1,3,7:", " -> ".join(f"{p:.3f}" for p in ppl),
          "| pooled", " -> ".join(f"{r['pooled_perplexity']:.3f}" for r in res["curve"]))
    assert ppl[1] < ppl[0] * 0.9 and ppl[2] <= ppl[1] * 1.02  # one frame cannot tell the motion; three can


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    from lvm.model import ModelConfig

    root = tmp_path_factory.mktemp("video-random")
    torch.manual_seed(0)
    ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, codebook_size=K,
                max_position_embeddings=256 * 8).build().save_pretrained(root / "lm")
    return root / "lm", save_tiny_tokenizer(root / "tok", K)


def test_release_protocol_frames_skips_and_list_files(random_pair, tmp_path, capsys):
    from lvm.checkpoints import load_pair
    from lvm.eval.perplexity import target_nll
    from lvm.tokens import TokenLayout

    lm, tok = random_pair
    rng = np.random.default_rng(3)
    clips = {f"v{i}": clip(rng, 12) for i in range(2)}
    vids = tmp_path / "vids"
    vids.mkdir()
    for name, frames in clips.items():
        write_mp4(vids / f"{name}.mp4", frames)
    write_mp4(vids / "short.mp4", clip(rng, 3))     # fewer frames than 3 context + 1 target
    (vids / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    (vids / "notes.txt").write_text("not a video")   # not a video extension: not an input at all
    out = tmp_path / "out"
    args = ["--model", str(lm), "--tokenizer", str(tok), "--precision", "fp32", "--device", "cpu", "--no-progress"]
    rc = main(["eval", "video-perplexity", "--videos", str(vids / "*"), "--context-curve", "1,3", "--stride", "3",
               "--no-random-start", "--out", str(out), *args])
    assert rc == 0
    res = json.loads((out / "video_perplexity.json").read_text())
    assert res["clips"] == 2 and sum(res["skipped"].values()) == 2 and res["skipped"].get("video_too_short") == 1
    # independently: frames 0, 3, 6, 9 (stride 3 from frame 0), the last one the target
    model, t, _ = load_pair(lm, tok, "cpu", "fp32")
    layout = TokenLayout.from_model_config(model.config)
    for row in res["per_clip"]:
        frames = clips[row["video"].rsplit("/", 1)[1][:-4]][[0, 3, 6, 9]]
        codes = t.encode_images([Image.fromarray(f) for f in frames]).numpy()
        for c in (1, 3):
            (s, n), = target_nll(model, [(codes[3 - c:3], codes[3:])], layout)[2]
            assert row[f"ppl_context_{c}"] == pytest.approx(math.exp(s / n), rel=1e-5)
    mean3 = np.mean([r["ppl_context_3"] for r in res["per_clip"]])
    assert res["curve"][1]["perplexity"] == pytest.approx(mean3, rel=1e-9)  # the release's mean over clips
    assert (out / "context_curve.png").is_file()
    # frame folders (natural name order: f2 before f10) from a list file; a stride too long for a short clip
    # shrinks to the longest that fits (11 frames, 4 needed: stride 3)
    d = tmp_path / "frames" / "clip"
    d.mkdir(parents=True)
    for j, f in enumerate(clips["v0"][:11]):
        Image.fromarray(f).save(d / f"f{j + 1}.png")
    (tmp_path / "list.txt").write_text("frames/clip\n")
    rc = main(["eval", "video-perplexity", "--list", str(tmp_path / "list.txt"), "--frames", "--context",
               "3", "--stride", "50", "--no-random-start", "--out", str(tmp_path / "out2"), *args])
    assert rc == 0
    res2 = json.loads((tmp_path / "out2" / "video_perplexity.json").read_text())
    assert res2["clips"] == 1 and not (tmp_path / "out2" / "context_curve.png").exists()
    assert res2["curve"][0]["perplexity"] == pytest.approx(res["per_clip"][0]["ppl_context_3"], rel=1e-5)
    # nothing usable, or a context the model cannot hold: one line, exit 2
    assert main(["eval", "video-perplexity", "--videos", str(vids / "short.mp4"), "--context", "3", *args]) == 2
    assert main(["eval", "video-perplexity", "--videos", str(vids / "*.mp4"), "--context", "8", *args]) == 2
    err = capsys.readouterr().err
    assert "no usable clips" in err and "do not fit the model's context of 8 images" in err
