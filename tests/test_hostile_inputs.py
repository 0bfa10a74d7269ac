"""The catalogue of hostile inputs (issue 10: "never lose a user's file").

Every case runs the command line, the runner, a node or a library function the way a careless or
hostile user would, and asserts the same four things: the exit status (or exception), the message
(which names the file, the flag or the node input), that every file that existed before is
byte-identical afterwards (inputs, earlier results, models), and that no temporary or broken file
is left. Tiny images, ``--stages none``/``--aligned`` and tiny random models keep it fast; the
diffusion path runs the restore workflow through the headless runner with tiny models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from comfy_diffbfr.cli import main
from comfy_diffbfr.errors import CheckpointError, InvalidParameterError
from comfy_diffbfr.files import TEMP_SUFFIX
from pack_helpers import REPO, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Ran:
    """What a case that ran by itself (a subprocess, a library call) gives back."""

    status: int
    text: str


@dataclass(frozen=True)
class Case:
    setup: Callable[[Path], None]
    #: argv for ``main`` (run here), or a function that runs the case: ``Ran``, or None = a library
    #: call that returned normally (status 0); an exception it raises is what ``status`` expects
    act: Callable[[Path], list[str] | Ran | None]
    status: int | type[BaseException]
    message: str  # regex searched in stderr / the exception's text ("" = anything)
    check: Callable[[Path], None] | None = None  # extra assertions on what was written
    replaced: tuple[str, ...] = ()  # files (relative to tmp) the case may replace: earlier results, --overwrite
    slow: bool = False  # a subprocess that imports torch (several seconds)


# --- inputs ---------------------------------------------------------------------------------------

def _png(path: Path, size: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _jpg(path: Path, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _truncated(path: Path, source: Callable[[Path], Path]) -> Path:
    data = source(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 20000 x 20000 greyscale PNG header in 100 bytes: 400 Mpx, beyond PIL's bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1)))
                     + chunk(b"IEND", b""))
    return path


def _bad_photos(tmp: Path) -> None:
    """One good photo and the four kinds of bad one."""
    _png(tmp / "in" / "good.png")
    (tmp / "in" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _truncated(tmp / "in" / "cut.png", _png)
    _truncated(tmp / "in" / "cut.jpg", _jpg)
    _bomb_png(tmp / "in" / "bomb.png")


def _same_stem(tmp: Path) -> None:
    _png(tmp / "in" / "a.png", seed=1)
    _jpg(tmp / "in" / "a.jpg", seed=2)


def _earlier_result(tmp: Path) -> None:
    _png(tmp / "in" / "a.png", seed=1)
    _png(tmp / "out" / "a.png", seed=9)  # last week's result


def _linked_input(kind: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _png(tmp / "in" / "a.png")
        (tmp / "out").mkdir()
        if kind == "hard":
            os.link(tmp / "in" / "a.png", tmp / "out" / "a.png")
        else:
            (tmp / "out" / "a.png").symlink_to(tmp / "in" / "a.png")
    return setup


def _nothing(tmp: Path) -> None:
    (tmp / "in").mkdir()


def _one_photo(tmp: Path) -> None:
    _png(tmp / "in" / "a.png")


def _models(tmp: Path) -> None:
    """A tiny random TEM under the starter weights' name (the first model folder); made for 64 px,
    so the 512 px crops run through it at 64 px in a fraction of a second."""
    tiny_model(tmp / "models" / "diffbfr" / "tem.safetensors", "tem", [], resolution=64)


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for one in setups:
            one(tmp)
    return setup


NONE = ["--stages", "none", "--aligned"]
TEM = ["--stages", "tem", "--aligned", "--steps", "1"]


def _restore(*extra: str, src: str = "in", out: str = "out") -> Callable[[Path], list[str]]:
    return lambda tmp: ["restore", str(tmp / src), "-o", str(tmp / out) if out else "", *extra]


# --- checks on what was written ---------------------------------------------------------------------

def _written(*names: str, folder: str = "out") -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        found = sorted(p.name for p in (tmp / folder).iterdir() if p.is_file() and not p.is_symlink())
        for name in names:
            assert name in found, (name, found)
    return check


def _replaced_by_the_new_result(tmp: Path) -> None:
    """out/a.png now holds the restored in/a.png (``--stages none``: about the same pixels)."""
    new = np.asarray(Image.open(tmp / "out" / "a.png")).astype(float)
    assert np.abs(new - np.asarray(Image.open(tmp / "in" / "a.png"))).mean() < 8


# --- library calls ---------------------------------------------------------------------------------

def _tiny_tem(tmp: Path):
    from comfy_diffbfr.models import load_model

    return load_model(tiny_model(tmp / "models" / "tem.safetensors", "tem", [], resolution=None))


def _run_stage(**settings: Any) -> Callable[[Path], None]:
    def act(tmp: Path) -> None:
        from comfy_diffbfr.stages import run_tem

        run_tem(_tiny_tem(tmp), torch.rand(1, 16, 16, 3), **{"strength": 0.5, "steps": 1, **settings})
    return act


def _detect_equal_for_other_forms(tmp: Path) -> None:
    from comfy_diffbfr.faces import detect_faces

    photo = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    want = detect_faces(torch.from_numpy(photo).float()[None] / 255, aligned=True, crop_size=32).crops
    for form in (torch.from_numpy(photo), photo, Image.fromarray(photo), [torch.from_numpy(photo)[None]]):
        got = detect_faces(form, aligned=True, crop_size=32).crops
        assert torch.equal(got, want), type(form)


def _detect(images: Any, crop_size: int = 32) -> Callable[[Path], None]:
    def act(tmp: Path) -> None:
        from comfy_diffbfr.faces import detect_faces

        detect_faces(images, aligned=True, crop_size=crop_size)
    return act


def _paste(strength: float) -> Callable[[Path], None]:
    def act(tmp: Path) -> None:
        from comfy_diffbfr.faces import detect_faces, paste_back

        photo = torch.rand(1, 32, 32, 3)
        faces = detect_faces(photo, aligned=True, crop_size=32)
        paste_back(photo, faces, faces.crops, color_correction="wavelet", color_strength=strength)
    return act


def _paste_node(tmp: Path) -> None:
    from pack_helpers import load_pack

    from comfy_diffbfr.faces import detect_faces

    photo = torch.rand(1, 32, 32, 3)
    faces = detect_faces(photo, aligned=True, crop_size=32)
    load_pack().NODE_CLASS_MAPPINGS["DiffBFRPasteBack"]().paste(photo, faces, faces.crops, "wavelet", float("nan"))


def _selection(**fields: Any) -> Callable[[Path], None]:
    def act(tmp: Path) -> None:
        from comfy_diffbfr.faces import Selection

        Selection(**fields)
    return act


def _concurrent_writers(tmp: Path) -> Ran:
    """Two runs (two OutputNames) write one name at once: each keeps its own complete result."""
    from comfy_diffbfr.files import OutputNames

    both_written = threading.Barrier(2, timeout=30)
    paths: dict[int, Path] = {}

    def writer(n: int) -> None:
        def write(fh) -> None:
            fh.write(f"result {n}".encode() * 1000)
            both_written.wait()  # both temporary files complete before either is put in place
        paths[n] = OutputNames(tmp / "out").write("a", ".txt", write)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in paths.values()) == ["a.txt", "a_00001.txt"]
    for n, path in paths.items():
        assert path.read_bytes() == f"result {n}".encode() * 1000
    return Ran(0, "")


def _symlinked_model(tmp: Path) -> None:
    tiny_model(tmp / "elsewhere" / "real.safetensors", "tem", [], resolution=None)
    (tmp / "models" / "diffbfr").mkdir(parents=True)
    (tmp / "models" / "diffbfr" / "link.safetensors").symlink_to(tmp / "elsewhere" / "real.safetensors")


def _load_listed_link(tmp: Path) -> None:
    from pack_helpers import load_pack

    from comfy_diffbfr.host import folders

    assert "link.safetensors" in folders.list_models("diffbfr")
    (handle,) = load_pack().NODE_CLASS_MAPPINGS["DiffBFRModelLoader"]().load("link.safetensors", "auto")
    assert handle.loaded.role == "tem"


def _escape_model_folder(tmp: Path) -> None:
    from comfy_diffbfr.host import folders

    folders.resolve_model("diffbfr", "../elsewhere/real.safetensors")


# --- workflows ---------------------------------------------------------------------------------------

def _api_workflow(**paste: Any) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "DiffBFRFaceDetect", "inputs": {"image": ["1", 0], "detector": "auto", "selection": "all",
                                                           "crop_size": 64, "aligned": True}},
        "3": {"class_type": "DiffBFRPasteBack", "inputs": {"image": ["1", 0], "faces": ["2", 0], "restored": ["2", 1],
                                                          "color_correction": "none", "strength": 1.0, **paste}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "restored"}},
    }


def _workflow_file(text: str | bytes | Callable[[], str | bytes]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _one_photo(tmp)
        content = text() if callable(text) else text
        (tmp / "in" / "wf.json").write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def _run(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", str(tmp / "in" / "wf.json"), "-o", str(tmp / "out"), *extra]


def _with(workflow: dict, node: str, **inputs: Any) -> str:
    workflow[node]["inputs"].update(inputs)
    return json.dumps(workflow)


# --- signals and full disks: subprocesses ------------------------------------------------------------

# Runs the command line with PIL's save replaced by one that writes a few bytes, says so and waits
# to be stopped: the signal arrives in the middle of writing the result.
SLOW_WRITE = """
import sys, time
from PIL import Image
def slow_save(self, fp, *args, **kwargs):
    fp.write(b"\\x89PNG\\r\\n\\x1a\\n a partial result")
    fp.flush()
    open(sys.argv[1], "w").close()
    time.sleep(120)
