"""`lvm export`: a checkpoint of an `lvm train` run -> a model directory to ship (assets/lvm-small is one).

    OUT/config.json model.safetensors generation_config.json   plain HF Llama, weights in half precision,
                                                                 the tokenizer recorded relative to OUT
    OUT/README.md                                               model card: recipe, run, curves, task table
    OUT/train_config.yaml train_log.jsonl                       the run's resolved config and its whole log
    OUT/recipe/FOLDER/FILE                                      the config files given with --recipe
    OUT/figures/loss.png heldout_ppl.png                        curves against training tokens
    OUT/tasks.md (+ tasks.png, ppl.png)                         a `lvm eval tasks` report, given --tasks
    OUT/heldout_tokens/                                         the held-out token shards the run scored
    OUT/export.json                                             what was exported from where

OUT is written beside itself and renamed into place; an existing OUT is replaced only when it is an earlier
export (it holds export.json), never a folder of something else.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lvm_base.errors import InputError

DTYPES = ("bf16", "fp16", "fp32")
MARK = "export.json"


def _run_time(recs: list[dict]) -> tuple[float, list[str]]:
    """(wall seconds of the logged steps, the machines they ran on): each (re)start begins a segment that
    ends at its last timed record, so the hours between a kill and its resume do not count."""
    total, machines, start, last = 0.0, [], None, None
    for r in recs:
        if r.get("event") == "start":
            if start is not None and last is not None:
                total += last - start
            start, last = r.get("time"), r.get("time")
            if r.get("machine"):
                machines.append(f"{r['machine']}, {r.get('precision', '?')}")
        elif isinstance(r.get("time"), (int, float)):
            last = r["time"]
    if start is not None and last is not None:
        total += last - start
    return total, list(dict.fromkeys(machines))


def _heldout_dir(cfg_file: Path) -> Path | None:
    """The run's held-out token shard folder (data.eval_shards of its config.yaml), when it is one folder."""
    import yaml

    spec = (yaml.safe_load(cfg_file.read_text()) or {}).get("data", {}).get("eval_shards")
    spec = spec[0] if isinstance(spec, list) and len(spec) == 1 else spec
    return Path(spec) if isinstance(spec, str) and Path(spec).is_dir() else None


def _recipe_names(files) -> dict[Path, str]:
    """{recipe file: its name under OUT/recipe/}: folder/file (train/lvm-small.yaml, model/small.yaml), so that
    a config's include of a sibling folder (`model: ../model/small.yaml`) resolves inside recipe/ too."""
    names = {}
    for f in map(Path, files):
        if not f.is_file():
            raise InputError(f"{f}: --recipe file not found")
        name = f"{f.resolve().parent.name}/{f.name}"
        if name in names.values():
            raise InputError(f"{f}: --recipe names two files {name}")
        names[f] = name
    return names


def _tokenizer_of(ckpt: Path, tokenizer) -> str | None:
    from lvm.checkpoints import recorded_tokenizer

    return str(tokenizer) if tokenizer is not None else recorded_tokenizer(ckpt)


def _target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARK).is_file())):
        raise InputError(f"{out}: exists and is not an earlier export (no {MARK}); choose another --out")


def _figures(log: Path, out: Path) -> list[tuple[str, str]]:
    from lvm.train.plots import plot_log, plot_runs

    figs = [("training and held-out loss", plot_log(log, ["loss", "eval/loss"], out / "figures" / "loss.png",
                                                     out.name, x="tokens_seen"))]
    figs.append(("held-out next-image perplexity", plot_runs({out.name: log}, "eval/next_image_ppl",
                                                              out / "figures" / "heldout_ppl.png", out.name,
                                                              "perplexity")))
    return [(t, str(p.relative_to(out))) for t, p in figs]


