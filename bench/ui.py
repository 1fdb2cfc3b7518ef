"""Review-app latency in a real browser: click a study → first rendered slice, and slider
step → new image (20 steps), median and p90, against `medassist serve` on 127.0.0.1.

    .venv/bin/python bench/ui.py [--checkpoint models/demo] [--steps 20] [--out FILE.json]

Seeds two generated studies drafted by the checkpoint into a temporary SQLite database
(`ui.seed.seed_demo`), starts the server, drives Debian's Chromium headless with Playwright.
Baseline, side by side: the server-side part of one step alone (`Handlers.render`: session
and role check, crop, enlarge, then the PNG encoding Gradio does) on the same study, so the
ratio shows what the browser round trip (HTTP, cache file, file route, image load) adds.
Target: median step <= 300 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# this file is named ui.py: keep bench/ off the path so that `ui` is the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _q(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "demo"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="write the figures as JSON here too")
    a = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from medassist.storage import make_engine, session_factory
    from ui.config import UIConfig
    from ui.handlers import Handlers, make_services
    from ui.imaging import PRESETS
    from ui.seed import seed_demo

    tmp = Path(tempfile.mkdtemp(prefix="medassist-bench-ui-"))
    info = seed_demo(tmp, Path(a.checkpoint), n_cases=2)
    user, pw = "demo.clinician", info.users["demo.clinician"]
    port = _port()
    env = {**os.environ, "HOME": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "medassist", "serve", "--db", info.db_url,
                             "--port", str(port), "--export-dir", str(tmp / "exports")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit("server did not start; see " + str(tmp / "serve.log"))
            time.sleep(0.3)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/")
            page.locator("#login-user input, #login-user textarea").first.fill(user)
            page.locator("#login-password input, #login-password textarea").first.fill(pw)
            page.click("#login-btn")
            page.wait_for_selector("#worklist .virtual-row", timeout=60_000)
            cell = page.locator("#worklist .virtual-row").first.locator("[role=gridcell]").first
            t = time.perf_counter()
            cell.click()
            page.wait_for_function("() => { const i = document.querySelector('#ct-image img');"
                                   " return i && i.complete && i.naturalWidth > 0; }",
                                   timeout=60_000)
            first_ms = (time.perf_counter() - t) * 1000
            slider = page.locator("#slice input[type=range]")
            steps: list[float] = []
            for _ in range(a.steps):
                old = page.locator("#ct-image img").get_attribute("src")
                slider.focus()
                t = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.wait_for_function(
                    "old => { const i = document.querySelector('#ct-image img'); return i && "
                    "i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
                    arg=old, timeout=30_000)
                steps.append((time.perf_counter() - t) * 1000)
            b.close()
        # baseline: the server-side render of the same steps, no browser
        h = Handlers(make_services(session_factory(make_engine(info.db_url)), UIConfig(),
                                   tmp / "exports"))
        tok = h.login(user, pw).token
        rid = h.worklist(tok)[0].report_id
        v = h.open_study(tok, rid)
        server: list[float] = []
        for k in range(a.steps):
            t = time.perf_counter()
            img = h.render(tok, rid, (v.start_slice + k) % v.n_slices, *PRESETS["lung"], False)
            img.save(io.BytesIO(), format="png")  # as Gradio encodes it
            server.append((time.perf_counter() - t) * 1000)
    finally:
        proc.terminate()
        proc.wait(10)
    res = {"click_to_first_slice_ms": round(first_ms, 1),
           "step_median_ms": round(statistics.median(steps), 1),
           "step_p90_ms": round(_q(steps, 0.9), 1),
           "server_render_png_median_ms": round(statistics.median(server), 2),
           "browser_over_server_ratio": round(statistics.median(steps) /
                                              max(statistics.median(server), 1e-6), 1),
           "steps": a.steps, "target_step_ms": 300, "cpus": os.cpu_count()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0 if res["step_median_ms"] <= 300 else 1


if __name__ == "__main__":
    sys.exit(main())