Image.Image.save = slow_save
from comfy_diffbfr.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Runs the command line with a 20 kB file size limit: writing a bigger file fails (EFBIG) as on a full disk.
SMALL_FILE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from comfy_diffbfr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _stopped_mid_write(sig: signal.Signals) -> Callable[[Path], Ran]:
    def act(tmp: Path) -> Ran:
        ready = tmp / "writing"
        argv = ["restore", str(tmp / "in"), "-o", str(tmp / "out"), *NONE, "--overwrite"]
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(ready), *argv], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            assert list((tmp / "out").glob(f"*{TEMP_SUFFIX}")), "the result was not being written to a temporary file"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        ready.unlink()
        return Ran(proc.returncode, err)
    return act


def _small_file_limit(tmp: Path) -> Ran:
    argv = ["restore", str(tmp / "in"), "-o", str(tmp / "out"), *NONE, "--overwrite"]
    done = subprocess.run([sys.executable, "-c", SMALL_FILE_LIMIT, *argv], env=_env(), capture_output=True, text=True,
                          timeout=300)
    return Ran(done.returncode, done.stderr)


def _big_photo(tmp: Path) -> None:
    """A photo whose result (random pixels: about 1.9 MB as PNG) cannot fit, and an earlier result."""
    _png(tmp / "in" / "a.png", size=800)
    _png(tmp / "out" / "a.png", seed=9)


