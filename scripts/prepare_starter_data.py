"""Build the starter-weights training set: FFHQ-aligned 256x256 faces, split into train / holdout.

    .venv/bin/python scripts/prepare_starter_data.py --shared ../shared/faces --out .gpu/faces

Sources (see weights/MODEL_CARD.md): ``train/`` (282 HQ photos), the HQ ``aligned/`` faces and the
HQ ``whole/`` photos (faces of at least 200 px). Files tagged FFHQ-aligned are only resized; every
other face is aligned to facexlib's FFHQ 5-point template from dlib's 68 landmarks reduced to five
(eye centres, nose tip, mouth corners). Old / low-resolution photos and dlib's 150 px chips are
left out: they are not high-quality targets. Held out: the faces whose file-name SHA-1 falls in
the first tenth (a fixed list, written to ``holdout.txt``). Output: JPEG q95 (compact enough to
travel to a GPU machine).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# facexlib's FFHQ template for a 512 crop: left eye, right eye, nose tip, left and right mouth corner.
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]]
)
MIN_FACE_PX = 200
HOLDOUT_FRACTION = 0.1


def is_holdout(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32 < HOLDOUT_FRACTION


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2x3) taking src points onto dst points (Umeyama)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / (s**2).sum(1).mean()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def warp(img: Image.Image, m: np.ndarray, size: int) -> Image.Image:
    """Apply the 2x3 image->crop transform, pre-shrinking big faces so the warp does not alias."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        f = 1 / (2 * scale)
        img = img.resize((max(1, round(img.width / f)), max(1, round(img.height / f))), Image.LANCZOS)
        m = m.copy()
        m[:, :2] *= f
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    return img.transform((size, size), Image.AFFINE, inv.flatten().tolist(), Image.BICUBIC, fillcolor=None)


class DlibAligner:
    def __init__(self) -> None:
        import dlib

        from comfy_diffbfr.faces import dlib_models

        self.detector = dlib_models.frontal_face_detector()
        self.predictor = dlib_models.shape_predictor("shape_predictor_68_face_landmarks.dat")
        self.dlib = dlib

    def faces(self, img: Image.Image, min_px: int) -> list[np.ndarray]:
        """Five template points per detected face of at least ``min_px`` (box width), largest first."""
        f = max(1.0, max(img.size) / 1024)
        small = np.asarray(img.resize((round(img.width / f), round(img.height / f))) if f > 1 else img)
        rects = self.detector(small, 1 if max(small.shape) < 700 else 0)
        arr = np.asarray(img)
        out = []
        for r in sorted(rects, key=lambda r: -r.width()):
            if r.width() * f < min_px:
                continue
            rect = self.dlib.rectangle(*(round(v * f) for v in (r.left(), r.top(), r.right(), r.bottom())))
            p = np.array([[pt.x, pt.y] for pt in self.predictor(arr, rect).parts()], dtype=np.float64)
            out.append(np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/faces"))
    ap.add_argument("--out", type=Path, default=Path(".gpu/faces"))
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    tags: dict[tuple[str, str], str] = {}
    for manifest in (args.shared / "manifest.csv", args.shared / "train" / "manifest.csv"):
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                tags[(row["kind"], row["file"])] = row["tags"]
    aligner = DlibAligner()
    template = FFHQ_TEMPLATE_512 * args.size / 512
    for split in ("train", "holdout"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "holdout": 0, "skipped": 0}
    for (kind, name), tag in sorted(tags.items()):
        low = tag.lower()
        if kind == "degraded" or "old" in low or "low-res" in low or name.startswith("dlib_John"):
            continue
        folder = "train" if kind == "train" else kind
        img = ImageOps.exif_transpose(Image.open(args.shared / folder / name)).convert("RGB")
        crops = []
        if "ffhq-aligned" in low and "not ffhq" not in low:
            crops.append(img.resize((args.size, args.size), Image.LANCZOS))
        else:
            min_px = MIN_FACE_PX if kind == "whole" else 0
            for pts in aligner.faces(img, min_px):
                crops.append(warp(img, similarity(pts, template), args.size))
            if kind != "whole":
                crops = crops[:1]
        if not crops:
            counts["skipped"] += 1
        for i, crop in enumerate(crops):
            stem = f"{kind}_{Path(name).stem}_{i}"
            split = "holdout" if is_holdout(stem) else "train"
            crop.save(args.out / split / f"{stem}.jpg", quality=95)
            counts[split] += 1
    print(counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
