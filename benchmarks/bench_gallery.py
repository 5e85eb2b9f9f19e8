"""Time to the first card on the page (and of one search keystroke), for 1,000 and 10,000 LoRA files: loraprompt's gallery tab
(virtualised grid fed by a JSON route) against a peer that renders every card server-side into one
HTML string filled on page load, as Automatic1111's extra-networks page does. Both run under the
installed gradio, from the same library scan, in the same process; Chromium measures both.

The first card's time is taken in the page: from the navigation's start (performance.timeOrigin) to
the animation frame after the first card element entered the DOM (a MutationObserver installed
before any script runs), the frame that paints it. Playwright's own wait for an element polls the
page at growing intervals (20, 50, 100, 100, then every 500 ms), so a time read from it is late by
up to half a second; it is only used to know when to read the page's time.

Run: flock /tmp/loraprompt-heavy.lock .venv/bin/python benchmarks/bench_gallery.py [--sizes 1000 10000]
(`--folders DIR` keeps the generated LoRA folders in DIR and reuses them; the library cache is new
in every run, so the scan stays cold apart from the OS's file cache.)
"""

from __future__ import annotations

import argparse
import html
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEYS = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (2, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 2)}


def make_folder(root: Path, n: int) -> Path:
    """`n` small real LoRA files in 20 subfolders; every 10th has a preview image."""
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float16) for k, s in KEYS.items()}
    preview = Image.new("RGB", (64, 64), (90, 140, 200))
    for i in range(n):
        folder = root / f"group_{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / f"lora_{i:05d}.safetensors"),
                  metadata={"ss_output_name": f"lora_{i:05d}", "ss_base_model_version": "sd_v1"})
        if i % 10 == 0:
            preview.save(folder / f"lora_{i:05d}.png")
    return root


def peer_cards_html(library: Any) -> str:
    """Every card as one HTML string, the way A1111's `create_html` builds its page."""
    parts = []
    for e in library.entries:
        thumb = f"./peer/thumb?filename={html.escape(e.previews[0], quote=True)}" if e.previews else ""
        image = f'<img src="{thumb}" class="preview" loading="lazy">' if thumb else ""
        parts.append(
            f'<div class="card" style="" onclick="return false" data-name="{html.escape(e.name, quote=True)}"'
            f' data-sort-path="{html.escape(e.relpath, quote=True)}" data-sort-name="{html.escape(e.name.lower(), quote=True)}"'
            f' data-sort-date_created="{e.mtime}" data-sort-date_modified="{e.mtime}">{image}'
            f'<div class="button-row"><div class="metadata-button card-button" title="Show internal metadata"></div>'
            f'<div class="edit-button card-button" title="Edit metadata"></div></div>'
            f'<div class="actions"><div class="additional"><span style="display:none" class="search_terms">'
            f"{html.escape(e.relpath)}</span></div><span class=\"name\">{html.escape(e.name)}</span>"
            f'<span class="description"></span></div></div>'
        )
    return '<div class="extra-network-cards">' + "".join(parts) + "</div>"