def _full_disk(tmp: Path) -> None:
    """The earlier result on a 1 MB file system (tmpfs, as root); the new result does not fit."""
    disk = tmp / "out"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a 1 MB tmpfs here (needs root and mount rights); the RLIMIT_FSIZE case covers "
                    "a write that fails for lack of space")
    _png(tmp / "in" / "a.png", size=800)
    _png(disk / "a.png", seed=9)


def _on_full_disk(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["restore", str(tmp / "in"), "-o", str(tmp / "out"), *NONE, *extra]


# --- the catalogue -------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_PHOTO_ERRORS = "(?s)" + "".join(f"(?=.*{p})" for p in (
    r"error: cannot read \S*junk\.jpg as an image", r"error: cannot read \S*cut\.jpg as an image \(image file is truncated",
    r"error: cannot read \S*cut\.png as an image \(image file is truncated",
    r"error: cannot read \S*bomb\.png as an image \(Image size \(400000000 pixels\) exceeds limit .* decompression bomb",
    r"4 of 5 photo\(s\) failed \(see above\); 1 done"))
CASES: dict[str, Case] = {
    # files: inputs are never replaced, names never collide, writes are atomic
    "restore -o the photos' own folder": Case(
        _same_stem, _restore(*NONE, out="in"), 0, r"a\.png: 1 face\(s\) -> .*a_00002\.png",
        _written("a.png", "a.jpg", "a_00001.png", "a_00002.png", folder="in")),
    "restore (diffusion) -o the photos' own folder": Case(
        _both(_same_stem, _models), _restore(*TEM, out="in"), 0, r"a\.jpg: 1 face\(s\) -> .*a_00001\.png",
        _written("a_00001.png", "a_00002.png", folder="in")),
    "restore -o '' (an unset variable)": Case(_one_photo, _restore(*NONE, out=""), 2, r"argument -o/--output: is empty"),
    "faces --out ''": Case(_one_photo, lambda tmp: ["faces", str(tmp / "in"), "--aligned", "--out", ""], 2,
                           r"argument --out: is empty"),
    "degrade -o ''": Case(_one_photo, lambda tmp: ["degrade", str(tmp / "in"), "-o", ""], 2, r"argument -o/--output: is empty"),
    "run -o ''": Case(_workflow_file(json.dumps(_api_workflow())), lambda tmp: ["run", str(tmp / "in" / "wf.json"), "-o", ""],
                      2, r"argument -o/--output: is empty"),
    "a.jpg and a.png into one folder": Case(_same_stem, _restore(*NONE), 0, r"a\.png: 1 face\(s\) -> .*a_00001\.png",
                                            _written("a.png", "a_00001.png")),
    "faces --out: a.jpg and a.png": Case(_same_stem, lambda tmp: ["faces", str(tmp / "in"), "--aligned", "--out",
                                                                  str(tmp / "out"), "--size", "16"], 0, "",
                                         _written("a_0.png", "a_0_00001.png")),
    "degrade -o: a.jpg and a.png, with --params": Case(
        _same_stem, lambda tmp: ["degrade", str(tmp / "in"), "-o", str(tmp / "out"), "--params"], 0, r"a_00001\.png",
        _written("a.png", "a.json", "a_00001.png", "a_00001.json")),
    "an earlier result is kept": Case(_earlier_result, _restore(*NONE), 0, r"-> .*a_00001\.png", _written("a_00001.png")),
    "--overwrite replaces an earlier result": Case(
        _earlier_result, _restore(*NONE, "--overwrite"), 0, r"-> .*out/a\.png", _replaced_by_the_new_result,
        replaced=("out/a.png",)),
    "--overwrite never replaces a hard link to an input": Case(
        _linked_input("hard"), _restore(*NONE, "--overwrite"), 0, r"-> .*a_00001\.png", _written("a_00001.png")),
    "--overwrite never replaces a symlink to an input": Case(
        _linked_input("symbolic"), _restore(*NONE, "--overwrite"), 0, r"-> .*a_00001\.png", _written("a_00001.png")),
    "two runs write one name at the same time": Case(_nothing, _concurrent_writers, 0, ""),
    "Ctrl-C while writing": Case(_earlier_result, _stopped_mid_write(signal.SIGINT), 130, r"interrupted", slow=True),
    "SIGTERM while writing": Case(_earlier_result, _stopped_mid_write(signal.SIGTERM), 143, r"terminated", slow=True),
    "file size limit while writing (as a full disk)": Case(_big_photo, _small_file_limit, 1, r"cannot write .*a\.png: File too large", slow=True),
    "full disk, --overwrite": Case(_full_disk, _on_full_disk("--overwrite"), 1, r"cannot write .*a\.png: No space left on device"),
    "full disk": Case(_full_disk, _on_full_disk(), 1, r"cannot write .*a_00001\.png: No space left on device"),
    # one bad photo never stops a batch; the exit status counts the failed ones
    "bad photos, --stages none": Case(_bad_photos, _restore(*NONE), 4, BAD_PHOTO_ERRORS, _written("good.png")),
    "bad photos, diffusion stages": Case(_both(_bad_photos, _models), _restore(*TEM), 4, BAD_PHOTO_ERRORS, _written("good.png")),
    "bad photos, faces": Case(_bad_photos, lambda tmp: ["faces", str(tmp / "in"), "--aligned", "--out", str(tmp / "out")], 4,
                              r"cut\.png as an image", _written("good_0.png")),
    "bad photos, degrade": Case(_bad_photos, lambda tmp: ["degrade", str(tmp / "in"), "-o", str(tmp / "out")], 4,
                                r"bomb\.png as an image", _written("good.png")),
    "an empty folder": Case(_nothing, _restore(*NONE), 2, r"no image files in .*in \(looked for \.png"),
    "an empty folder, diffusion stages": Case(_both(_nothing, _models), _restore(*TEM), 2, r"no image files in"),
    # numbers: NaN, infinities and sizes, named as the user typed them
    "--color-strength nan": Case(_one_photo, _restore(*NONE, "--color-strength", "nan"), 2,
                                 r"argument --color-strength: must be a finite number in \[0, 1\], got 'nan'"),
    "--color-strength inf": Case(_one_photo, _restore(*NONE, "--color-strength", "inf"), 2, r"argument --color-strength"),
    "--strength nan": Case(_one_photo, _restore("--strength", "0.5,nan"), 2,
                           r"argument --strength: each value must be a finite number in \[0.01, 1\], got 'nan'"),
    "--steps 0": Case(_one_photo, _restore("--steps", "0"), 2, r"argument --steps: each value must be a whole number in \[1, 1000\]"),
    "--seed -1 (not node 8's 'seed')": Case(_one_photo, _restore("--seed", "-1"), 2,
                                            r"argument --seed: must be a whole number in \[0, 18446744073709551615\], got '-1'"),
    "faces --size 100000": Case(_one_photo, lambda tmp: ["faces", str(tmp / "in"), "--size", "100000"], 2,
                                r"argument --size: must be a whole number in \[8, 2048\], got '100000'"),
    "faces --score-threshold -5": Case(_one_photo, lambda tmp: ["faces", str(tmp / "in"), "--score-threshold", "-5"], 2,
                                       r"argument --score-threshold: must be a finite number in \[-1, 10\], got '-5'"),
    "faces --max-faces 0": Case(_one_photo, lambda tmp: ["faces", str(tmp / "in"), "--max-faces", "0"], 2,
                                r"argument --max-faces: must be a whole number in \[1, 1000\]"),
    "faces --min-size nan": Case(_one_photo, lambda tmp: ["faces", str(tmp / "in"), "--min-size", "nan"], 2,
                                 r"argument --min-size: must be a finite number"),
    "degrade --set NaN": Case(_one_photo, lambda tmp: ["degrade", str(tmp / "in"), "-o", str(tmp / "out"), "--set",
                                                       '{"blur_sigma": [NaN, NaN]}'], 2, r"blur_sigma=\(nan, nan\) must hold finite numbers"),
    "train --lr nan": Case(_nothing, lambda tmp: ["train", "--stage", "tem", "--data", str(tmp / "in"), "--out",
                                                  str(tmp / "out"), "--lr", "nan"], 2, r"argument --lr: must be a finite number in \(0, 1\]"),
    "workflow strength: NaN": Case(_workflow_file(lambda: _with(_api_workflow(), "3", strength=NAN)), _run(), 2,
                                   r"strength must be a finite number in \[0, 1\], got nan"),
    "run --set 3.strength=Infinity": Case(_workflow_file(json.dumps(_api_workflow())), _run("--set", "3.strength=Infinity"), 2,
                                          r"strength must be a finite number in \[0, 1\], got inf"),
    "workflow crop_size: 1e999": Case(_workflow_file(lambda: _with(_api_workflow(), "2", crop_size=INF)), _run(), 2,
                                      r"node 2 \(DiffBFRFaceDetect\) input 'crop_size': inf is not a finite number"),
    "PasteBack node strength NaN": Case(_nothing, _paste_node, InvalidParameterError,
                                        r"strength must be a finite number in \[0, 1\], got nan"),
    "paste_back(color_strength=inf)": Case(_nothing, _paste(INF), InvalidParameterError, r"color_strength must be a finite number in \[0, 1\]"),
    "run_stage(strength=nan)": Case(_nothing, _run_stage(strength=NAN), InvalidParameterError,
                                    r"strength must be a finite number in \[0.01, 1\], got nan"),
    "run_stage(eta=nan)": Case(_nothing, _run_stage(eta=NAN), InvalidParameterError, r"eta must be a finite number in \[0, 1\]"),
    "run_stage(steps=10**9)": Case(_nothing, _run_stage(steps=10**9), InvalidParameterError, r"steps must be a whole number in \[1, 1000\]"),
    "Selection(min_size=nan)": Case(_nothing, _selection(min_size=NAN), InvalidParameterError, r"min_size must be a finite number"),
    "Selection(score_threshold=-5)": Case(_nothing, _selection(score_threshold=-5.0), InvalidParameterError,
                                          r"score_threshold must be a finite number in \[-1, 10\], got -5"),
    "detect_faces(crop_size=100000)": Case(_nothing, _detect(torch.rand(1, 8, 8, 3), crop_size=100_000), InvalidParameterError,
                                           r"crop_size must be a whole number in \[8, 2048\], got 100000"),
    # image forms at the library's entry points
    "uint8, numpy, PIL and list images are converted": Case(_nothing, _detect_equal_for_other_forms, 0, ""),
    "0..255 float images are refused": Case(_nothing, _detect(torch.rand(1, 16, 16, 3) * 255), InvalidParameterError,
                                            r"a 0\.\.255 image must be divided by 255; expected a ComfyUI IMAGE: float32 \[B, H, W, C\]"),
    "channels-first images are refused": Case(_nothing, _detect(torch.rand(1, 3, 16, 16)), InvalidParameterError,
                                              r"looks channels-first \[B, C, H, W\]: pass images\.permute\(0, 2, 3, 1\)"),
    "NaN images are refused": Case(_nothing, _detect(torch.full((1, 8, 8, 3), NAN)), InvalidParameterError, r"NaN or infinite"),
    # workflow files
    "workflow filename_prefix with a NUL byte": Case(
        _workflow_file(lambda: _with(_api_workflow(), "4", filename_prefix="out\u0000put")), _run(), 2,
        r"node 4 \(SaveImage\) input 'filename_prefix': .* contains a NUL byte"),
    "workflow file with a raw NUL byte": Case(_workflow_file(b'{"1": {"class_type": "LoadImage\x00"}}'), _run(), 2,
                                              r"cannot read workflow .*wf\.json: Invalid control character"),
    "workflow nested 100,000 deep": Case(_workflow_file("[" * 100_000 + "]" * 100_000), _run(), 2,
                                         r"nested too deeply to be a workflow"),
    "workflow nested 100 deep in an input": Case(
        _workflow_file(lambda: _with(_api_workflow(), "4", filename_prefix=json.loads("[" * 100 + "]" * 100))), _run(), 2,
        r"nested more than 64 levels deep"),
    "workflow class_type is a list": Case(_workflow_file('{"1": {"class_type": ["LoadImage"], "inputs": {}}}'), _run(), 2,
                                          r"class_type must be strings"),
    "workflow inputs is a list": Case(_workflow_file('{"1": {"class_type": "LoadImage", "inputs": ["a.png"]}}'), _run(), 2,
                                      r"node 1 \(LoadImage\): 'inputs' is missing or not an object"),
    "workflow IMAGE input is a number": Case(_workflow_file(lambda: _with(_api_workflow(), "4", images=5)), _run(), 2,
                                             r"node 4 \(SaveImage\) input 'images' takes a link .* IMAGE output, got 5"),
    "workflow BOOLEAN input is 'false' text": Case(_workflow_file(lambda: _with(_api_workflow(), "2", aligned="no")), _run(), 2,
                                                   r"node 2 \(DiffBFRFaceDetect\) input 'aligned': 'no' is not true or false"),
    "UI workflow whose nodes are numbers": Case(_workflow_file('{"nodes": [1, 2], "links": []}'), _run(), 2,
                                                r"malformed UI-format workflow"),
    # model folders
    "a symlinked model that is listed also loads": Case(_symlinked_model, _load_listed_link, 0, ""),
    "model names never escape the folders": Case(_symlinked_model, _escape_model_folder, CheckpointError,
                                                 r"must be a path inside the diffbfr model folders"),
}


