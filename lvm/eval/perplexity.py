"""Perplexity of target images given input images, as the released evaluation defines it.

    nll, n, per = target_nll(model, [(input_codes, target_codes), ...], layout)  # codes: (n_images, tokens/image)
    summary = aggregate(per)                # {"perplexity": release figure, "pooled_perplexity": ...}
    result = evaluate_file("eval.jsonl", model_dir, tokenizer_dir)             # `lvm eval perplexity`

Two figures, both over the target tokens (each given the input images and the earlier target tokens):
- `perplexity` (the headline, the released evaluation's number): per example exp(mean NLL of its target
  tokens), then the arithmetic mean over examples;
- `pooled_perplexity`: exp(total NLL / total target tokens) over all examples. It is never above the mean
  of per-example perplexities (Jensen) and is the figure a token-level loss converts to.

The sequence is input images then target images, positions from 0 (token contract); when it is longer than
the context, the oldest input images are dropped (as prompting does). With no input images the first
target token has nothing to be predicted from (there is no BOS) and is not scored (the release's formula
is undefined there). Batches are right-padded; only the target positions go through the output layer.

The JSONL format of `evaluate_file` is lvm/jsonl.py's: each line {"input": [paths], "target": [paths]};
lines that cannot be used (bad JSON, unreadable image) are skipped, reported on stderr and counted.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lvm_base.errors import InputError


def build_example(input_codes, target_codes, layout) -> tuple[np.ndarray, int]:
    """(flat tokens, index of the first target token) for one example, cropped to the context."""
    inp = np.asarray(input_codes, dtype=np.int64).reshape(-1, layout.tokens_per_image)
    tgt = np.asarray(target_codes, dtype=np.int64).reshape(-1, layout.tokens_per_image)
    if len(tgt) == 0:
        raise InputError("an example needs at least one target image")
    if len(tgt) > layout.images_per_context:
        raise InputError(f"{len(tgt)} target images do not fit the model's context of "
                         f"{layout.images_per_context} images")
    keep = layout.images_per_context - len(tgt)
    inp = inp[max(0, len(inp) - keep):] if keep > 0 else inp[:0]
    layout.check_codes(inp, "input codes")
    layout.check_codes(tgt, "target codes")
    return np.concatenate([inp.reshape(-1), tgt.reshape(-1)]), inp.size


@torch.no_grad()
def target_nll(model, examples, layout, batch_size: int = 4, precision: str = "fp32") -> tuple[float, int, list]:
    """Sum of NLL over target tokens and their count, over all examples; plus per-example (nll, count).

    `examples`: iterable of (input_codes, target_codes), each (n_images, tokens_per_image) (or flat).
    `precision` (auto | fp32 | bf16 | fp16) is resolved by the policy on the model's device and applied
    as autocast (fp32: none); the log-softmax is always taken in fp32.
    """
    from lvm_base.hardware import resolve

    device = next(model.parameters()).device
    built = [build_example(i, t, layout) for i, t in examples]
    per = [None] * len(built)
    order = sorted(range(len(built)), key=lambda k: len(built[k][0]))  # similar lengths share a batch
    plan = resolve(str(device), precision, "inference")
    for b0 in range(0, len(order), batch_size):
        idx = order[b0:b0 + batch_size]
        T = max(len(built[k][0]) for k in idx)
        ids = torch.full((len(idx), T), layout.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, k in enumerate(idx):
            toks = torch.from_numpy(built[k][0])
            ids[r, :len(toks)], mask[r, :len(toks)] = toks, 1
        ids, mask = ids.to(device), mask.to(device)
        with plan.autocast():
            hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for r, k in enumerate(idx):
            toks, start = built[k]
            first = max(start, 1)  # position of the first scored token
            h = hidden[r, first - 1:len(toks) - 1]  # hidden state at t predicts token t + 1
            with plan.autocast():
                logits = model.lm_head(h)
            nll = F.cross_entropy(logits.float(), ids[r, first:len(toks)], reduction="sum")
            per[k] = (float(nll), len(toks) - first)
    total = sum(p[0] for p in per)
    count = sum(p[1] for p in per)
    return total, count, per


def aggregate(per) -> dict:
    """The release's perplexity (mean over examples of exp(mean NLL)) and the pooled one, from per-example
    (NLL sum, token count) pairs."""
    total, count = sum(p[0] for p in per), sum(p[1] for p in per)
    return {"perplexity": float(np.mean([math.exp(s / c) for s, c in per])),
            "pooled_perplexity": math.exp(total / count), "mean_nll": total / count, "tokens": count}


def read_examples(path, tok, layout, input_key: str = "input", target_key: str = "target", input_base_dir=None,
                  max_examples: int = 0) -> tuple[list, int]:
    """([(line number, input codes, target codes)], number of skipped lines) of a JSONL file."""
    from lvm.jsonl import Skipped, read_records

    examples, skipped = [], 0
    for rec in read_records(path, {input_key: False, target_key: True}, input_base_dir=input_base_dir,
                            max_examples=max_examples):
        try:
            if isinstance(rec, Skipped):
                raise InputError(rec.reason)
            inputs, targets = rec.paths.get(input_key, []), rec.paths[target_key]
            if not targets:
                raise InputError(f'"{target_key}" is empty')
            if len(targets) > layout.images_per_context:  # checked before encoding: the line is skipped, named
                raise InputError(f'{len(targets)} "{target_key}" images do not fit the model\'s context of '
                                 f"{layout.images_per_context} images")
            codes = tok.encode_images(inputs + targets).numpy()
            layout.check_codes(codes, "tokenizer output")
            examples.append((rec.line, codes[:len(inputs)], codes[len(inputs):]))
        except (InputError, OSError, ValueError) as e:
            skipped += 1
            print(f"warning: {path}:{rec.line}: skipped ({' '.join(str(e).split())})", file=sys.stderr)
    return examples, skipped


def evaluate_file(file, model_dir, tokenizer_dir, device: str = "auto", precision: str = "auto",
                  batch_size: int = 4, out=None, input_key: str = "input", target_key: str = "target",
                  input_base_dir=None, max_examples: int = 0, log=print) -> dict:
    """`lvm eval perplexity`: the perplexity of a JSONL file's targets under a model + tokenizer pair.

    Logs one summary line (the release's figure first, the pooled one beside it); writes the result with
    per-example rows to `out` (JSON) when given. Returns it."""
    from lvm.checkpoints import load_pair
    from lvm.tokens import TokenLayout
    from lvm_base.files import atomic_write_text

    if not Path(file).is_file():
        raise InputError(f"{file}: no such file")
    model, tok, plan = load_pair(model_dir, tokenizer_dir, device, precision)
    layout = TokenLayout.from_model_config(model.config)
    examples, skipped = read_examples(file, tok, layout, input_key, target_key, input_base_dir, max_examples)
    if not examples:
        raise InputError(f"{file}: no usable examples ({skipped} skipped)")
    _, _, per = target_nll(model, [(i, t) for _, i, t in examples], layout,
                           batch_size=batch_size, precision=plan.precision)
    agg = aggregate(per)
    log(f"perplexity {agg['perplexity']:.4f} (mean over {len(examples)} examples of exp(mean target NLL), as "
        f"the release) | pooled {agg['pooled_perplexity']:.4f} (exp of mean NLL {agg['mean_nll']:.4f} over "
        f"{agg['tokens']} target tokens) | {skipped} skipped; {plan.device} {plan.precision}")
    rows = [{"line": n, "nll": s, "tokens": c, "perplexity": math.exp(s / c)}
            for (n, _, _), (s, c) in zip(examples, per)]
    result = {**agg, "examples": len(examples), "skipped": skipped, "device": plan.device,
              "precision": plan.precision, "per_example": rows}
    if out:
        atomic_write_text(out, json.dumps(result, indent=1))
    return result
