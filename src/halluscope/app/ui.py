"""The page: pick a model, give it an image or a clip (upload, or a bundled world example),
choose how much of it the model sees, and look at N continuations beside the ground truth,
with the probes' numbers, the entropy heat map and, on demand, a context sweep.

Every handler turns a UserError into a gr.Error, so a bad upload or setting shows as one
readable line on the page (and in an API client's exception), never as a traceback; any other
failure is logged on the server and reaches the client as one line without its details (they
may hold the server's paths)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from halluscope.app import inference
from halluscope.app.guard import Guard
from halluscope.app.models import Model, ModelStore
from halluscope.deadline import time_budget
from halluscope.errors import UserError

TITLE = "halluscope · conditional sampling"
INTRO = ("Give the model the top rows of an image or the first frames of a clip and draw continuations. "
         "Photos leave the rest open, short clips almost fix it: compare the samples with the ground truth, "
         "and the match rate with the context you give.")


log = logging.getLogger(__name__)


def readable_errors(fn):
    """Run a handler (an App's: within its time budget per request), showing a user's mistake
    as a gr.Error message and anything else as one line that names no server path (the
    traceback goes to the server's log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with time_budget(getattr(args[0], "time_budget", None) if args else None):
                return fn(*args, **kwargs)
        except UserError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:
            log.exception("request failed in %s", fn.__name__)
            raise gr.Error(f"the server could not complete this request ({type(e).__name__}); "
                           "its log has the details") from None
    return wrapper


def slider_settings(model: Model) -> dict:
    """The context slider for a model: 1 .. units - 1 leading rows / latent frames. With only
    2 units the one valid choice (1) is shown on a 0 .. 2 scale, fixed: a slider's ends must
    differ."""
    units = model.grid[0]
    low, high = (1, units - 1) if units > 2 else (0, units)
    return {"minimum": low, "maximum": high, "value": max(1, units // 2), "step": 1, "interactive": units > 2,
            "label": f"context: leading {model.unit_name} (of {units})"}


def sampling_settings(samples: float, temperature: float, top_k: float | None, top_p: float,
                      seed: float | None, encoding: str = "visible", cfg_scale: float = 1.0,
                      label: float | None = None) -> inference.Settings:
    """The page's sampling widgets as checked Settings (numbers arrive as floats, empty as None)."""
    settings = inference.Settings(int(samples), float(temperature), int(top_k or 0), float(top_p), int(seed or 0),
                                  encoding, float(cfg_scale), None if label is None or label < 0 else int(label))
    settings.check()
    return settings


class App:
    """The handlers, bound to one ModelStore and one cache folder (examples, request files);
    each request may run for `time_budget` seconds (None: no limit)."""

    def __init__(self, store: ModelStore, cache: Path, time_budget: float | None = None):
        self.store, self.cache, self.time_budget = store, Path(cache), time_budget

    def examples(self, model: Model) -> dict[str, Path]:
        return {p.name: p for p in inference.example_files(model, self.cache)}

    def slider(self, model: Model) -> dict:
        return gr.update(**slider_settings(model))

    @readable_errors
    def on_model(self, name: str):
        model = self.store.get(name)
        choices = list(self.examples(model))
        return (model.describe(), self.slider(model),
                gr.update(choices=choices, value=None, label=f"… or pick a world example ({model.kind})"), None)

    @readable_errors
    def on_example(self, name: str, example: str | None):
        if not example:
            return gr.update()
        found = self.examples(self.store.get(name))
        if example not in found:  # only the listed files, whatever a client sends
            raise UserError(f"unknown example {example!r}")
        return str(found[example])

    @readable_errors
    def on_preview(self, name: str, upload: str | None, units: float):
        if upload is None:
            return None
        model = self.store.get(name)
        x = inference.read_input(upload, model)
        return inference.preview(x, model, self.units(model, units), inference.request_dir(self.cache))

    @staticmethod
    def units(model: Model, units: float) -> int:
        units = int(units)
        if not 1 <= units < model.grid[0]:
            raise UserError(f"context must be 1 to {model.grid[0] - 1} {model.unit_name}, got {units}")
        return units

    @readable_errors
    def on_sample(self, name: str, upload: str | None, units: float, samples: float, temperature: float,
                  top_k: float, top_p: float, seed: float, encoding: str = "visible", cfg_scale: float = 1.0,
                  label: float | None = None, progress=gr.Progress(track_tqdm=True)):
        model = self.store.get(name)
        settings = sampling_settings(samples, temperature, top_k, top_p, seed, encoding, cfg_scale, label)
        progress(0.0, desc="reading the input")
        x = inference.read_input(upload, model)
        progress(0.1, desc="sampling")
        out = inference.sample_request(model, x, self.units(model, units), settings, inference.request_dir(self.cache))
        gallery = [(path, f"sample {i + 1}") for i, path in enumerate(out.samples)]
        return out.context, out.truth, out.reconstruction, gallery, out.metrics, out.entropy

    @readable_errors
    def on_sweep(self, name: str, upload: str | None, samples: float, temperature: float, top_k: float,
                 top_p: float, seed: float, encoding: str = "visible", cfg_scale: float = 1.0,
                 label: float | None = None, progress=gr.Progress()):
        model = self.store.get(name)
        settings = sampling_settings(samples, temperature, top_k, top_p, seed, encoding, cfg_scale, label)
        x = inference.read_input(upload, model)
        return inference.sweep(model, x, settings, progress)


def build(store: ModelStore, cache: str | os.PathLike, time_budget: float | None = None) -> gr.Blocks:
    """The page for the models in `store`; world examples of the first model are written into
    `cache` now, those of another when it is picked. Uploads (and gradio's copies of the
    outputs) older than inference.KEEP_UPLOADS_S are deleted as the server runs."""
    app = App(store, Path(cache), time_budget)
    first = store.get(store.names[0])
    sweep_every = max(1, min(300, inference.KEEP_UPLOADS_S // 2))
    with gr.Blocks(title=TITLE, analytics_enabled=False,  # nothing leaves the machine
                   delete_cache=(sweep_every, inference.KEEP_UPLOADS_S)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            model = gr.Dropdown(store.names, value=first.name, label="model", scale=1)
            info = gr.Markdown(first.describe())
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="upload an image or a clip", elem_id="upload")
                example = gr.Dropdown(list(app.examples(first)), value=None, label=f"… or pick a world example "
                                      f"({first.kind})", elem_id="example")
                context = gr.Slider(**slider_settings(first), elem_id="context")
                shown = gr.Image(label="the pixels the model is shown (the rest grey)", type="filepath",
                                 interactive=False, height=220)
                with gr.Accordion("sampling", open=True):
                    samples = gr.Slider(1, inference.MAX_SAMPLES, value=4, step=1, label="samples")
                    temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="temperature")
                    top_k = gr.Number(0, label="top-k (0: off)", precision=0, minimum=0)
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1: off)")
                    seed = gr.Number(0, label="seed", precision=0)
                    encoding = gr.Radio(["visible", "full"], value="visible", label="context encoding",
                                        info="visible: only the shown pixels are encoded, so the context cannot "
                                             "leak the answer; full: the whole input (the peers' practice)")
                    cfg_scale = gr.Slider(0.0, 10.0, value=1.0, step=0.25, label="guidance scale (1: off)",
                                          info="classifier-free guidance; needs a class-conditional GPT with a null "
                                               "class (LlamaGen)")
                    # -1, not empty: the page's number box cannot stay empty (it sends 0, a real class).
                    label = gr.Number(-1, label="class (-1: none, the model's null condition)", precision=0,
                                      minimum=-1)
                with gr.Row():
                    run = gr.Button("Sample", variant="primary", elem_id="sample")
                    sweep = gr.Button("Sweep context", elem_id="sweep")
            with gr.Column(scale=2):
                with gr.Row():
                    context_out = gr.Image(label="what the model saw (its context tokens decoded)", type="filepath",
                                           interactive=False, height=200)
                    truth_out = gr.Image(label="ground truth", type="filepath", interactive=False, height=200)
                    recon_out = gr.Image(label="reconstruction (tokenizer)", type="filepath", interactive=False, height=200)
                gallery = gr.Gallery(label="continuations", columns=4, elem_id="gallery", height="auto")
                table = gr.Dataframe(headers=["metric", "value", "meaning"], label="metrics", interactive=False)
                entropy = gr.Image(label="predictive entropy over the hidden part", type="filepath",
                                   interactive=False)
                plot = gr.Plot(label="match rate vs context", elem_id="plot")

        model.change(app.on_model, model, [info, context, example, upload], api_name="model")
        example.change(app.on_example, [model, example], upload, api_name="example")
        for trigger in (upload.change, context.release):
            trigger(app.on_preview, [model, upload, context], shown, show_progress="hidden", api_name=False)
        settings = [samples, temperature, top_k, top_p, seed, encoding, cfg_scale, label]
        run.click(app.on_sample, [model, upload, context, *settings],
                  [context_out, truth_out, recon_out, gallery, table, entropy], api_name="sample")
        sweep.click(app.on_sweep, [model, upload, *settings], plot, api_name="sweep")
    return demo


def sweeper(folders: list[Path], age: float):
    """A lifespan for the server: every age/2 seconds (at most 5 minutes), what is older than
    `age` under `folders` is deleted (`inference.delete_old`), until the server stops."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def loop():
            while True:
                await asyncio.sleep(max(1.0, min(300.0, age / 2)))
                for folder in folders:
                    await asyncio.to_thread(inference.delete_old, folder, age)
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
    return lifespan


def launch(store: ModelStore, cache: str | os.PathLike, host: str = "127.0.0.1", port: int | None = 7860,
           share: bool = False, concurrency: int = 2, block: bool = True, time_budget: float | None = 300
           ) -> gr.Blocks:
    """Serve the page. At most `concurrency` requests run at once (the rest wait in a queue of
    at most 64, of which one client may hold only a few: see app/guard.py), so several users
    cannot exhaust memory; each runs for at most `time_budget` seconds. `block=False` returns
    at once (tests, benchmarks); call `.close()` on the result to stop it.

    Uploads and gradio's copies of the outputs are deleted after inference.KEEP_UPLOADS_S:
    those gradio tracks by gradio itself (delete_cache); when gradio's folder lies inside
    `cache` (as `halluscope app` arranges), everything in it, by the sweeper, which also
    removes what gradio leaves untracked (an empty temporary file per upload read).

    gradio serves files only from its own folders, the working directory, the system temp
    folder and `allowed_paths`: the cache's examples and request outputs are allowed by name,
    wherever the cache lies, and nothing else of it. show_error stays off, so an exception
    outside a handler reaches a client without its text (which may name server paths)."""
    demo = build(store, cache, time_budget)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    served = [str(Path(cache).resolve() / part) for part in ("examples", inference.OUTPUTS)]
    max_bytes = inference.MAX_UPLOAD_MB * 2**20
    # An upload POST carries one file and its multipart framing: a little over one file's limit.
    guard = Middleware(Guard, queue=lambda: getattr(demo, "_queue", None), upload_dir=get_upload_folder,
                       max_upload_bytes=max_bytes + 64 * 1024)
    uploads = Path(get_upload_folder()).resolve()
    owned = [uploads] if uploads.is_relative_to(Path(cache).resolve()) else []
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, show_error=False,
                allowed_paths=served, max_file_size=f"{inference.MAX_UPLOAD_MB}mb",
                ssr_mode=False, quiet=not block, footer_links=["api"],
                app_kwargs={"middleware": [guard], "lifespan": sweeper(owned, inference.KEEP_UPLOADS_S)})
    return demo