@pytest.fixture(autouse=True)
def _models_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("COMFY_DIFFBFR_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run_case(case: Case, tmp: Path, capsys) -> tuple[int | type[BaseException], str]:
    try:
        acted = case.act(tmp)
        if isinstance(acted, list):
            try:
                status = main(acted)
            except SystemExit as exc:  # argparse refused an argument
                status = exc.code
            captured = capsys.readouterr()
            return status, captured.out + captured.err
        if isinstance(acted, Ran):
            return acted.status, acted.text
        return 0, ""
    except Exception as exc:  # a library call: the exception is the outcome
        return type(exc), str(exc)


def _assert_nothing_lost(tmp: Path, before: dict[str, str], case: Case) -> None:
    after = _snapshot(tmp)
    for name, digest in before.items():
        if name not in case.replaced:
            assert after.get(name) == digest, f"{name} was changed or removed"
    leftovers = [p for p in tmp.rglob(f"*{TEMP_SUFFIX}")]
    assert not leftovers, f"temporary files left: {leftovers}"
    for name in set(after) - set(before) | set(case.replaced):
        if name.endswith((".png", ".jpg")):
            with Image.open(tmp / name) as im:
                im.load()  # a complete image (a truncated one raises)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if c.slow else n for n, c in CASES.items()])
def test_hostile_input(name, tmp_path, capsys):
    case = CASES[name]
    tmp = tmp_path
    try:
        case.setup(tmp)
        before = _snapshot(tmp)
        status, text = _run_case(case, tmp, capsys)
        if isinstance(case.status, int):
            assert status == case.status, (status, text)
        else:
            assert status is case.status, (status, text)
        assert re.search(case.message, text), text
        assert "Traceback" not in text, text
        _assert_nothing_lost(tmp, before, case)
        if case.check is not None:
            case.check(tmp)
    finally:
        if os.path.ismount(tmp / "out"):
            subprocess.run(["umount", str(tmp / "out")], check=False)


# --- model files: one subprocess under a memory limit checks them all -----------------------------------

# Imports what inspect and load_model use, then allows 512 MB more address space: a hostile file must
# be refused with a CheckpointError (exit 2), not allocate gigabytes (MemoryError, or the kernel's kill).
UNDER_MEMORY_LIMIT = """
import json, resource, sys, traceback
import torch
from comfy_diffbfr.cli import main
from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model
import comfy_diffbfr.commands.inspect
for name in ("sr3", "adm", "ddpm"):
    __import__("comfy_diffbfr.models.formats." + name)
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20),) * 2)
results = {}
for name, path, hints in json.loads(sys.argv[1]):
    hint_args = [f"--hint={k}={json.dumps(v)}" for k, v in hints.items()]
    try:
        status = main(["inspect", path, *hint_args])
    except BaseException as exc:
        status = f"{type(exc).__name__}: {exc}"
    try:
        load_model(path, hints)
        loaded = "loaded"
    except CheckpointError as exc:
        loaded = f"CheckpointError: {exc}"
    except BaseException as exc:
        loaded = f"{type(exc).__name__}: {exc}"
    results[name] = [status, loaded]
print(json.dumps(results))
"""


def _native_with(path: Path, source: Path, edit: Callable[[dict, dict], None]) -> Path:
    """A copy of a native file whose metadata (decoded JSON values) or tensors ``edit`` changed."""
    with safe_open(str(source), framework="pt") as f:
        metadata = {k: json.loads(v) for k, v in f.metadata().items()}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(metadata, tensors)
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


def _expanded_adm(path: Path) -> Path:
    """A 1 kB pickle of a 600 M-parameter ADM UNet: every tensor a stride-0 view of one number."""
    from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config

    with torch.device("meta"):
        net = ADMUNet.from_config(adm_config(model_channels=512, channel_mult=[1, 2, 4], num_res_blocks=2,
                                             attention_levels=[False, False, False]))
    torch.save({k: torch.zeros(()).expand(v.shape) for k, v in net.state_dict().items()}, path)
    return path


def _set(section: str, **values: Any) -> Callable[[dict, dict], None]:
    return lambda metadata, tensors: metadata[section].update(values)


def _nan_weight(metadata: dict, tensors: dict) -> None:
    key = next(k for k, t in tensors.items() if t.is_floating_point() and t.ndim == 4)
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0, 0, 0] = NAN


