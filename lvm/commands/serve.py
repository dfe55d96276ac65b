"""Visual prompting in the browser: a web page (Gradio) on the same engine and prompt code as `lvm prompt`.

Build a prompt by uploading images or loading an example prompt from prompts/, reorder or remove images,
switch between sequential (frames -> the next n) and analogy (pairs A -> A' side by side, then a query B),
set new images / candidates / temperature / top-k / top-p / seed, Generate (live progress, Stop) and get
each candidate, the labeled grid and a download of the prompt folder (prompt.yaml, images, generation.json).
One generation runs at a time; other requests wait in the queue. The page binds to 127.0.0.1 unless --host
says otherwise. Uploads are re-encoded as PNGs (at most 4096 x 4096 pixels, refused before decoding past
that); uploads, results and the web cache under --out stay under --max-disk-mb (the oldest go first) and
--max-age-hours, and the temporary ones (uploads, cache) go when the server stops. Scripts use the API
(`/generate`) with gradio_client; see docs/serve.md.

Needs the serve extra: pip install -e '.[serve]'.

examples:
  lvm serve                                   # the demo's model and tokenizer, http://127.0.0.1:7860
  lvm serve --model runs/lvm --tokenizer runs/tok --port 8080
  lvm serve --model Emma02/LVM_ckpts --tokenizer Emma02/vqvae_ckpts --device cuda --host 0.0.0.0
"""


def add_arguments(p):
    from lvm.commands.arg_types import POSITIVE_FLOAT, int_range
    from lvm.commands.pair_args import add_pair_arguments

    add_pair_arguments(p, default_model=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=7860, help="port (default 7860)")
    p.add_argument("--out", default="out/serve", help="folder for uploads and results (default out/serve)")
    p.add_argument("--examples", default="prompts", help="folder of example prompt YAML files (default prompts)")
    p.add_argument("--max-disk-mb", type=POSITIVE_FLOAT, default=500,
                   help="cap on uploads, results and the web cache under --out; the oldest go first, and an "
                        "upload that still does not fit is refused (default 500)")
    p.add_argument("--max-age-hours", type=POSITIVE_FLOAT, default=24,
                   help="uploads, results and cached files older than this are removed (default 24)")


def run(args):
    from lvm_base.errors import InputError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("lvm serve needs the serve extra: pip install -e '.[serve]'") from None
    import signal

    from lvm.serve.app import serve

    stopped = []

    def stop(signum, frame):
        stopped.append(signum)
        raise KeyboardInterrupt  # Gradio's wait loop ends on it, and launch then removes the temporary files

    before = signal.signal(signal.SIGTERM, stop)
    try:
        serve(args.model, args.tokenizer, args.device, args.precision, args.host, args.port, args.out,
              args.examples, max_disk_mb=args.max_disk_mb, max_age_h=args.max_age_hours)
    except KeyboardInterrupt:
        # A SIGTERM that comes while launch is still starting up passes its wait loop by (the files go all
        # the same): a stop asked for, not an interruption. Ctrl-C stays one (exit 130).
        if not stopped:
            raise
    finally:
        signal.signal(signal.SIGTERM, before)
    return 0
