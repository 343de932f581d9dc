"""How long one `groundiff demo` request takes on this CPU, and how much memory the app holds.

    python -m benchmarks.demo_request --root /path/to/project   # writes reports/benchmarks/demo_request.json
                                                              # and docs/figures/demo.png (the README's)

`--root` is a project folder with params.yaml, dvc.yaml, the world's pipeline and a trained
`models/grounding` (default: this checkout). For each `--precision` it starts the real command
(`groundiff demo`) in its own process, waits until it answers, sends `--requests` identical
requests through `gradio_client` (the first is reported apart: it warms caches) and reads the
server's resident memory from /proc: after loading, after the requests, and its peak. Model loading
is timed apart (process start to first answer) and is not part of a request's time. Then headless
Chromium opens the page, clicks Generate and saves the screenshot (`browser_generate`, the same
function the browser test drives).

The helpers (`running_demo`, `browser_generate`, `rendered`) are shared with tests/test_demo.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

OUT = Path("reports/benchmarks/demo_request.json")
SCREENSHOT = Path("docs/figures/demo.png")
#: Where the numbers are shown: the block between `<!-- NAME -->` and `<!-- /NAME -->` is rewritten.
SHOWN = {Path("README.md"): "demo-measured", Path("docs/demo.md"): "demo-measured-table"}
PROMPT = "a photograph of a star and a ring"  # star: seen in split 1; ring: unseen
CLASSES = ["star", "ring"]


@dataclass
class Server:
    url: str
    pid: int
    log: Path
    load_seconds: float  # process start -> the page answers (imports + model loading)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_demo(root: Path, *args: str, timeout_s: float = 180.0, env: dict | None = None) -> Iterator[Server]:
    """`groundiff demo --port <free> *args` running in `root`, stopped (and its files removed) on exit."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "groundiff"), "demo", "--port", str(port), *args]
    log = Path(tempfile.mkstemp(prefix="groundiff-demo-", suffix=".log")[1])
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"groundiff demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"groundiff demo did not answer within {timeout_s:.0f} s:\n"
                                   f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        yield Server(url=url, pid=proc.pid, log=log, load_seconds=time.perf_counter() - start)
    finally:
        proc.terminate()  # Gradio closes on SIGTERM; the command removes its request folders
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM) of process `pid`, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[name].split()[0]) / 1024, 1)
            for key, name in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


def rendered(png: bytes) -> dict[str, float]:
    """Is a screenshot of an element a picture rather than a blank box? Its pixel spread and colours."""
    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return {"std": float(pixels.std()), "colours": int(len(np.unique(pixels, axis=0))),
            "pixels": int(len(pixels))}