MODEL_CASES: dict[str, tuple[Callable[[Path, Path], Path], dict, str, str]] = {
    # name: (make the file from the tiny model, hints, expected inspect outcome, expected load_model outcome) (regexes)
    "metadata num_timesteps 1e9": (lambda d, t: _native_with(d / "t.safetensors", t, _set("schedule", num_timesteps=1e9)), {},
                                   r"^2$", r"num_timesteps must be a whole number in \[1, 100000\], got 1000000000\.0"),
    "metadata num_timesteps 0": (lambda d, t: _native_with(d / "z.safetensors", t, _set("schedule", num_timesteps=0)), {},
                                 r"^2$", r"num_timesteps must be a whole number in \[1, 100000\], got 0"),
    "metadata model_channels 2048": (lambda d, t: _native_with(d / "c.safetensors", t, _set("config", model_channels=2048)), {},
                                     r"^0$", r"weights do not fit the adm network of its config"),
    "metadata model_channels 1e6": (lambda d, t: _native_with(d / "m.safetensors", t, _set("config", model_channels=10**6)), {},
                                    r"^2$", r"model_channels=1000000 is out of bounds \(at most 4096 channels\)"),
    "metadata channel_mult of 100000 levels": (
        lambda d, t: _native_with(d / "l.safetensors", t, _set("config", channel_mult=[1] * 100_000)), {},
        r"^2$", r"has 100000 entries \(at most 16 levels\)"),
    "metadata resolution 1e9": (lambda d, t: _native_with(d / "r.safetensors", t, lambda m, _: m.update(resolution=10**9)), {},
                                r"^2$", r"resolution must be a whole number of pixels in \[1, 4096\]"),
    "NaN weights": (lambda d, t: _native_with(d / "nan.safetensors", t, _nan_weight), {},
                    r"^0$", r"weights hold NaN or infinite values"),
    "hint num_timesteps 1e9": (lambda d, t: _plain_copy(d / "h.pth", t), {"norm_groups": 8, "num_timesteps": 1e9},
                               r"^2$", r"num_timesteps must be a whole number in \[1, 100000\]"),
    "hint num_timesteps inf": (lambda d, t: _plain_copy(d / "i.pth", t), {"norm_groups": 8, "num_timesteps": INF},
                               r"^2$", r"invalid schedule"),
    "stride-0 tensors claiming gigabytes": (lambda d, t: _expanded_adm(d / "expanded.pth"), {},
                                         r"^2$", r"its tensors claim [\d,]+ MB but the file holds 0\.\d MB"),
}