def export_model(run_dir, out, checkpoint=None, dtype: str = "bf16", tokenizer=None, tasks=None,
                 recipe=(), name: str | None = None) -> Path:
    """Write the model directory `out` from `checkpoint` (default: the newest) of the run in `run_dir`."""
    import torch

    from lvm.checkpoints import TOKENIZER_KEY, load_causal_lm, tokenizer_reference
    from lvm.model import save_hf
    from lvm.train.plots import read_log
    from lvm.train.resume import list_checkpoints
    from lvm_base.checkpointing import temp_dir_for
    from lvm_base.files import atomic_write_text, give_normal_modes

    run, out = Path(run_dir), Path(out)
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ckpts = list_checkpoints(run)
    ckpt = Path(checkpoint) if checkpoint else (ckpts[-1] if ckpts else None)
    if ckpt is None:
        raise InputError(f"{run}: no checkpoints (checkpoints/step-N/) to export")
    log, cfg_file = run / "metrics.jsonl", run / "config.yaml"
    for f in (log, cfg_file):
        if not f.is_file():
            raise InputError(f"{f}: missing; export needs an lvm train run folder")
    _target(out)
    recipe = _recipe_names(recipe)
    tasks = Path(tasks) if tasks else None
    if tasks is not None and not (tasks / "tasks.md").is_file():
        raise InputError(f"{tasks}: no tasks.md (give the --out folder of lvm eval tasks)")

    model, _ = load_causal_lm(ckpt, "cpu", "fp32")
    model = model.to({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
    tok = _tokenizer_of(ckpt, tokenizer)
    tmp = temp_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if tok is not None:
        setattr(model.config, TOKENIZER_KEY, tokenizer_reference(tok, out))
    save_hf(model, tmp, progress=True, safe_serialization=True)
    shutil.copyfile(cfg_file, tmp / "train_config.yaml")
    shutil.copyfile(log, tmp / "train_log.jsonl")
    for f, name in recipe.items():
        (tmp / "recipe" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp / "recipe" / name)
    held = _heldout_dir(cfg_file)
    if held is not None:  # the tokens its logged held-out curve scored: another run can score the same ones
        shutil.copytree(held, tmp / "heldout_tokens")
    if tasks is not None:
        for f in ("tasks.md", "tasks.png", "ppl.png"):
            if (tasks / f).is_file():
                shutil.copyfile(tasks / f, tmp / f)
    recs = read_log(tmp / "train_log.jsonl")
    figs = _figures(tmp / "train_log.jsonl", tmp)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())
    atomic_write_text(tmp / "README.md", model_card(name or out.name, model.config, state, n_params, recs, figs,
                                                   list(recipe.values()),
                                                   (tmp / "tasks.md").read_text() if tasks else None, dtype,
                                                   held is not None))
    atomic_write_text(tmp / MARK, json.dumps({"run": str(run), "checkpoint": str(ckpt), "dtype": dtype,
                                              "tokenizer": getattr(model.config, TOKENIZER_KEY, None),
                                              "exported": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    give_normal_modes(tmp)  # safetensors writes its files private (0600)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _last(recs: list[dict], key: str):
    vals = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
    return vals[-1] if vals else None


def model_card(name: str, hf_config, state: dict, n_params: int, recs: list[dict], figs, recipe: list[str],
               tasks_md: str | None, dtype: str, heldout: bool = False) -> str:
    """The exported directory's README.md."""
    from lvm.checkpoints import TOKENIZER_KEY
    from lvm.tokens import TokenLayout

    lay = TokenLayout.from_model_config(hf_config)
    seconds, machines = _run_time(recs)
    tok = getattr(hf_config, TOKENIZER_KEY, None) or "(none recorded: pass --tokenizer)"
    ev = {k: _last(recs, k) for k in ("loss", "eval/loss", "eval/next_image_ppl")}
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        "tags: [lvm, large-vision-model, vqgan, visual-sequences]", "---", "",
        f"# {name}: a {n_params / 1e6:.1f}M-parameter LVM trained by lvm's own commands", "",
        "A LLaMA-style causal transformer (`LlamaForCausalLM`) over the codes of a VQGAN tokenizer "
        f"(K = {lay.codebook_size}, {lay.tokens_per_image} codes per image, recorded as `{TOKENIZER_KEY}` = "
        f"`{tok}` in config.json). It continues visual sequences: frames of an orbit or a physics clip, and "
        "analogies A A' ... B -> B'. It is not a text model.", "",
        "    lvm prompt --model THIS_DIR --prompt prompts/rotation.yaml --out out/",
        "    lvm eval tasks --model THIS_DIR --episodes 16", "",
        "| | |", "|---|---|",
        f"| layers / hidden / heads | {hf_config.num_hidden_layers} / {hf_config.hidden_size} / "
        f"{hf_config.num_attention_heads} |",
        f"| vocabulary / context | {lay.vocab_size} ids / {hf_config.max_position_embeddings} tokens = "
        f"{lay.images_per_context} images |",
        f"| weights | {dtype} safetensors |",
        f"| training | {state['step']} optimizer steps, {state.get('tokens_seen', 0):,} tokens, "
        f"{seconds / 3600:.2f} h of logged steps |",
        f"| hardware | {'; '.join(machines) or '-'} |",
        "| last logged loss / held-out loss / held-out next-image perplexity | "
        + " / ".join("-" if v is None else f"{v:.4g}" for v in ev.values()) + " |", "",
        "## How it was made", "",
        "The recipe's files are in `recipe/` (the train config's header lists the exact commands); "
        "`train_config.yaml` is the run's resolved config and `train_log.jsonl` its whole log (one line per "
        "step, one per held-out evaluation, one per start of the process with the machine it ran on).", "",
    ]
    lines += [f"- `recipe/{f}`" for f in recipe] + [""]
    if heldout:
        lines += ["`heldout_tokens/` holds the held-out token shards (objects never trained on) its held-out "
                  "curve scored; `lvm demo` scores its own run on them for the scaling plot.", ""]
    lines += ["## Curves", ""] + [f"![{t}]({p})" for t, p in figs] + [""]
    if tasks_md:
        lines += ["## Tasks on held-out objects", "",
                  "`lvm eval tasks` on objects never trained on (docs/tasks.md says what each task asks and how "
                  "a person would answer it); its report follows, as `tasks.md` beside this card.", "",
                  tasks_md.split("\n", 1)[-1]]
    return "\n".join(lines) + "\n"
