"""Time to generate one image (256 tokens) after a prompt of 7 images (--context): this engine vs HF `generate()`.

Both sides use the same weights (a randomly initialised model of the chosen config, or --model DIR), the
same device and the same sampling (temperature, top-k 50, ids >= K forbidden; HF gets them as
`suppress_tokens`). HF runs with its default settings (its dynamic cache and attention) in fp32 on a CPU,
the reference, and elsewhere in the precision auto picks for the device (bf16 from Ampere on). The engine
runs once per `--precision` (a comma list; auto is printed with what it resolved to), all in one process on
the same prompt; runs alternate HF / engines so background load hits all alike, and the median of
--repeats runs is reported. Time includes the prompt's prefill; tokens/s = candidates * 256 / time. On a
CPU the engine decodes with the compiled kernels of `lvm.generate.kernels` when it can (setup includes their
one-time build; LVM_KERNELS=0 shows the plain-PyTorch engine); on CUDA with a captured graph step.

Each engine also runs speculatively (lvm/generate/speculative.py: tokens drafted from the previous image and
the model's own earlier guesses, verified in one forward pass): its tokens/s, forward passes per image (plain:
256), tokens kept per pass per candidate, its speed over the plain engine's ("spec/ours", prefill included)
and the same ratio of the decoding alone ("decode": the time after the first token, which carries the
prompt's prefill that both share). How much is
kept depends on the model and the prompt: on random weights it says little (an untrained model with the
copy prior copies whatever it is shown); `--prompt FILE` (a prompt YAML, with `--model DIR`: a trained
model and its recorded tokenizer, or --tokenizer) measures it on real images.

The roofline line (batch 1) sets the bytes one decoding step must read (the weight matrices + the KV cache
up to the position) against a measured copy bandwidth of the device (a large tensor copy, read + write),
and the measured decoding time per step (prefill excluded) against that ideal. On a CPU whose caches hold
the weights it can pass 100%.

    lvm bench generate --model tiny --candidates 1,4
    lvm bench generate --model 100m --candidates 1 --precision auto,fp32,bf16
    lvm bench generate --model 7b --device cuda --candidates 1,4
    lvm bench generate --model runs/lvm-small --prompt prompts/rotation.yaml --candidates 1 --temperature 0
"""

from __future__ import annotations

from lvm.commands.arg_types import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, SEED_INT
from lvm.generate.sampling import DEFAULTS


def add_arguments(p):
    from lvm.commands.hardware_args import add_hardware_arguments as device_arguments

    p.add_argument("--model", default="tiny",
                   help="config name in configs/model (tiny, 100m, ...), a model YAML, or an HF model directory")
    p.add_argument("--candidates", default="1,4",
                   help="comma-separated candidate counts, compared side by side (default 1,4)")
    p.add_argument("--context", type=POSITIVE_INT, default=7,
                   help="random prompt images before the new one (without --prompt; default 7)")
    p.add_argument("--prompt", default=None, metavar="FILE",
                   help="a prompt YAML whose images (encoded by the model's tokenizer) are the prompt")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="with --prompt: the tokenizer (default: the "
                                                                    "one the model directory records)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3)
    p.add_argument("--temperature", type=NON_NEGATIVE_FLOAT, default=DEFAULTS.temperature,
                   help=f"0 = greedy (default {DEFAULTS.temperature:g})")
    p.add_argument("--top-k", type=NON_NEGATIVE_INT, default=DEFAULTS.top_k,
                   help=f"0 = off (default {DEFAULTS.top_k})")
    device_arguments(p, device_help="where both sides run: auto (a GPU if there is one), cpu, cuda, cuda:N or mps",
                     precision_help="comma-separated engine precisions, compared side by side (default auto: "
                                    "what the policy picks here; e.g. auto,fp32,bf16)", many=True)
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=SEED_INT, default=DEFAULTS.seed)


def run(args):
    from lvm.bench.generate import bench_generate

    return bench_generate(model=args.model, candidates=args.candidates, context=args.context,
                          repeats=args.repeats, temperature=args.temperature, top_k=args.top_k,
                          threads=args.threads, seed=args.seed, device=args.device, precision=args.precision,
                          prompt=args.prompt, tokenizer=args.tokenizer)