def _plain_copy(path: Path, tiny: Path) -> Path:
    """A non-native .pth of the tiny model's weights (hints apply to those)."""
    with safe_open(str(tiny), framework="pt") as f:
        torch.save({k: f.get_tensor(k).float() for k in f.keys()}, path)
    return path


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_models")
    tiny = tiny_model(folder / "tiny.safetensors", "tem", [], resolution=None)
    files = {name: (make(folder, tiny), hints) for name, (make, hints, _, _) in MODEL_CASES.items()}
    before = _snapshot(folder)
    jobs = json.dumps([[name, str(path), hints] for name, (path, hints) in files.items()])
    done = subprocess.run([sys.executable, "-c", UNDER_MEMORY_LIMIT, jobs], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr, before, _snapshot(folder)


@pytest.mark.slow  # one subprocess for all of them
@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_hostile_model_file(name, hostile_models):
    """inspect's exit status and load_model's outcome within 512 MB more address space."""
    results, stderr, before, after = hostile_models
    inspected, loaded = results[name]
    _, _, want_inspect, want_load = MODEL_CASES[name]
    assert re.search(want_inspect, str(inspected)), inspected
    assert loaded.startswith("CheckpointError: ") and re.search(want_load, loaded), loaded
    assert before == after  # the model files are never changed
    assert "Traceback" not in stderr and "MemoryError" not in stderr
