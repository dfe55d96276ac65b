"""Visual prompting in the browser: a web page (Gradio) on the same engine and prompt code as `lvm prompt`.

Build a prompt by uploading images or loading an example prompt from prompts/, reorder or remove images,
switch between sequential (frames -> the next n) and analogy (pairs A -> A' side by side, then a query B),
set new images / candidates / temperature / top-k / top-p / seed, Generate (live progress, Stop) and get
each candidate, the labeled grid and a download of the prompt folder (prompt.yaml, images, generation.json).
One generation runs at a time; other requests wait in the queue. The page binds to 127.0.0.1 unless --host
says otherwise. Scripts use the API (`/generate`) with gradio_client; see README "Prompting in the browser".

Needs the serve extra: pip install -e '.[serve]'.

examples:
  lvm serve                                   # the demo's model and tokenizer, http://127.0.0.1:7860
  lvm serve --model runs/lvm --tokenizer runs/tok --port 8080
  lvm serve --model Emma02/LVM_ckpts --tokenizer Emma02/vqvae_ckpts --device cuda --host 0.0.0.0
"""


def add_arguments(p):
    from lvm.commands.pair_args import add_pair_arguments

    add_pair_arguments(p, demo_default=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--out", default="out/serve", help="folder for uploads and results (default out/serve)")
    p.add_argument("--examples", default="prompts", help="folder of example prompt YAML files (default prompts)")


def run(args):
    from tokenizer.common.errors import InputError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("lvm serve needs the serve extra: pip install -e '.[serve]'") from None
    from lvm.serve.app import serve

    serve(args.model, args.tokenizer, args.device, args.precision, args.host, args.port, args.out, args.examples)
    return 0
