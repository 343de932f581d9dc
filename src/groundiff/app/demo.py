"""`groundiff demo`: the paper's Fig. 1 as a Gradio app — prompt in, image and grounded masks out,
beside DAAM's heat maps and masks of the same generation.

    groundiff demo                        # http://127.0.0.1:7860, the current world of params.yaml
    groundiff demo --port 8080 --precision fp32

1. The models load once, at start (`Grounder`: the same object `groundiff generate` uses, so a
   request returns the very bytes the command writes for the same prompt, classes and settings).
2. A request runs `Grounder.__call__` then `save_grounded` into its own folder; the page shows the
   image, our masks and DAAM's as overlays with a legend, every map per class, and the PNGs to
   download. Progress is reported per denoising step.
3. Gradio's queue runs one generation at a time (a CPU has no room for two) and holds at most
   `queue_size` waiting requests.
4. Bad input (empty prompt, unknown class, a class the prompt does not name, no trained module
   yet) is one `gr.Error` line in the page; the server keeps serving. An over-long prompt is
   generated as the text encoder reads it, with a notice naming the words it dropped.

Nothing leaves the machine: analytics off, no share link, bound to 127.0.0.1 unless `--host` says
otherwise.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from groundiff.app.grounder import Grounder
from groundiff.app.hints import error_message, file_errors
from groundiff.core import paths
from groundiff.core.errors import ParamsError, WorldError
from groundiff.figures import MASK_COLOURS, upscale

if TYPE_CHECKING:
    from groundiff.core.params import Params
    from groundiff.method.generate import Grounded
    from groundiff.worlds.active import World

#: Requests keep their files (served for download) until this many newer ones exist.
KEEP_REQUESTS = 16
#: Height in pixels of the three pictures of a request (the per-class row: two thirds of it).
PICTURE = 320


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def class_colour(k: int) -> str:
    """The k-th class's colour: the one `figures.overlay` tints its mask with in overlay.png."""
    return _hex(MASK_COLOURS[k % len(MASK_COLOURS)])


def parse_classes(picked: list[str] | None, typed: str | None) -> list[str]:
    """The multi-select's classes, then the free text's (comma-separated), each once, in order."""
    names = [*(picked or []), *((typed or "").split(","))]
    return list(dict.fromkeys(n.strip() for n in names if n and n.strip()))


@dataclass
class Reply:
    """What one request shows: the pictures, the files to download and a few lines of text."""

    image: np.ndarray  # (S*H, S*W, 3) uint8: the generated image, upscaled as saved
    ours: tuple[np.ndarray, list[tuple[np.ndarray, str]]]  # AnnotatedImage value: image, (mask, label)
    daam: tuple[np.ndarray, list[tuple[np.ndarray, str]]]
    gallery: list[tuple[str, str]]  # (PNG path, caption) per class and map
    files: list[str]  # every PNG written, as `groundiff generate` writes them (+ DAAM's)
    notes: str  # markdown: per-class pixel counts, seen/unseen, notices
    colours: dict[str, str] = field(default_factory=dict)  # class -> legend colour


