"""Speed and quality of the face pipeline before and after the diffusion stages.

1. Milliseconds per 1024x1024 photo with five faces for detection, alignment (five 512 crops) and
   paste-back, median of ``--repeats`` runs on this CPU.
2. The acceptance measures on photos that are not in ../shared/faces/whole: new group photos
   composed here (aligned faces from ../shared/faces/aligned warped with random similarity
   transforms onto backgrounds), plus any ``--photo PATH:COUNT`` you give (e.g. scikit-image's
   public-domain ``astronaut.png``:1 and face-free pictures:0). For each set: faces found and extra
   detections (by count), worst round-trip PSNR of ``restore --stages none`` and whether every pixel
   outside the paste mask is bit-identical.

    python benchmarks/faces_pipeline.py [--detector dlib] [--groups 20] [--photo PATH:COUNT ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comfy_diffbfr.faces import Selection, load_image  # noqa: E402
from comfy_diffbfr.faces.alignment import crop_face, similarity_to_template  # noqa: E402
from comfy_diffbfr.faces.detect import detection_copy  # noqa: E402
from comfy_diffbfr.faces.detectors import get_detector  # noqa: E402
from comfy_diffbfr.faces.face_set import Face, FaceSet  # noqa: E402
from comfy_diffbfr.faces.paste import paste_back  # noqa: E402
from comfy_diffbfr.pipeline import DetectOptions, restore_images  # noqa: E402

SHARED = REPO.parent / "shared" / "faces"
ALIGNED = [
    "gfpgan_00000000.png", "gpen_ffhq_00001.png", "gpen_ffhq_00002.png", "gpen_ffhq_00004.png",
    "gpen_ffhq_00005.png", "gpen_ffhq_00006.png", "gpen_106000_gray.png", "sr3_ffhq_hr512_00030.png",
    "sr3_ffhq_hr512_00031.png", "sr3_ffhq_hr512_00040.png", "sr3_ffhq_hr512_00041.png",
    "sr3_celebahq_hr512_00030.png", "sr3_celebahq_hr512_00040.png",
]


def _aligned_faces(size: int = 512) -> list[np.ndarray]:
    import cv2

    faces = []
    for name in ALIGNED:
        rgb = (load_image(SHARED / "aligned" / name)[0, ..., :3].numpy() * 255).round().astype(np.uint8)
        faces.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))
    return faces


def _oval(size: int) -> np.ndarray:
    """Soft oval over face and hair of an FFHQ crop, so the pasted face has no square edge."""
    import cv2

    y, x = np.mgrid[0:size, 0:size] / size
    inside = ((x - 0.5) / 0.36) ** 2 + ((y - 0.52) / 0.45) ** 2 <= 1
    return cv2.GaussianBlur(inside.astype(np.float32), (0, 0), size * 0.03)[..., None]


def group_photo(faces: list[np.ndarray], background: np.ndarray, height: int, width: int,
                count: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A new photo: ``count`` faces at random sizes, angles and places (not overlapping) on ``background``."""
    import cv2

    size = faces[0].shape[0]
    canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    oval = _oval(size)
    placed: list[tuple[float, float, float]] = []
    for k in range(count):
        for _ in range(100):
            side = rng.uniform(110, 0.5 * min(height, width))  # crop side in the photo; the face is about half
            cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
            if all(math.hypot(cx - px, cy - py) > 0.55 * (side + ps) for px, py, ps in placed):
                break
        else:
            break
        placed.append((cx, cy, side))
        angle = rng.uniform(-20, 20)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, side / size)
        m[:, 2] += [cx - size / 2, cy - size / 2]
        face = faces[(k + int(rng.integers(len(faces)))) % len(faces)].astype(np.float32)
        warped = cv2.warpAffine(face, m, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(oval, m, (width, height), flags=cv2.INTER_LINEAR)[..., None]
        canvas = canvas * (1 - alpha) + warped * alpha
    return np.clip(canvas.round(), 0, 255).astype(np.uint8), len(placed)


def _backgrounds(extra: list[Path]) -> list[np.ndarray]:
    """Face-free backgrounds: a few whole photos without faces, else smooth noise."""
    rng = np.random.default_rng(1)
    out = [(load_image(p)[0, ..., :3].numpy() * 255).astype(np.uint8) for p in extra]
    import cv2

    for _ in range(3):
        noise = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
        out.append(cv2.resize(noise, (640, 640), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8))
    return out


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def timing(detector_name: str, faces: list[np.ndarray], repeats: int) -> None:
    rng = np.random.default_rng(0)
    photo = None
    while photo is None:
        candidate, n = group_photo(faces, _backgrounds([])[0], 1024, 1024, 5, rng)
        photo = candidate if n == 5 else None
    image = torch.from_numpy(photo).float() / 255.0
    detector = get_detector(detector_name, "cpu")

    def detect():
        small, scale = detection_copy(image, detector.max_side, detector.max_short_side)
        return detector.detect(small, detector.default_threshold), scale  # scale = (sx, sy)

    detect()  # warm-up
    ms_detect, (raws, scale) = _timed(detect, repeats)
    landmarks = [(r.landmarks + 0.5) / scale - 0.5 for r in raws]

    def align():
        affines = [similarity_to_template(lmk, 512) for lmk in landmarks]
        return affines, torch.stack([crop_face(image, a, 512) for a in affines])

    ms_align, (affines, crops) = _timed(align, repeats)
    fs = FaceSet(crops, [Face(0, a, np.zeros(4), lmk, 1.0) for a, lmk in zip(affines, landmarks)], [(1024, 1024)], 512)
    ms_paste, _ = _timed(lambda: paste_back(image[None], fs, crops, use_parsing=False), repeats)
    ms_paste_cc, _ = _timed(lambda: paste_back(image[None], fs, crops, color_correction="wavelet", use_parsing=False), repeats)
    print(f"1024x1024 photo, 5 faces ({len(raws)} detected), {detector.name}, torch threads {torch.get_num_threads()}, "
          f"median of {repeats}:")
    print(f"  detection {ms_detect:.0f} ms | alignment (5 x 512 crops) {ms_align:.0f} ms | "
          f"paste-back {ms_paste:.0f} ms (with wavelet colour correction {ms_paste_cc:.0f} ms)")


def retinaface_speed(repeats: int) -> None:
    """RetinaFace on a 1024x1024 photo, with random weights (only the speed is real): the network on
    the whole photo, and what detection costs now, on the copy with a short side of at most
    ``max_short_side`` (making the copy included)."""
    import os

    from facexlib.detection.retinaface import RetinaFace

    from comfy_diffbfr.faces import weights

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COMFY_DIFFBFR_MODELS"] = tmp
        folder = weights.model_dirs(weights.KIND)[0]
        folder.mkdir(parents=True)
        for variant, network in (("retinaface_mobilenet", "mobile0.25"), ("retinaface_resnet50", "resnet50")):
            torch.save(RetinaFace(network_name=network, device="cpu").state_dict(), folder / weights.WEIGHTS[variant].name)
            det = get_detector(variant, "cpu")
            rgb = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
            image = torch.from_numpy(rgb).float() / 255.0

            def on_copy():
                small, _ = detection_copy(image, det.max_side, det.max_short_side)
                return det.detect(small, 1.0), small.shape

            det.detect(rgb, 1.0)  # a threshold no score passes: random weights would flood the NMS
            ms_full, _ = _timed(lambda: det.detect(rgb, 1.0), repeats)
            on_copy()
            ms_copy, (_, shape) = _timed(on_copy, repeats)
            print(f"  {variant} (random weights) on the 1024x1024 photo: {ms_full:.0f} ms; "
                  f"on its {shape[1]}x{shape[0]} detection copy, copy included: {ms_copy:.0f} ms")


def measure(name: str, photos: list[tuple[str, torch.Tensor, int]], detector: str) -> None:
    counted = found = extra = 0
    worst, identical, seconds = math.inf, True, 0.0
    for label, image, count in photos:
        t0 = time.perf_counter()
        (res,) = restore_images(image, [], detect=DetectOptions(detector=detector, selection=Selection()))
        seconds += time.perf_counter() - t0
        counted += count
        found += min(count, len(res.faces))
        extra += max(0, len(res.faces) - count)
        mse = ((res.image - image)[..., :3] ** 2).mean().item()
        psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
        if psnr < worst:
            worst, worst_label = psnr, label
        outside = res.mask[0] == 0
        identical &= torch.equal(res.image[0][outside], image[0][outside])
        if len(res.faces) != count:
            print(f"    {label}: {count} faces, {len(res.faces)} detected")
    rate = found / counted if counted else 1.0
    print(f"  {name}: {len(photos)} photos, {counted} faces: found {found} ({rate:.1%}), extra {extra} "
          f"({extra / max(counted, 1):.1%}); round trip worst PSNR {worst:.2f} dB ({worst_label}); "
          f"outside mask bit-identical: {identical}; {1000 * seconds / len(photos):.0f} ms per photo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="dlib")
    parser.add_argument("--groups", type=int, default=20, help="number of composed group photos")
    parser.add_argument("--photo", action="append", default=[], metavar="PATH:COUNT", help="a photo and its face count")
    parser.add_argument("--background", action="append", default=[], type=Path, help="face-free pictures for the compositions")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--retinaface-speed", action="store_true", help="also time RetinaFace forwards (random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (SHARED / "aligned").is_dir():
        print(f"{SHARED / 'aligned'} is absent: the compositions need its aligned faces")
        return 1
    faces = _aligned_faces()
    timing(args.detector, faces, args.repeats)
    if args.retinaface_speed:
        retinaface_speed(args.repeats)

    print("photos not in ../shared/faces/whole:")
    rng = np.random.default_rng(2026)
    backgrounds = _backgrounds(args.background)
    groups = []
    for k in range(args.groups):
        h, w = int(rng.integers(700, 1700)), int(rng.integers(700, 1700))
        photo, count = group_photo(faces, backgrounds[k % len(backgrounds)], h, w, int(rng.integers(1, 7)), rng)
        groups.append((f"group_{k:02d} ({w}x{h})", torch.from_numpy(photo).float()[None] / 255.0, count))
    if groups:
        measure("composed group photos", groups, args.detector)
    if args.photo:
        given = []
        for item in args.photo:
            path, _, count = item.rpartition(":")
            given.append((Path(path).name, load_image(path), int(count)))
        measure("given photos", given, args.detector)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
