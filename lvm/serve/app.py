"""The `lvm serve` web page (Gradio) and its HTTP API, over a PromptService.

Page: build a prompt by uploading images or loading an example from prompts/, reorder / remove them, pick
sequential (frames -> next n) or analogy (pairs A -> A' shown side by side, then the query B); sampling
settings; Generate with live progress and Stop; the candidates next to the prompt, the labeled grid
`lvm prompt` writes, and downloads of the grid and of the prompt folder (prompt.yaml, images,
generation.json). API: `/generate` (images, mode, n, candidates, temperature, top_k, top_p, seed) ->
(candidate images, grid), through Gradio's own client or its REST routes.

What the server hands back is its own: uploads are re-encoded PNGs (service.py) that are not served at all;
Gradio's cache (raw uploads, copies of results) lies in a folder of the server's that is not an allowed
path, so Gradio serves a file there inline only when its type is an image's and as a download otherwise.
The events that take settings or files skip Gradio's preprocessing, so a bad value ("abc" as the seed)
reaches the service's checks and comes back as one line naming the field, not a logged traceback.
"""

from __future__ import annotations

import atexit
import html
import os
from pathlib import Path

import gradio as gr

from lvm.generate.sampling import DEFAULTS
from lvm.serve.service import (MAX_CANDIDATES, MAX_IMAGES_PER_PROMPT, MAX_UPLOAD_MB, PromptService, Stopped,
                               check_settings, public_message, short)
from lvm.serve.storage import Storage
from lvm_base.errors import InputError

PRIVATE = {"api_visibility": "private"}  # page plumbing, not part of the API
RAW = {"preprocess": False}  # values as sent: the service checks them and names what is wrong
PAGE_CANDIDATES = 2  # the page starts with two candidates side by side (the API's default: DEFAULTS.candidates)


def web_message(e: BaseException) -> str:
    """One line for the page or an API client: no server folders, and no markup (Gradio renders an error's
    text as HTML, and a file's name is the client's)."""
    return html.escape(public_message(e), quote=False)


class UploadCap:
    """ASGI middleware: a POST to Gradio's upload route is refused (413, one line) unless its bytes fit the
    server's disk cap once the oldest files are pruned; Gradio itself writes any number of files there."""

    def __init__(self, app, store: Storage):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/upload"):
            import anyio
            from starlette.responses import PlainTextResponse

            length = dict(scope["headers"]).get(b"content-length", b"")
            if not length.isdigit():
                return await PlainTextResponse("an upload needs a Content-Length header", 411)(scope, receive, send)
            try:
                await anyio.to_thread.run_sync(self.store.make_room, int(length))
            except InputError as e:
                return await PlainTextResponse(public_message(e), 413)(scope, receive, send)
        await self.app(scope, receive, send)


def labels(mode: str, n: int) -> list[str]:
    """f1 f2 ... (sequential) or A1 A1' A2 A2' ... B (analogy, the last odd image is the query)."""
    if mode == "sequential":
        return [f"f{i + 1}" for i in range(n)]
    out = [f"A{i // 2 + 1}" + ("'" if i % 2 else "") for i in range(n)]
    if n % 2:
        out[-1] = "B"
    return out


def prompt_picture(svc: PromptService, state: dict):
    """The prompt as the model will read it: frames in one row, or one row per pair and the query below."""
    from lvm_base.image_io import load_image, make_grid

    paths, mode = state["images"], state["mode"]
    if not paths:
        return None
    r = svc.s.tok.resolution
    ims = [load_image(p).resize((r, r)) for p in paths]
    names = labels(mode, len(paths))
    if mode == "sequential":
        return make_grid([ims], col_labels=names)
    rows = [ims[i:i + 2] for i in range(0, len(ims), 2)]
    return make_grid(rows, labels=[" / ".join(names[i:i + 2]) for i in range(0, len(ims), 2)])


def gallery_items(res) -> list:
    """(image, caption) per generated image, candidate by candidate."""
    return [(im, f"candidate {c + 1} · new {j + 1}") for c, ims in enumerate(res.candidates)
            for j, im in enumerate(ims)]


def _view(svc, state, message=""):
    gone = [p for p in state["images"] if not Path(p).is_file()]
    if gone:  # removed by the disk cap or the age limit: the prompt goes on without them, saying so
        state = dict(state, images=[p for p in state["images"] if p not in gone])
        note = f"{len(gone)} image(s) were removed from the server (disk cap or age limit); add them again"
        message = f"{message}; {note}" if message else note
    choices = [f"{i + 1}: {lab}" for i, lab in enumerate(labels(state["mode"], len(state["images"])))]
    return state, prompt_picture(svc, state), gr.update(choices=choices, value=choices[-1] if choices else None), message


def _index(which) -> int | None:
    return int(str(which).split(":")[0]) - 1 if which else None