def browser_generate(url: str, screenshot: Path, prompt: str = PROMPT, classes: list[str] = CLASSES,
                     timeout_s: float = 300.0) -> dict:
    """Headless Chromium: open the app, type `prompt` and `classes` (as a user types them into the
    multi-select), click Generate, wait for the pictures, save a screenshot of the page; returns
    `rendered` of the generated image and of both overlays."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.locator("#prompt textarea").fill(prompt)
            picker = page.locator("#classes")
            if picker.get_by_title("Clear").count():
                picker.get_by_title("Clear").click()  # the example's classes
            for name in classes:
                picker.locator("input").fill(name)
                picker.locator("input").press("Enter")
            page.keyboard.press("Escape")  # close the options list
            page.locator("#generate").click()
            shown = {}
            for name in ("image", "ours", "daam"):
                picture = page.locator(f"#{name} img").first
                picture.wait_for(state="visible", timeout=timeout_s * 1000)
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle(),
                                       timeout=timeout_s * 1000)
                shown[name] = rendered(picture.screenshot())
            page.locator("#maps img").first.wait_for(state="visible", timeout=timeout_s * 1000)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            return shown
        finally:
            browser.close()


def time_requests(url: str, n: int, steps: int | None) -> list[float]:
    """Seconds per request (client side: queue, denoising, grounding, DAAM, files, transfer); the
    settings not given are the page's defaults."""
    from gradio_client import Client

    with tempfile.TemporaryDirectory() as downloads:
        client = Client(url, download_files=downloads, analytics_enabled=False, verbose=False)
        settings = {"steps": steps} if steps else {}
        times = []
        for _ in range(n):
            start = time.perf_counter()
            client.predict(prompt=PROMPT, picked=CLASSES, typed="", seed=0, **settings, api_name="/generate")
            times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="project folder with a trained models/grounding")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="one server per precision")
    parser.add_argument("--requests", type=int, default=5, help="requests per precision (the first reported apart)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the app's, synthesize's)")
    parser.add_argument("--screenshot", default=str(SCREENSHOT), help="'' to skip the browser")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--weights", default="", help="how --root's models/grounding was trained (shown in the docs)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the README / docs/demo.md numbers")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    runs = {}
    for i, precision in enumerate(args.precision):
        with running_demo(root, "--precision", precision) as server:
            loaded = memory_mb(server.pid)
            times = time_requests(server.url, args.requests, args.steps)
            after = memory_mb(server.pid)
            if args.screenshot and i == 0:
                browser = browser_generate(server.url, Path(args.screenshot))
                after_browser = memory_mb(server.pid)
            runs[precision] = {
                "load_seconds": round(server.load_seconds, 2),
                "first_request_seconds": round(times[0], 3),
                "request_seconds": [round(t, 3) for t in times[1:]],
                "median_request_seconds": round(statistics.median(times[1:] or times), 3),
                "rss_after_load_mb": loaded["rss_mb"],
                "rss_after_requests_mb": after["rss_mb"],
                "peak_rss_mb": (after_browser if args.screenshot and i == 0 else after)["peak_mb"],
            }
        print(f"{precision}: {runs[precision]}", flush=True)
    metrics = root / "metrics/train_grounding.json"  # the module's training record, when the root has one
    meta = json.loads(metrics.read_text()) if metrics.is_file() else {}
    result = {
        "what": f"one groundiff demo request: '{PROMPT}', classes {CLASSES}, seed 0, the page's default "
                "guidance and threshold; generation, grounding, DAAM, the PNGs, timed at the client",
        "steps": args.steps or "synthesize.sampling.steps",
        "runs": runs,
        "omp_num_threads": threads or "torch default",
        "torch_threads": _torch_threads(threads),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "grounding_module": {"trained": args.weights,
                             **{k: meta[k] for k in ("steps", "final_loss", "loss_last_50") if k in meta}},
        "screenshot": args.screenshot,
    }
    if args.screenshot:
        result["browser_rendered"] = browser
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("# One demo request\n\n" + table(result, out, link=out.name) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.no_docs:
        for path, mark in SHOWN.items():
            text = summary(result, out) if mark == "demo-measured" else table(result, out)
            replace_block(path, mark, text)
            print(f"updated {path}")
    return result


def summary(result: dict, source: Path = OUT) -> str:
    """The README's line: one request's time and the app's memory, per precision."""
    runs = result["runs"]
    times = "; ".join(f"{p}: {r['median_request_seconds']:.2f} s (first {r['first_request_seconds']:.2f} s)"
                      for p, r in runs.items())
    memory = max(r["peak_rss_mb"] for r in runs.values())
    resident = max(r["rss_after_requests_mb"] for r in runs.values())
    return (f"Measured on this {result['cpu_count']}-core CPU with {result['torch_threads']} torch thread(s), "
            f"shapes world, {_steps(result)} DDIM steps, model load excluded: one request takes {times}; "
            f"the app holds {resident:.0f} MB resident ({memory:.0f} MB at its peak) "
            f"([{source.name}]({source}), [docs/demo.md](docs/demo.md)).")


def table(result: dict, source: Path = OUT, link: str | None = None) -> str:
    """docs/demo.md's table of every run, and what was measured where (`link`: to the JSON, from the page
    the table goes on; default from docs/)."""
    lines = ["| precision | model load (s) | first request (s) | later requests, median (s) | RSS after load (MB) "
             "| RSS after requests (MB) | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for p, r in result["runs"].items():
        lines.append(f"| {p} | {r['load_seconds']:.1f} | {r['first_request_seconds']:.2f} | "
                     f"{r['median_request_seconds']:.2f} (of {len(r['request_seconds'])}) | "
                     f"{r['rss_after_load_mb']:.0f} | {r['rss_after_requests_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    trained = result["grounding_module"].get("trained") or "not recorded"
    return "\n".join(lines) + (
        f"\n\nWritten by `python -m benchmarks.demo_request` ([{source.name}]({link or f'../{source}'})): {result['what']}; "
        f"{_steps(result)} DDIM steps. CPU: {result['cpu']} ({result['cpu_count']} cores), "
        f"{result['torch_threads']} torch thread(s), load average {result['load_average_at_end'][0]} at the end "
        f"(the machine was shared). The grounding module: {trained}.")


def _steps(result: dict) -> str:
    return str(result["steps"]) if isinstance(result["steps"], int) else "the default (synthesize's)"


def replace_block(path: Path, mark: str, text: str) -> None:
    """Rewrite the text between `<!-- mark -->` and `<!-- /mark -->` in `path`."""
    pattern = re.compile(rf"(<!-- {mark} -->\n).*?(<!-- /{mark} -->)", re.S)
    old = path.read_text()
    if not pattern.search(old):
        raise ValueError(f"{path}: no <!-- {mark} --> ... <!-- /{mark} --> block to write the numbers into")
    path.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), old))


def _torch_threads(omp: str) -> int:
    import torch

    return int(omp) if omp.isdigit() else torch.get_num_threads()


if __name__ == "__main__":
    main()