def serve(app: Any, port: int) -> Any:
    """Run `app` with uvicorn on 127.0.0.1:`port` in a daemon thread; returns the server."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def build_servers(library: Any, thumb_dir: Path) -> tuple[str, str, list[Any]]:
    """The gallery demo (ours) and the peer page, each on its own port."""
    import gradio as gr
    from fastapi import FastAPI

    from loraprompt.ui.gallery_demo import build_demo, free_port

    demo, tab = build_demo(library, "sd1", thumb_dir)
    ours = FastAPI()
    tab.mount(ours)
    with gr.Blocks() as peer_demo:
        gr.Textbox(label="Prompt")
        cards = gr.HTML("Loading...")
        peer_demo.load(lambda: peer_cards_html(library), None, cards)
    servers = []
    urls = []
    for app, blocks in ((ours, demo), (FastAPI(), peer_demo)):
        if int(gr.__version__.split(".")[0]) < 4:
            blocks.queue()
        port = free_port()
        servers.append(serve(gr.mount_gradio_app(app, blocks, path="/"), port))
        urls.append(f"http://127.0.0.1:{port}/")
    return urls[0], urls[1], servers


# One search keystroke, timed in the page up to the next forced layout. Ours: the gallery's input
# handler. Peer: A1111's `applyExtraNetworkFilter` way, one style.display write per card.
OURS_SEARCH = """(q) => { const s = document.querySelector('.lp-search'); const t = performance.now();
  s.value = q; s.dispatchEvent(new Event('input', {bubbles: true})); document.body.offsetHeight;
  return [performance.now() - t, document.querySelectorAll('.lp-card').length]; }"""
PEER_SEARCH = """(q) => { const t = performance.now(); let shown = 0;
  for (const card of document.querySelectorAll('.card')) {
    const text = (card.querySelector('.search_terms').textContent + ' ' + card.querySelector('.name').textContent).toLowerCase();
    const visible = text.includes(q); card.style.display = visible ? '' : 'none'; shown += visible; }
  document.body.offsetHeight; return [performance.now() - t, shown]; }"""


# Ours draws a big library's first page, then loads the rest: a keystroke is timed once every
# card is in the page (the status line no longer says it is loading the rest).
OURS_COMPLETE = "() => !document.querySelector('.lp-status').textContent.includes('loading the rest')"


# Installed before the page's own scripts: the time of the animation frame after the first element
# matching the selector entered the DOM, in ms since the navigation started.
FIRST_SEEN = """(selector) => { const seen = () => { if (!document.querySelector(selector)) return false;
  requestAnimationFrame(() => { window.__benchFirstFrame = performance.now(); }); return true; };
  new MutationObserver((_, observer) => { if (seen()) observer.disconnect(); })
    .observe(document, {childList: true, subtree: true}); }"""


def first_card_seconds(browser: Any, url: str, selector: str, search: str, *, complete: str | None = None,
                       query: str = "lora_00") -> tuple[float, int, float, float]:
    """Seconds from the navigation's start to the frame that paints the first `selector` element
    (`FIRST_SEEN`), how many are in the DOM then, the milliseconds one search keystroke (`query`)
    takes to show its results once every card is in the page (`complete`, a JS condition), and
    the seconds from the navigation's start until then."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(f"({FIRST_SEEN})({selector!r})")
    page.goto(url, wait_until="commit")
    page.locator(selector).first.wait_for(timeout=600_000)
    page.wait_for_function("() => window.__benchFirstFrame !== undefined", timeout=60_000)
    elapsed = float(page.evaluate("window.__benchFirstFrame")) / 1000
    count = int(page.evaluate(f"document.querySelectorAll({selector!r}).length"))
    if complete:
        page.wait_for_function(complete, timeout=600_000, polling=50)
    every = float(page.evaluate("performance.now()")) / 1000
    search_ms, shown = page.evaluate(search, query)
    assert shown > 0, "the search found nothing"
    page.close()
    return elapsed, count, float(search_ms), every


def main() -> None:
    """Measure both pages for each size and print the times and the ratio."""
    parser = argparse.ArgumentParser(description="gallery time to first card")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folders", type=Path, help="keep the generated LoRA folders here and reuse them")
    args = parser.parse_args()
    import gradio as gr
    from playwright.sync_api import sync_playwright

    from loraprompt.library import Library

    print(f"gradio {gr.__version__}; median of {args.repeats} page loads each")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for n in args.sizes:
            folder = (args.folders or Path(tmp)) / f"Lora{n}"
            done = folder.with_name(folder.name + ".complete")
            if not done.exists():
                make_folder(folder, n)
                done.touch()
            t0 = time.perf_counter()
            library = Library(folder, Path(tmp) / f"cache{n}")
            scan = time.perf_counter() - t0
            ours_url, peer_url, servers = build_servers(library, Path(tmp) / f"thumbs{n}")
            first_card_seconds(browser, ours_url, ".lp-card", OURS_SEARCH, complete=OURS_COMPLETE)  # warm both servers once
            first_card_seconds(browser, peer_url, ".card", PEER_SEARCH)
            ours = [first_card_seconds(browser, ours_url, ".lp-card", OURS_SEARCH, complete=OURS_COMPLETE) for _ in range(args.repeats)]
            peer = [first_card_seconds(browser, peer_url, ".card", PEER_SEARCH) for _ in range(args.repeats)]
            o, q = statistics.median(r[0] for r in ours), statistics.median(r[0] for r in peer)
            os_, ps = statistics.median(r[2] for r in ours), statistics.median(r[2] for r in peer)
            print(f"{n:>6} files (cold scan {scan:.2f} s)\n"
                  f"  first card: loraprompt {o * 1000:6.0f} ms ({ours[0][1]} cards in the DOM) | "
                  f"server-rendered peer {q * 1000:6.0f} ms ({peer[0][1]} cards in the DOM) | peer/loraprompt = {q / o:.2f}x\n"
                  f"  every card in the page: loraprompt {statistics.median(r[3] for r in ours):6.2f} s | "
                  f"peer {statistics.median(r[3] for r in peer):6.2f} s\n"
                  f"  one search keystroke: loraprompt {os_:6.1f} ms | peer {ps:6.1f} ms | peer/loraprompt = {ps / os_:.1f}x",
                  flush=True)
            for server in servers:
                server.should_exit = True
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