def build_app(svc: PromptService) -> gr.Blocks:
    def add(files, state):
        files, room = files or [], MAX_IMAGES_PER_PROMPT - len(state["images"])
        try:
            new = svc.accept_uploads(files, room=room)
        except (InputError, OSError) as e:
            gr.Warning(web_message(e))
            return (*_view(svc, state, f"**could not add:** {web_message(e)}"), None)
        state = dict(state, images=state["images"] + [str(p) for p in new])
        over = len(files) - room
        note = f"added {len(new)} image(s)" + (f"; {over} over the {MAX_IMAGES_PER_PROMPT}-image limit dropped"
                                               if over > 0 else "")
        return (*_view(svc, state, note), None)

    def load(name, state):
        try:
            mode, paths, n_new = svc.load_example(name)
        except InputError as e:
            return (*_view(svc, state, f"**{web_message(e)}**"), gr.update(), gr.update())
        state = {"mode": mode, "images": [str(p) for p in paths]}
        return (*_view(svc, state, f"loaded example **{name}**"), mode, n_new)

    def set_mode(mode, state):
        return _view(svc, dict(state, mode=mode))

    def move(which, state, step):
        i, ims = _index(which), list(state["images"])
        if i is None or not 0 <= i + step < len(ims):
            return _view(svc, state)
        ims[i], ims[i + step] = ims[i + step], ims[i]
        state = dict(state, images=ims)
        st, pic, drop, msg = _view(svc, state)
        return st, pic, gr.update(choices=drop["choices"], value=drop["choices"][i + step]), msg

    def remove(which, state):
        i = _index(which)
        ims = [p for k, p in enumerate(state["images"]) if k != i]
        return _view(svc, dict(state, images=ims))

    def run(state, n, candidates, temperature, top_k, top_p, seed, request: gr.Request, progress=gr.Progress()):
        def on_progress(j, n_img, t, tpi, tps):
            progress((j * tpi + t) / (n_img * tpi), desc=f"image {j + 1} of {n_img}: {t}/{tpi} tokens, {tps:.1f} tokens/s")

        try:
            res = svc.generate(state["images"], state["mode"], n, candidates, temperature, top_k, top_p, seed,
                               progress=on_progress, owner=getattr(request, "session_hash", None))
        except Stopped:
            return [], None, None, None, "stopped"
        except InputError as e:
            gr.Warning(web_message(e))
            return [], None, None, None, f"**cannot generate:** {web_message(e)}"
        i = res.info
        status = (f"{i['candidates']} candidate(s) x {i['n']} image(s) in {i['seconds']} s "
                  f"({i['tokens_per_s']} tokens/s, {i['device']} {i['precision']}); seeds {i['seeds']}")
        return gallery_items(res), str(res.grid), str(res.grid), str(res.zip), status

    def api_generate(files, mode, n, candidates, temperature, top_k, top_p, seed):
        """Images in, candidates out: for scripts (gradio_client, REST)."""
        try:
            if mode not in ("sequential", "analogy"):
                raise InputError(f"mode must be sequential or analogy, got {short(mode)}")
            check_settings(n, candidates, temperature, top_k, top_p, seed)  # before storing any upload
            res = svc.generate(svc.accept_uploads(files), mode, n, candidates, temperature, top_k, top_p, seed)
        except InputError as e:  # the client's mistake: one line back, no traceback in the server's log
            raise gr.Error(web_message(e), print_exception=False) from None
        return gallery_items(res), str(res.grid)

    with gr.Blocks(title="lvm: visual prompting") as app:
        state = gr.State({"mode": "sequential", "images": []})
        gr.Markdown("## lvm: visual prompting\nShow frames and the model continues them; show pairs A → A' and "
                    "a query B and it answers B'.")
        gr.Markdown(svc.describe(), elem_id="loaded")
        with gr.Row():
            with gr.Column(scale=3):
                mode = gr.Radio(["sequential", "analogy"], value="sequential", label="prompt mode",
                                info="sequential: frames, then the next ones; analogy: A1 A1' A2 A2' ... B")
                with gr.Row():
                    example = gr.Dropdown(list(svc.examples), value=None, label="example prompt", elem_id="example")
                    load_btn = gr.Button("Load example", elem_id="load")
                files = gr.File(file_count="multiple", label=f"add images (at most {MAX_IMAGES_PER_PROMPT})",
                                elem_id="upload")
                picture = gr.Image(label="prompt", type="pil", interactive=False, elem_id="prompt")
                with gr.Row():
                    which = gr.Dropdown([], label="image", elem_id="which")
                    earlier, later = gr.Button("◀ earlier"), gr.Button("later ▶")
                    drop, clear = gr.Button("remove"), gr.Button("clear")
                message = gr.Markdown(elem_id="message")
            with gr.Column(scale=2):
                n = gr.Slider(1, 8, value=DEFAULTS.n, step=1, label="new images")  # the API takes up to MAX_NEW_IMAGES
                candidates = gr.Slider(1, MAX_CANDIDATES, value=PAGE_CANDIDATES, step=1, label="candidates")
                temperature = gr.Slider(0, 2, value=DEFAULTS.temperature, step=0.05, label="temperature (0 = greedy)")
                top_k = gr.Slider(0, 500, value=DEFAULTS.top_k, step=1, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=DEFAULTS.top_p, step=0.05, label="top-p")
                seed = gr.Number(DEFAULTS.seed, precision=0, label="seed (candidate c uses seed + c)")
                with gr.Row():
                    gen = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(label="candidates", columns=8, fit_columns=False, height=220, object_fit="contain",
                             format="png", elem_id="candidates")
        grid = gr.Image(label="grid (prompt | candidates)", type="filepath", interactive=False, elem_id="grid")
        with gr.Row():
            grid_file = gr.File(label="grid.png", interactive=False)
            zip_file = gr.File(label="prompt folder: prompt.yaml, images, candidates, generation.json",
                               interactive=False)
        with gr.Row(visible=False):
            api_files = gr.File(file_count="multiple", label="images")
            api_btn = gr.Button()

        view = [state, picture, which, message]
        files.upload(add, [files, state], [*view, files], **PRIVATE, **RAW)
        load_btn.click(load, [example, state], [*view, mode, n], **PRIVATE)
        mode.input(set_mode, [mode, state], view, **PRIVATE)
        earlier.click(lambda w, s: move(w, s, -1), [which, state], view, **PRIVATE)
        later.click(lambda w, s: move(w, s, 1), [which, state], view, **PRIVATE)
        drop.click(remove, [which, state], view, **PRIVATE)
        clear.click(lambda s: _view(svc, dict(s, images=[])), [state], view, **PRIVATE)
        event = gen.click(run, [state, n, candidates, temperature, top_k, top_p, seed],
                          [gallery, grid, grid_file, zip_file, status], **PRIVATE, **RAW)
        def halt(request: gr.Request):
            svc.stop(request.session_hash)  # only this tab's own generation

        stop.click(halt, None, None, cancels=[event], queue=False, **PRIVATE)
        api_btn.click(api_generate, [api_files, mode, n, candidates, temperature, top_k, top_p, seed],
                      [gallery, grid], api_name="generate", **RAW)
    return app


