"""Template-browser thumbnails (``workflows/<name>.jpg``) from a real ComfyUI run's outputs.

ComfyUI's template browser (frontend 1.27) shows ``/api/workflow_templates/<pack>/<name>.jpg`` on
each workflow's card. Each thumbnail is a before/after split of the photo's largest face (a square
2.4 times its box): the left half from the input photo, the right half from the workflow's first
saved output as ComfyUI wrote it (scaled to the photo's size first: the outputs keep its framing).

    .venv/bin/python scripts/comfyui_check.py ... --photos assets/diffbfr_example.png --report check.json
    .venv/bin/python scripts/make_thumbnails.py check.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SIZE = 384


def face_square(photo: Path) -> tuple[int, int, int, int]:
    """A square around the largest face of ``photo`` (clipped to it), as (x0, y0, x1, y1)."""
    sys.path.insert(0, str(REPO))
    from comfy_diffbfr.faces import Selection, detect_faces, load_image

    image = load_image(photo)
    (face,) = detect_faces(image, selection=Selection(mode="largest"), crop_size=64).faces
    x0, y0, x1, y1 = face.box
    half = 1.2 * max(x1 - x0, y1 - y0)
    h, w = image.shape[1:3]
    half = min(half, w / 2, h / 2)
    cx = min(max((x0 + x1) / 2, half), w - half)
    cy = min(max((y0 + y1) / 2, half), h - half)
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def thumbnail(photo: Path, output: Path, region: tuple[int, int, int, int]) -> Image.Image:
    before = Image.open(photo).convert("RGB")
    after = Image.open(output).convert("RGB").resize(before.size, Image.Resampling.LANCZOS)
    before, after = (im.crop(region).resize((SIZE, SIZE), Image.Resampling.LANCZOS) for im in (before, after))
    after.paste(before.crop((0, 0, SIZE // 2, SIZE)), (0, 0))
    ImageDraw.Draw(after).line([(SIZE // 2, 0), (SIZE // 2, SIZE)], fill=(255, 255, 255), width=2)
    return after


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="the JSON report of scripts/comfyui_check.py")
    ap.add_argument("--photo", default="diffbfr_example.png", help="the run's photo whose outputs to use")
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    done = 0
    for run in report["runs"]:
        if run["photo"] != args.photo or not run.get("comfyui_files"):
            continue
        photo = REPO / "assets" / run["photo"]
        region = face_square(photo)
        target = REPO / "workflows" / (Path(run["workflow"]).stem + ".jpg")
        fd, tmp = tempfile.mkstemp(suffix=".jpg", dir=target.parent)
        os.close(fd)
        thumbnail(photo, Path(run["comfyui_files"][0]), region).save(tmp, "JPEG", quality=85, optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a thumbnail is served to the browser
        os.replace(tmp, target)
        print(f"{target.relative_to(REPO)} <- {run['comfyui_files'][0]}")
        done += 1
    if not done:
        print(f"no run on {args.photo} with saved files in {args.report}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
