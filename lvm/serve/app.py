"""The `lvm serve` web page (Gradio) and its HTTP API, over a PromptService.

Page: build a prompt by uploading images or loading an example from prompts/, reorder / remove them, pick
sequential (frames -> next n) or analogy (pairs A -> A' shown side by side, then the query B); sampling
settings; Generate with live progress and Stop; the candidates next to the prompt, the labeled grid
`lvm prompt` writes, and downloads of the grid and of the prompt folder (prompt.yaml, images,
generation.json). API: `/generate` (images, mode, n, candidates, temperature, top_k, top_p, seed) ->
(candidate images, grid), through Gradio's own client or its REST routes.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lvm.serve.service import MAX_CANDIDATES, MAX_IMAGES_PER_PROMPT, MAX_UPLOAD_MB, PromptService, Stopped
from tokenizer.common.errors import InputError

PRIVATE = {"api_visibility": "private"}  # page plumbing, not part of the API


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
    from tokenizer.image_io import load_image, make_grid

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
    choices = [f"{i + 1}: {lab}" for i, lab in enumerate(labels(state["mode"], len(state["images"])))]
    return state, prompt_picture(svc, state), gr.update(choices=choices, value=choices[-1] if choices else None), message


def _index(which) -> int | None:
    return int(str(which).split(":")[0]) - 1 if which else None


def build_app(svc: PromptService) -> gr.Blocks:
    def add(files, state):
        try:
            new = svc.accept_uploads(files)
        except (InputError, OSError) as e:
            gr.Warning(str(e))
            return (*_view(svc, state, f"**could not add:** {' '.join(str(e).split())}"), None)
        room = MAX_IMAGES_PER_PROMPT - len(state["images"])
        state = dict(state, images=state["images"] + [str(p) for p in new[:room]])
        note = f"added {min(len(new), room)} image(s)" + (f"; {len(new) - room} over the {MAX_IMAGES_PER_PROMPT}-image limit dropped"
                                                           if len(new) > room else "")
        return (*_view(svc, state, note), None)

    def load(name, state):
        try:
            mode, paths, n_new = svc.load_example(name)
        except InputError as e:
            return (*_view(svc, state, f"**{e}**"), gr.update(), gr.update())
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
            gr.Warning(str(e))
            return [], None, None, None, f"**cannot generate:** {' '.join(str(e).split())}"
        i = res.info
        status = (f"{i['candidates']} candidate(s) x {i['n']} image(s) in {i['seconds']} s "
                  f"({i['tokens_per_s']} tokens/s, {i['device']} {i['precision']}); seeds {i['seeds']}")
        return gallery_items(res), str(res.grid), str(res.grid), str(res.zip), status

    def api_generate(files, mode, n, candidates, temperature, top_k, top_p, seed):
        """Images in, candidates out: for scripts (gradio_client, REST)."""
        try:
            res = svc.generate(svc.accept_uploads(files), mode, n, candidates, temperature, top_k, top_p, seed)
        except InputError as e:
            raise gr.Error(" ".join(str(e).split())) from None
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
                n = gr.Slider(1, 8, value=1, step=1, label="new images")
                candidates = gr.Slider(1, MAX_CANDIDATES, value=2, step=1, label="candidates")
                temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="temperature (0 = greedy)")
                top_k = gr.Slider(0, 500, value=50, step=1, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p")
                seed = gr.Number(0, precision=0, label="seed (candidate c uses seed + c)")
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
        files.upload(add, [files, state], [*view, files], **PRIVATE)
        load_btn.click(load, [example, state], [*view, mode, n], **PRIVATE)
        mode.input(set_mode, [mode, state], view, **PRIVATE)
        earlier.click(lambda w, s: move(w, s, -1), [which, state], view, **PRIVATE)
        later.click(lambda w, s: move(w, s, 1), [which, state], view, **PRIVATE)
        drop.click(remove, [which, state], view, **PRIVATE)
        clear.click(lambda s: _view(svc, dict(s, images=[])), [state], view, **PRIVATE)
        event = gen.click(run, [state, n, candidates, temperature, top_k, top_p, seed],
                          [gallery, grid, grid_file, zip_file, status], **PRIVATE)
        def halt(request: gr.Request):
            svc.stop(request.session_hash)  # only this tab's own generation

        stop.click(halt, None, None, cancels=[event], queue=False, **PRIVATE)
        api_btn.click(api_generate, [api_files, mode, n, candidates, temperature, top_k, top_p, seed],
                      [gallery, grid], api_name="generate")
    return app


def make_service(model=None, tokenizer=None, device: str = "auto", precision: str = "auto",
                 work_dir: str | Path = "out/serve", examples_dir: str | Path = "prompts") -> PromptService:
    """Load the model and tokenizer (the demo's where not given) into the service the page runs on."""
    from lvm.prompt.session import Session
    from tokenizer.common.hardware import resolve

    resolve(device, precision, "inference")  # a device that is not there is a one-line error first
    from lvm.checkpoints import or_demo

    model, tokenizer = or_demo("model", model), or_demo("tokenizer", tokenizer)
    session = Session(model, tokenizer, out_dir=Path(work_dir), display="none", device=device,
                      precision=precision, progress=False)
    return PromptService(session, Path(work_dir), Path(examples_dir), names=(str(model), str(tokenizer)))


def launch(svc: PromptService, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page of `svc` on host:port; returns the app (running in the background unless `block`)."""
    app = build_app(svc)
    app.queue(default_concurrency_limit=1)  # one generation at a time; the others wait in the queue
    work_dir, examples_dir = svc.work, Path(svc.examples_dir)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
               max_file_size=f"{MAX_UPLOAD_MB}mb",
               allowed_paths=[str(Path(examples_dir).resolve()), str(Path(work_dir).resolve())],
               footer_links=["api"])
    return app


def serve(model=None, tokenizer=None, device: str = "auto", precision: str = "auto", host: str = "127.0.0.1",
          port: int = 7860, work_dir: str | Path = "out/serve", examples_dir: str | Path = "prompts",
          block: bool = True):
    """`lvm serve`: `make_service` then `launch`."""
    return launch(make_service(model, tokenizer, device, precision, work_dir, examples_dir), host, port, block)
