"""The demo's prompts stage: the example prompts (lvm/prompt/examples.py) at the demo's image size, on
held-out objects, answered by the demo's model through the prompt `Session` (lvm/prompt/session.py)."""

from __future__ import annotations

# the demo's name of each grid -> the example prompt it shows
PROMPTS = {"next_view": "rotation", "next_frame": "video", "segmentation": "segmentation",
           "colorization": "colorization"}
N_NEW = 3  # images a sequential prompt continues with


def run_prompts(demo) -> dict:
    """OUT/prompts/<name>.png for each of PROMPTS: the prompt with its truth, then the greedy answer and
    `prompt_candidates` sampled ones; the prompt files are written in OUT/work/prompts."""
    from lvm.checkpoints import load_pair
    from lvm.generate.engine import Engine
    from lvm.generate.sampling import Sampling
    from lvm.prompt.examples import make_example_prompts
    from lvm.prompt.session import Session
    from tokenizer.common.hardware import cpu_threads
    from tokenizer.image_io import save_png

    c = demo.cfg
    model, tok, _ = load_pair(demo.model_dir, demo.tok_dir, c.device, c.precision)
    engine = Engine(model, precision=c.precision, device=c.device, max_batch=4)
    out = demo.out / "prompts"
    s = Session(engine=engine, tokenizer=tok, out_dir=out, display="none", print_fn=demo.log,
                progress=demo.progress)
    made = make_example_prompts(demo.work / "prompts", size=tok.resolution, context=c.context, n_new=N_NEW,
                                shots=c.shots[-1], names=PROMPTS.values())
    files = {}
    by_name = {p.stem: p for p in made}
    with cpu_threads(1):
        for name, example in PROMPTS.items():
            s.load(by_name[example])
            n = s.default_n()
            s.sampling, s.candidates = Sampling(temperature=0), 1
            rows, labels = s.generate(n, write=False)["images"], ["greedy"]
            # Sampled candidates beside the greedy answer: a small model's greedy continuation is often the
            # background everywhere (each object cell's likeliest single token is background), while its
            # samples show what it has learned (the task suite scores the mean of such samples).
            s.sampling, s.candidates = Sampling(temperature=1.0, top_k=50, seed=c.seed), c.prompt_candidates
            rows += s.generate(n, write=False)["images"]
            labels += [f"seed {c.seed + k}" for k in range(c.prompt_candidates)]
            path = save_png(s.grid(rows, n, labels), out / f"{name}.png")
            files[name] = str(path.relative_to(demo.out))
    return {"files": files}
