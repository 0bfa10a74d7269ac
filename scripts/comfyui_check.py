"""Check the node pack in a real ComfyUI (CPU) and compare it with the headless runner.

Procedure (what the acceptance note quotes):
1. the pack is linked into ``<ComfyUI>/custom_nodes/comfy-diffbfr``; the photos are copied into
   ComfyUI's input folder; with ``--tiny-models`` small random models are written under the
   starter-weight names into ``<ComfyUI>/models/diffbfr`` (else the pack's ``weights/`` serve), and a
   tiny random guided-diffusion ``.pth`` under the public prior's name ``diffbfr_public_prior.json`` loads;
2. ``python main.py --cpu --listen 127.0.0.1 --port PORT`` starts in the background (its own venv);
   the log must not contain ``IMPORT FAILED`` and ``GET /object_info`` must list the six node ids;
3. every ``workflows/*.json`` is converted to the API format with the server's own ``/object_info``,
   its LoadImage nodes pointed at each photo, and queued with ``POST /prompt``; the script waits for
   ``/history`` and collects the written images;
4. the headless runner (``python -m comfy_diffbfr run``) runs the same workflow on the same photo,
   and the saved pixels are compared exactly;
5. the template browser's routes: ``GET /workflow_templates`` lists every workflow under the pack's
   folder name, and ``GET /api/workflow_templates/<pack>/<name>.json`` (the workflow, equal to the
   file) and ``.../<name>.jpg`` (its thumbnail, the name the 1.27 frontend asks for) answer 200;
6. with ``--screenshots DIR``: ``scripts/comfyui_screenshots.py`` (run by ComfyUI's Python) opens
   every workflow in the real frontend in headless Chromium, saves a screenshot and lists nodes
   whose drawn boxes overlap; shoots the template browser, opens the first workflow from its card, and
   types each search term into the node search box (a DiffBFR node must be listed).

Both processes run single-threaded with ``COMFY_DIFFBFR_OFFLINE=1`` (no detector download) so the
CPU arithmetic is the same. Example:

    .venv/bin/python scripts/comfyui_check.py --comfyui /work/comfyui \
        --python /work/comfyui-venv/bin/python --tiny-models --photos assets/diffbfr_example.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SEARCH_TERMS = ("face restoration", "restore face", "blind face", "identity", "texture")  # typed into node search
PACK = "comfy-diffbfr"  # the folder name under custom_nodes: ComfyUI's name of the pack in template routes
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COMFY_DIFFBFR_OFFLINE": "1", "COMFY_DIFFBFR_PROGRESS": "0"}


def http(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return {"http_error": exc.code, "body": json.loads(exc.read() or b"{}")}


def fetch(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (errors as their status)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", b""


def template_check(base: str, workflows: list[Path]) -> dict:
    """What the template browser gets: the list, every workflow and every thumbnail."""
    listed = http(f"{base}/workflow_templates").get(PACK, [])
    report = {"listed": sorted(listed), "workflows": {}, "thumbnails": {}}
    for path in workflows:
        status, _, body = fetch(f"{base}/api/workflow_templates/{PACK}/{path.stem}.json")
        report["workflows"][path.stem] = status if status != 200 or json.loads(body) == json.loads(path.read_text()) else "differs"
        status, kind, _ = fetch(f"{base}/api/workflow_templates/{PACK}/{path.stem}.jpg")
        report["thumbnails"][path.stem] = status if kind.startswith("image/") or status != 200 else kind
    report["ok"] = (report["listed"] == sorted(p.stem for p in workflows)
                    and all(v == 200 for part in ("workflows", "thumbnails") for v in report[part].values()))
    return report


def write_tiny_models(folder: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from pack_helpers import stage_models, stand_in_public_prior

    stage_models(folder)
    stand_in_public_prior(folder)


def start_server(comfyui: Path, python: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, **ENV}
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
    proc = subprocess.Popen(cmd, cwd=comfyui, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited early; see {log}")
        try:
            http(f"http://127.0.0.1:{port}/system_stats")
            return proc
        except OSError:
            time.sleep(1)
    raise SystemExit("ComfyUI did not start in 10 minutes")


def queue(base: str, prompt: dict) -> dict:
    client = uuid.uuid4().hex
    answer = http(f"{base}/prompt", {"prompt": prompt, "client_id": client})
    if "prompt_id" not in answer:
        return {"error": answer}
    pid = answer["prompt_id"]
    for _ in range(3600):
        history = http(f"{base}/history/{pid}")
        if pid in history and history[pid].get("status", {}).get("completed") is not None:
            status = history[pid]["status"]
            if status.get("status_str") == "success":
                return {"outputs": history[pid]["outputs"]}
            errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
            return {"error": errors or status}
        time.sleep(0.5)
    return {"error": "timeout"}


def cancel_check(base: str, schemas: dict, photo: Path) -> dict:
    """Cancel a long TEM run: how long after POST /interrupt it stopped, and whether the next run works."""
    from comfy_diffbfr.workflow.ui_format import to_api

    prompt = to_api(json.loads((REPO / "workflows" / "diffbfr_tem_polish.json").read_text()), schemas)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = photo.name
        if node["class_type"] == "DiffBFRTEM":
            node["inputs"].update(steps=1000, strength=0.99, seed=12345)
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "check/cancel"
    pid = http(f"{base}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    time.sleep(8)
    pressed = time.time()
    http(f"{base}/interrupt", {})
    while True:
        history = http(f"{base}/history/{pid}")
        if pid in history and history[pid].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.05)
    stopped = time.time()
    events = [m[0] for m in history[pid]["status"]["messages"]]
    for node in prompt.values():
        if node["class_type"] == "DiffBFRTEM":
            node["inputs"].update(steps=2, seed=54321)
    again = queue(base, prompt)
    return {"events": events, "seconds_from_cancel_to_stop": round(stopped - pressed, 2),
            "next_run_ok": "outputs" in again}


def pixels(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, default=Path("/work/comfyui"))
    ap.add_argument("--python", default="/work/comfyui-venv/bin/python", help="the Python of ComfyUI's venv")
    ap.add_argument("--port", type=int, default=8188)
    ap.add_argument("--tiny-models", action="store_true", help="write small random models under the starter names")
    ap.add_argument("--photos", type=Path, nargs="+", default=[REPO / "assets" / "diffbfr_example.png"])
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for screenshots of the workflows in the real frontend")
    ap.add_argument("--no-runs", action="store_true", help="skip queueing the workflows (templates and screenshots only)")
    ap.add_argument("--workflows", type=Path, nargs="*", default=sorted((REPO / "workflows").glob("*.json")))
    ap.add_argument("--set", action="append", default=[], help="NODE.INPUT=VALUE for every workflow (both sides)")
    ap.add_argument("--steps", type=int, default=None, help="steps of every stage node (both sides), to keep CPU runs short")
    ap.add_argument("--report", type=Path, default=Path("comfyui_check.json"))
    ap.add_argument("--cancel-check", action="store_true",
                    help="also queue a 1000-step TEM, press Cancel (POST /interrupt) and time the stop")
    args = ap.parse_args()

    from comfy_diffbfr.workflow.runner import set_input
    from comfy_diffbfr.workflow.ui_format import to_api

    from comfy_diffbfr.workflow.runner import pack_nodes

    node_ids = sorted(pack_nodes())
    comfyui = args.comfyui.resolve()
    link = comfyui / "custom_nodes" / PACK
    if not link.exists():
        link.symlink_to(REPO)
    models = comfyui / "models"
    if args.tiny_models:
        write_tiny_models(models / "diffbfr")
    for photo in args.photos:
        shutil.copy(photo, comfyui / "input" / photo.name)
    log = Path(tempfile.mkdtemp()) / "comfyui.log"
    proc = start_server(comfyui, args.python, args.port, log)
    base = f"http://127.0.0.1:{args.port}"
    report: dict = {"log": str(log), "runs": []}
    try:
        text = log.read_text()
        report["import_failed"] = "IMPORT FAILED" in text
        report["pack_import_line"] = [ln.strip() for ln in text.splitlines() if "comfy-diffbfr" in ln]
        info = http(f"{base}/object_info")
        report["node_ids_present"] = {n: n in info for n in node_ids}
        schemas = {k: v["input"] for k, v in info.items()}
        report["templates"] = template_check(base, args.workflows)
        print(json.dumps({"templates": report["templates"]}))
        if args.screenshots:
            shots = subprocess.run([args.python, str(REPO / "scripts" / "comfyui_screenshots.py"), "--url", base + "/",
                                    "--out", str(args.screenshots), "--templates", "--search", *SEARCH_TERMS, "--",
                                    *map(str, args.workflows)],
                                   capture_output=True, text=True)
            report["screenshots"] = [json.loads(line) for line in shots.stdout.splitlines() if line.startswith("{")]
            for shot in report["screenshots"]:
                print(json.dumps({k: v for k, v in shot.items() if k != "boxes"}))
            if shots.returncode != 0:
                report["screenshots_error"] = shots.stderr[-2000:]
        for wf_path in [] if args.no_runs else args.workflows:
            workflow = json.loads(wf_path.read_text())
            for photo in args.photos:
                run = {"workflow": wf_path.name, "photo": photo.name}
                prompt = to_api(workflow, schemas)
                for node in prompt.values():
                    if node["class_type"] == "LoadImage":
                        node["inputs"]["image"] = photo.name
                    if node["class_type"] == "SaveImage":
                        node["inputs"]["filename_prefix"] = f"check/{wf_path.stem}_{photo.stem}"
                assignments = list(args.set)
                if args.steps:
                    assignments += [f"{k}.steps={args.steps}" for k, v in prompt.items()
                                    if v["class_type"] in ("DiffBFRIRM64", "DiffBFRIRM256", "DiffBFRTEM")]
                for assignment in assignments:
                    set_input(prompt, assignment)
                started = time.time()
                result = queue(base, prompt)
                run["comfyui_seconds"] = round(time.time() - started, 1)
                if "error" in result:
                    run["error"] = result["error"]
                    report["runs"].append(run)
                    print(json.dumps(run)[:2000])
                    continue
                saved = [comfyui / "output" / img["subfolder"] / img["filename"]
                         for out in result["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
                run["comfyui_files"] = [str(p) for p in saved]
                headless_dir = Path(tempfile.mkdtemp())
                cmd = [sys.executable, "-m", "comfy_diffbfr", "run", str(wf_path), "-o", str(headless_dir), "--input", str(photo)]
                for assignment in assignments:
                    cmd += ["--set", assignment]
                env = {**os.environ, **ENV, "COMFY_DIFFBFR_MODELS": str(models), "PYTHONPATH": str(REPO)}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
                headless = [Path(p) for p in done.stdout.split()] if done.returncode == 0 else []
                if done.returncode != 0:
                    run["headless_error"] = done.stderr[-2000:]
                run["headless_files"] = [str(p) for p in headless]
                run["bit_identical"] = len(saved) == len(headless) > 0 and all(
                    np.array_equal(pixels(a), pixels(b)) for a, b in zip(saved, headless))
                if not run["bit_identical"] and len(saved) == len(headless) > 0:
                    run["max_abs_diff"] = max(int(np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max())
                                              for a, b in zip(saved, headless))
                report["runs"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "headless_files"}))
        if args.cancel_check:
            report["cancel"] = cancel_check(base, schemas, args.photos[0])
            print(json.dumps(report["cancel"]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        args.report.write_text(json.dumps(report, indent=1))
    ok = (not report["import_failed"] and all(report["node_ids_present"].values()) and report["templates"]["ok"]
          and all(r.get("bit_identical") for r in report["runs"])
          and not report.get("screenshots_error") and not any(s.get("overlaps") for s in report.get("screenshots", []))
          and all(s["nodes_loaded"] == s["nodes_expected"] for s in report.get("screenshots", []) if "opened" in s)
          and all(any("DiffBFR" in r for r in s["results"]) for s in report.get("screenshots", []) if "search" in s))
    print(json.dumps({k: report[k] for k in ("import_failed", "node_ids_present", "pack_import_line")}, indent=1))
    print("ALL OK" if ok else "PROBLEMS: see", args.report)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