class DemoSession:
    """The loaded models and the per-request work, without Gradio (tested directly and via the app)."""

    def __init__(self, grounder: Grounder, scale: int = 8, out_root: Path | None = None) -> None:
        self.grounder = grounder
        self.scale = scale
        self.out_root = Path(out_root or tempfile.mkdtemp(prefix="groundiff-demo-"))
        self._numbers = count()

    # --- what the page offers --------------------------------------------------------------
    @property
    def open_vocabulary(self) -> bool:
        """Paper worlds read any class name CLIP can spell; the shapes world knows its ten."""
        return self.grounder.world.is_paper

    def choices(self) -> list[tuple[str, str]]:
        """(label, class) for the multi-select: every class of the world, seen/unseen marked."""
        split = self.grounder.split
        return [(f"{c} ({'seen' if c in split.seen else 'unseen'})", c) for c in split.classes]

    def example(self) -> tuple[str, list[str]]:
        """A first prompt naming one seen and one unseen class (the paper's point: both work)."""
        split = self.grounder.split
        seen, unseen = split.seen[0], (split.unseen or split.seen)[0]
        return f"a photograph of a {seen} and a {unseen}", [seen, unseen]

    def status(self) -> str:
        """A banner line: the world, and whether a trained module is there yet."""
        g = self.grounder
        line = (f"World **{g.world.name}**, split {g.world.params.world.split}: seen {', '.join(g.split.seen)}; "
                f"unseen (never in grounding training) {', '.join(g.split.unseen)}. Sampling precision "
                f"{g.defaults.precision}.")
        if g.module is None:
            try:
                g.load_module()
            except (*file_errors(), ValueError) as err:
                return line + f"\n\n**No grounding module yet:** {error_message(err)}"
        return line

    # --- one request -----------------------------------------------------------------------
    def check_classes(self, classes: list[str]) -> None:
        """In a closed world every class must be the world's; paper worlds take any name (open vocabulary)."""
        if not self.open_vocabulary:
            self.grounder.split.check_known(classes, "classes")

    def request(self, prompt: str, picked: list[str] | None, typed: str | None, seed: Any, steps: Any,
                guidance: Any, threshold: Any, on_step=None) -> Reply:
        """Validate, generate, ground, save; user errors raise (ValueError, WorldError, file errors)."""
        from groundiff.method.generate import prompt_overflow, save_grounded

        prompt = (prompt or "").strip()
        classes = parse_classes(picked, typed)
        self.check_classes(classes)
        seed, steps = _whole(seed, "seed", 0), _whole(steps, "steps", 1)
        guidance, threshold = _number(guidance, "guidance"), _number(threshold, "mask threshold")
        result = self.grounder(prompt, classes, seed, steps=steps, guidance=guidance, threshold=threshold,
                               daam=True, on_step=on_step)
        out = self._folder()
        files = [str(p) for p in save_grounded(result, out, scale=self.scale)]
        notes = []
        dropped = prompt_overflow(self.grounder.pipe.tokenizer, prompt)
        if dropped:
            notes.append(f"**The prompt was too long:** the text encoder reads its first "
                         f"{self.grounder.pipe.tokenizer.model_max_length} tokens, so this was left out: "
                         f"*{dropped}*")
        return self._reply(result, out, files, notes)

    def _folder(self) -> Path:
        """A fresh folder for this request's files; the oldest beyond KEEP_REQUESTS are removed."""
        out = self.out_root / f"request_{next(self._numbers):06d}"
        kept = sorted(self.out_root.glob("request_*"))
        for folder in kept[:max(0, len(kept) - KEEP_REQUESTS + 1)]:  # room for this one
            shutil.rmtree(folder, ignore_errors=True)
        return out

    def _reply(self, result: Grounded, out: Path, files: list[str], notes: list[str]) -> Reply:
        from groundiff.method.generate import file_stem

        s = self.scale
        image = upscale(result.image, s)
        split = self.grounder.split
        colours = {name: class_colour(k) for k, name in enumerate(result.classes)}
        ours = (image, [(upscale(m, s).astype(np.float32), n) for n, m in zip(result.classes, result.masks)])
        daam = (image, [(upscale(m, s).astype(np.float32), n) for n, m in zip(result.classes, result.daam_masks)])
        gallery = []
        lines = ["| class | in grounding training | ours: mask pixels | DAAM: mask pixels |", "|---|---|---|---|"]
        for name, mask, dmask in zip(result.classes, result.masks, result.daam_masks):
            stem = file_stem(name)
            gallery += [(str(out / f"mask_{stem}.png"), f"{name}: ours (mask)"),
                        (str(out / f"daam_heat_{stem}.png"), f"{name}: DAAM heat map"),
                        (str(out / f"daam_mask_{stem}.png"), f"{name}: DAAM mask")]
            tag = "seen" if name in split.seen else ("unseen" if name in split.unseen else "not in the vocabulary")
            lines.append(f"| {name} | {tag} | {int(mask.sum())} | {int(dmask.sum())} |")
        d = self.grounder.defaults
        notes.append(f"Pixels of the {result.image.shape[0]}x{result.image.shape[1]} image; ours: "
                     f"sigmoid > threshold, DAAM: normalised heat map > {d.daam_threshold}.")
        return Reply(image=image, ours=ours, daam=daam, gallery=gallery, files=files,
                     notes="\n".join(lines) + "\n\n" + "\n\n".join(notes), colours=colours)