def _check_folders(work_dir, examples_dir) -> None:
    if Path(work_dir).resolve().is_relative_to(Path(examples_dir).resolve()):
        # every file under the examples is served as it is: the uploads would be too
        raise InputError(f"--out {work_dir} lies inside --examples {examples_dir}, whose files are all served; "
                         "pick an --out outside it")


def make_service(model=None, tokenizer=None, device: str = "auto", precision: str = "auto",
                 work_dir: str | Path = "out/serve", examples_dir: str | Path = "prompts",
                 max_disk_mb: float = 500, max_age_h: float = 24) -> PromptService:
    """Load the model and tokenizer (the demo's where not given) into the service the page runs on."""
    from lvm.prompt.session import Session
    from lvm.serve.storage import MB
    from lvm_base.hardware import resolve

    _check_folders(work_dir, examples_dir)  # the folders and caps are one-line errors before a model loads
    Storage(Path(work_dir), float(max_disk_mb) * MB, float(max_age_h) * 3600)

    resolve(device, precision, "inference")  # a device that is not there is a one-line error first
    from lvm.checkpoints import resolve_pair

    model, tokenizer = resolve_pair(model, tokenizer)
    session = Session(model, tokenizer, out_dir=Path(work_dir), display="none", device=device,
                      precision=precision, progress=False)
    return PromptService(session, Path(work_dir), Path(examples_dir), names=(str(model), str(tokenizer)),
                         max_disk_mb=max_disk_mb, max_age_h=max_age_h)


def launch(svc: PromptService, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page of `svc` on host:port; returns the app (running in the background unless `block`).
    The service's temporary files go when the server stops (or the process exits)."""
    from starlette.middleware import Middleware

    store, examples = svc.store, Path(svc.examples_dir).resolve()
    _check_folders(svc.work, examples)
    # Gradio writes raw uploads and the copies of results it serves into its cache folder, read from this
    # variable when the page's components and the server are made and whenever an upload is checked, so
    # it is set for the process: a folder of this server's own, which its disk cap counts and prunes.
    store.cache.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(store.cache)
    store.prune()  # what an earlier server left past the age limit or the cap
    app = build_app(svc)
    app.queue(default_concurrency_limit=1)  # one generation at a time; the others wait in the queue
    atexit.register(svc.close)
    # Served inline by their type: the example prompts and the results the service wrote (PNGs, JSON, a
    # zip). Not uploads/ (never served) nor the cache (Gradio's own rule: images inline, the rest as a
    # download).
    allowed = [str(examples), str(store.runs)]
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                   max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=allowed, footer_links=["api"],
                   app_kwargs={"middleware": [Middleware(UploadCap, store=store)]})
    finally:
        if block:  # stopped (Ctrl-C, SIGTERM): the page is gone, so are its temporary files
            svc.close()
    return app


def serve(model=None, tokenizer=None, device: str = "auto", precision: str = "auto", host: str = "127.0.0.1",
          port: int = 7860, work_dir: str | Path = "out/serve", examples_dir: str | Path = "prompts",
          block: bool = True, max_disk_mb: float = 500, max_age_h: float = 24):
    """`lvm serve`: `make_service` then `launch`."""
    svc = make_service(model, tokenizer, device, precision, work_dir, examples_dir, max_disk_mb, max_age_h)
    return launch(svc, host, port, block)
