"""What a GPU user relies on, measured in one run that fits a GPU's scarce minutes.

The parts, each skipped with the reason where it cannot run (no CUDA device, not enough memory, taming not
installed, the budget spent): `lvm env`; the engine equals HF greedy decoding token for token (tiny and
300m, random weights, with and without the CUDA-graph step); `bench generate` for 7b and 300m (random
weights, half precision, batch 1 and 4) beside HF generate() in its default and its static-cache +
torch.compile setting, with the batch-1 step against the bandwidth roofline; `bench train` for 300m and
1b (tokens/s, MFU against the datasheet bf16 peak and the measured one, HF's plain loop beside it); the
tokenizer against its taming reference; `lvm train` stopped as a kill would and resumed, equal to the
uninterrupted run. The model-side parts need only torch, transformers and accelerate.

--quick runs every part at CPU sizes in well under a minute: it shows the command works before a GPU
appears. The exit code is 1 when a correctness check fails or a part raises; a figure below its target
(7b batch-1 decode >= 80% of the roofline and faster than HF static+compile, 300m training MFU >= 40%) is
a 'miss' in the table's target column, not a failure.

examples:
  lvm bench suite --quick --out out/suite-cpu
  lvm bench suite --out out/gpu-suite                       # on a GPU, <= 8 minutes
  lvm bench suite --parts env,equal,generate-7b --budget-minutes 4
"""

from __future__ import annotations

from lvm.commands.arg_types import POSITIVE_FLOAT


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="CPU sizes (a one-layer model, a tiny tokenizer): the CI run")
    p.add_argument("--out", default="out/suite", help="directory for suite.json and suite.md (default out/suite)")
    p.add_argument("--budget-minutes", type=POSITIVE_FLOAT, default=8.0,
                   help="wall-clock budget; a part starts only if its estimated time is left (default 8)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--parts", default=None,
                   help="comma list of parts or prefixes (env, equal, generate-7b, train-300m, resume, tokenizer, "
                        "generate-300m, train-1b; 'generate' = both sizes); default all")


def run(args):
    from lvm.bench.suite import run_suite

    return run_suite(quick=args.quick, out=args.out, budget_minutes=args.budget_minutes, device=args.device,
                     parts=args.parts)