def _whole(value: Any, name: str, low: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or number < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(number)


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can fix: they become one line in the page, never a traceback."""
    return (ValueError, ParamsError, WorldError, *file_errors())


def build_app(session: DemoSession, queue_size: int = 8):
    """The Gradio Blocks app over `session` (not launched)."""
    import gradio as gr

    grounder = session.grounder
    example_prompt, example_classes = session.example()
    d = grounder.defaults

    def generate(prompt, picked, typed, seed, steps, guidance, threshold, progress=gr.Progress()):
        progress(0, desc="starting")

        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        try:
            reply = session.request(prompt, picked, typed, seed, steps, guidance, threshold, on_step=on_step)
        except user_errors() as err:
            raise gr.Error(error_message(err), title="Cannot generate this", print_exception=False) from None
        return (reply.image,
                gr.AnnotatedImage(value=reply.ours, color_map=reply.colours),
                gr.AnnotatedImage(value=reply.daam, color_map=reply.colours),
                reply.gallery, reply.files, reply.notes)

    with gr.Blocks(title="groundiff: Grounded Diffusion demo", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown("## Grounded Diffusion (Li et al., ICCV 2023): a prompt in, an image and a mask per class out\n"
                    "The grounding module reads the diffusion model's UNet features and each class name's text "
                    "embedding; it was trained on the *seen* classes only. DAAM (cross-attention heat maps, "
                    "no training) is the paper's baseline, from the same generation.")
        banner = gr.Markdown(session.status(), elem_id="status")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(value=example_prompt, label="Prompt", elem_id="prompt", lines=1,
                                    max_lines=3)
                # custom values pass through to our own check: an unknown class gets the world's list
                picked = gr.Dropdown(choices=session.choices(), value=example_classes, multiselect=True,
                                     allow_custom_value=True, elem_id="classes",
                                     label="Classes to ground (each must be named in the prompt)")
                typed = gr.Textbox(value="", label="More classes, comma-separated (open vocabulary)",
                                   visible=session.open_vocabulary, elem_id="typed")
            with gr.Column(scale=1):
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                steps = gr.Slider(1, 100, value=d.steps, step=1, label="DDIM steps", elem_id="steps")
                guidance = gr.Slider(1.5, 15.0, value=d.guidance, step=0.5, label="Guidance", elem_id="guidance")
                threshold = gr.Slider(0.05, 0.95, value=d.threshold, step=0.05, label="Mask threshold (ours)",
                                      elem_id="threshold")
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            image = gr.Image(label="Generated image", format="png", interactive=False, height=PICTURE,
                             elem_id="image")
            ours = gr.AnnotatedImage(label="Ours: grounding module", format="png", height=PICTURE, elem_id="ours")
            daam = gr.AnnotatedImage(label=f"DAAM (heat map > {d.daam_threshold})", format="png", height=PICTURE,
                                     elem_id="daam")
        gallery = gr.Gallery(label="Per class: our mask, DAAM's heat map, DAAM's mask", format="png", columns=6,
                             height=PICTURE * 2 // 3, elem_id="maps")
        with gr.Row():
            files = gr.File(label="PNGs (as groundiff generate writes them, plus DAAM's)", file_count="multiple",
                            interactive=False, elem_id="files")
            notes = gr.Markdown(elem_id="notes")
        run.click(generate, inputs=[prompt, picked, typed, seed, steps, guidance, threshold],
                  outputs=[image, ours, daam, gallery, files, notes], api_name="generate")
        app.load(session.status, outputs=banner, api_visibility="private", queue=False)
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app


def serve(params: Params, world: World, host: str = "127.0.0.1", port: int = 7860,
          grounding: str | Path = paths.GROUNDING, precision: str | None = None, scale: int = 8,
          queue_size: int = 8) -> None:
    """Load the models, then serve the app until interrupted (Ctrl-C)."""
    if queue_size < 1:
        raise ValueError(f"--queue must be at least 1 (requests that may wait), got {queue_size}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # SIGTERM (a service manager, a test) ends like Ctrl-C: through the finally below, files removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    session = DemoSession(Grounder(params, world, grounding, precision=precision, require_module=False), scale)
    try:
        app = build_app(session, queue_size)
        print(f"groundiff demo: the {world.name} world; models loaded; serving on http://{host}:{port}", flush=True)
        app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, inbrowser=False,
                   allowed_paths=[str(session.out_root)], footer_links=["api"], quiet=True)
    finally:
        shutil.rmtree(session.out_root, ignore_errors=True)
