"""Open each workflow in a real ComfyUI frontend (headless Chromium) and report what it draws.

Run with the Python of ComfyUI's venv (it has aiohttp, which this script uses for the DevTools
protocol) while ComfyUI serves on 127.0.0.1:

    /work/comfyui-venv/bin/python scripts/comfyui_screenshots.py --url http://127.0.0.1:8188 \
        --out shots/ workflows/*.json

For every workflow: ``app.loadGraphData`` in the page (with the saved view, as a user opens it),
then a PNG screenshot, and the nodes' boxes as the frontend laid them out (``pos``, ``size`` plus the 30 px title bar above
``pos``); pairs of nodes whose boxes overlap are listed. ``--templates`` also opens the template
browser (Comfy.BrowseTemplates) on the pack's category, shoots it, then clicks the first workflow's
card and reports how many nodes that put on the canvas. Prints one JSON line per workflow. Loopback only:
Chromium is started with its debugging port on 127.0.0.1 and a throw-away profile.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TITLE_HEIGHT = 30  # LiteGraph's NODE_TITLE_HEIGHT: the title bar is drawn above node.pos
BOXES_JS = """JSON.stringify(app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title,
    pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]]})))"""


CLICK_JS = """(() => { const root = document.querySelector('.p-dialog') || document;
    const hits = [...root.querySelectorAll('*')].filter(e => e.children.length === 0 && e.textContent.trim() === %s);
    if (hits.length) hits[0].click(); return hits.length })()"""  # a text in the open dialog


SEARCH_RESULTS_JS = """[...document.querySelectorAll('.p-autocomplete-option, [role=option]')]
    .map(e => e.textContent.trim().replace(/\\s+/g, ' ')).slice(0, 12)"""


class Page:
    """The few DevTools-protocol calls this script needs, over one websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    async def escape(self) -> None:
        """Press Escape (closes the "Get started with a template" dialog of a first visit)."""
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27)

    async def shoot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))


def overlaps(boxes: list[dict]) -> list[list]:
    """Pairs of nodes whose drawn boxes (title bar included) intersect."""
    def rect(b):
        x, y = b["pos"]
        w, h = b["size"]
        return x, y - TITLE_HEIGHT, x + w, y + h

    pairs = []
    for a, b in itertools.combinations(boxes, 2):
        ax0, ay0, ax1, ay1 = rect(a)
        bx0, by0, bx1, by1 = rect(b)
        if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
            pairs.append([f"{a['id']}:{a['type']}", f"{b['id']}:{b['type']}"])
    return pairs


async def wait_for(page: Page, expression: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if await page.js(expression):
                return
        except RuntimeError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"the page never got ready ({expression})")


async def run(args: argparse.Namespace) -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
                             f"--remote-debugging-port={args.port}", f"--window-size={args.width},{args.height}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(120):
                try:
                    async with session.get(f"http://127.0.0.1:{args.port}/json") as resp:
                        targets = [t for t in await resp.json() if t.get("type") == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
            async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                                deviceScaleFactor=1, mobile=False)
                await page.call("Page.navigate", url=args.url)
                await wait_for(page, "!!(window.app && window.app.graph && window.app.canvas)", 120)
                await asyncio.sleep(3)  # node definitions, settings and extensions finish loading
                await page.escape()
                await asyncio.sleep(1)
                for path in args.workflows:
                    data = json.loads(path.read_text())
                    # as a user opens it: the saved view (extra.ds) is restored
                    await page.js(f"app.loadGraphData({json.dumps(data)}, true, true, {json.dumps(path.name)})")
                    await asyncio.sleep(2)
                    boxes = json.loads(await page.js(BOXES_JS))
                    shot = args.out / f"{path.stem}.png"
                    await page.shoot(shot)
                    saved = {n["id"]: n["size"] for n in data["nodes"]}
                    print(json.dumps({"workflow": path.name, "screenshot": str(shot), "overlaps": overlaps(boxes),
                                      "grown": {f"{b['id']}:{b['type']}": [saved.get(b["id"]), [round(v) for v in b["size"]]]
                                                for b in boxes if saved.get(b["id"]) and
                                                any(round(v) > s for v, s in zip(b["size"], saved[b["id"]]))},
                                      "boxes": boxes}))
                for term in args.search:
                    # the node search box, as after a double click on the canvas: type, read the list, shoot
                    await page.escape()
                    await page.js("(async () => { await app.extensionManager.command.execute('Workspace.SearchBox.Toggle'); return true })()")
                    await asyncio.sleep(1.5)
                    await page.call("Input.insertText", text=term)
                    await asyncio.sleep(2)
                    shown = await page.js(SEARCH_RESULTS_JS)
                    shot = args.out / f"search_{term.replace(' ', '_')}.png"
                    await page.shoot(shot)
                    print(json.dumps({"search": term, "screenshot": str(shot), "results": shown}))
                    await page.escape()
                    await asyncio.sleep(0.5)
                if args.templates:
                    await page.js("(async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); return true })()")
                    await asyncio.sleep(3)
                    await page.js(CLICK_JS % json.dumps(args.pack))  # the pack's own category
                    await asyncio.sleep(4)  # thumbnails load
                    await page.shoot(args.out / "template_browser.png")
                    # open the first workflow from its card, as a user would, and see what the canvas holds
                    await page.js("app.graph.clear(), true")
                    first = args.workflows[0].stem
                    clicked = await page.js(CLICK_JS % json.dumps(first))
                    await asyncio.sleep(4)
                    opened = json.loads(await page.js(BOXES_JS))
                    await page.shoot(args.out / "template_opened.png")
                    expected = len(json.loads(args.workflows[0].read_text())["nodes"])
                    print(json.dumps({"template_browser": str(args.out / "template_browser.png"), "opened": first,
                                      "card_clicked": bool(clicked), "nodes_loaded": len(opened),
                                      "nodes_expected": expected, "overlaps": overlaps(opened)}))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflows", type=Path, nargs="+")
    ap.add_argument("--url", default="http://127.0.0.1:8188/")
    ap.add_argument("--out", type=Path, default=Path("shots"))
    ap.add_argument("--port", type=int, default=9222, help="Chromium's debugging port (on 127.0.0.1)")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--templates", action="store_true", help="also shoot the template browser")
    ap.add_argument("--search", nargs="*", default=[], metavar="TERM", help="also type TERM into the node search box")
    ap.add_argument("--pack", default="comfy-diffbfr", help="the pack's folder name (its category in the template browser)")
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
