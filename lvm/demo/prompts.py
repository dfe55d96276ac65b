"""The demo's prompts stage: the example prompts (lvm/prompt/examples.py) at the demo's image size, on
held-out objects, answered by the demo's model through the prompt `Session` (lvm/prompt/session.py)."""

from __future__ import annotations

# the demo's name of each grid -> the example prompt it shows
PROMPTS = {"next_view": "rotation", "next_frame": "video", "segmentation": "segmentation",
           "colorization": "colorization"}
N_NEW = 3  # images a sequential prompt continues with


def run_prompts(demo) -> dict:
    """OUT/prompts/<name>.png for each of PROMPTS: the prompt with its truth, then the greedy answer and
    `prompt_candidates` sampled ones of the fresh model and, below them, of the shipped model (when there is
    one); the prompt files are written in OUT/work/prompts."""
    from lvm.checkpoints import load_pair
    from lvm.demo.config import shipped_model
    from lvm.generate.engine import Engine
    from lvm.prompt.examples import make_example_prompts
    from lvm.prompt.session import Session
    from lvm_base.hardware import cpu_threads
    from lvm_base.image_io import save_png

    c = demo.cfg
    out = demo.out / "prompts"
    models = [("demo", demo.model_dir, demo.tok_dir)]
    if shipped_model(c):
        models.append((shipped_model(c).name, shipped_model(c), None))
    sessions = []
    for name, model_dir, tok_dir in models:
        model, tok, _ = load_pair(model_dir, tok_dir, c.device, c.precision)
        engine = Engine(model, precision=c.precision, device=c.device, max_batch=4)
        sessions.append((name, Session(engine=engine, tokenizer=tok, out_dir=out, display="none",
                                       print_fn=demo.log, progress=demo.progress)))
    s = sessions[0][1]
    made = make_example_prompts(demo.work / "prompts", size=s.tok.resolution, context=c.context, n_new=N_NEW,
                                shots=c.shots[-1], names=PROMPTS.values())
    files = {}
    by_name = {p.stem: p for p in made}
    with cpu_threads(1):
        for name, example in PROMPTS.items():
            rows, labels = [], []
            for model_name, session in sessions:
                session.load(by_name[example])
                n = session.default_n()
                r, lab = _answers(session, n, c)
                rows += r
                labels += [f"{model_name} {x}" if len(sessions) > 1 else x for x in lab]
            path = save_png(s.grid(rows, n, labels), out / f"{name}.png")
            files[name] = str(path.relative_to(demo.out))
    return {"files": files, "models": [m for m, _ in sessions]}


def _answers(s, n: int, c) -> tuple[list, list[str]]:
    """(rows, labels): the greedy answer, then `prompt_candidates` sampled ones, of session `s`."""
    from lvm.generate.sampling import Sampling

    s.sampling, s.candidates = Sampling(temperature=0), 1
    rows, labels = s.generate(n, write=False)["images"], ["greedy"]
    # Sampled candidates beside the greedy answer: a small model's greedy continuation is often the
    # background everywhere (each object cell's likeliest single token is background), while its
    # samples show what it has learned (the task suite scores the mean of such samples).
    s.sampling, s.candidates = Sampling(seed=c.seed), c.prompt_candidates  # the defaults: temperature 1, top-k 50
    rows += s.generate(n, write=False)["images"]
    return rows, labels + [f"seed {c.seed + k}" for k in range(c.prompt_candidates)]
