"""Training pairs for each stage, made on the fly from a folder of aligned faces.

The data is an endless stream: global position ``j`` is face ``perm_e[j % N]`` of epoch
``e = j // N`` (one seeded permutation per epoch), and every random choice for that position (flip,
crop, degradation) comes from the seed ``(seed, j)``. A batch is therefore a pure function of its
positions, whatever the number of loader workers or processes, and resuming at an optimizer step
only needs that step number.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import ImageReadError
from ..faces.image_io import reading
from .degradation import DegradationConfig, degrade
from .presets import STAGE_INFO

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_face_folder(folder: str | Path, size: int = 256) -> torch.Tensor:
    """Every image in ``folder`` (aligned faces), resized to ``size``: uint8 ``[N,3,size,size]``,
    sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"training data folder {folder} does not exist; pass a folder of aligned faces")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageReadError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); align whole photos first with "
            "'python -m comfy_diffbfr faces PHOTOS --out DIR --size 256'"
        )
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(files):
        with reading(path):
            img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS)
        out[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return out


def position_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0] >> 1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[C,H,W]`` to ``size x size``, antialiased when shrinking."""
    if x.shape[-1] == size:
        return x
    down = size < x.shape[-1]
    return F.interpolate(x[None], size=(size, size), mode="bicubic", align_corners=False, antialias=down)[0]


class StagePairs(torch.utils.data.Dataset):
    """Position ``j`` of the stream -> ``(x0, cond)`` in [-1, 1] for one stage, from 256 px faces.

    - ``irm64``: x0 = HQ at 64; cond = the degraded face at 64.
    - ``irm256``: x0 = HQ at 256; cond = [prev, lq]: ``lq`` the degraded face at 256; ``prev`` a
      simulated IRM 64 output: the HQ face at 64, mildly blurred and noised (so stage 2 does not
      trust stage 1 blindly, as in cascaded diffusion's conditioning augmentation), or with
      probability ``prev_lq_prob`` the degraded face at 64 (a stage 1 that restored nothing),
      upsampled to 256.
    - ``tem``: x0 = a random ``patch`` x ``patch`` crop of the HQ face at 256; no condition.
    A face is flipped left-right with probability 1/2.
    """

    def __init__(
        self,
        faces: torch.Tensor,
        stage: str,
        *,
        seed: int = 0,
        degradation: DegradationConfig | None = None,
        patch: int | None = None,
        prev_noise: float = 0.1,
        prev_blur: float = 1.0,
        prev_lq_prob: float = 0.2,
    ) -> None:
        if stage not in STAGE_INFO:
            raise ValueError(f"unknown stage {stage!r}; choose one of {tuple(STAGE_INFO)}")
        self.faces = faces
        self.stage = stage
        self.seed = seed
        self.degradation = degradation or DegradationConfig()
        self.size = STAGE_INFO[stage].size
        self.patch = patch if stage == "tem" else None
        self.prev_noise, self.prev_blur, self.prev_lq_prob = prev_noise, prev_blur, prev_lq_prob
        if self.patch is not None and not 8 <= self.patch <= self.size:
            raise ValueError(f"patch must lie in [8, {self.size}], got {self.patch}")

    def __len__(self) -> int:  # the stream is endless; one epoch's worth
        return len(self.faces)

    def face_index(self, position: int) -> int:
        n = len(self.faces)
        epoch, k = divmod(position, n)
        return int(np.random.default_rng([self.seed, epoch]).permutation(n)[k])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = position_seed(self.seed, position)
        rng = np.random.default_rng(seed)
        hq = self.faces[self.face_index(position)].float() / 255
        if rng.random() < 0.5:
            hq = hq.flip(-1)
        empty = torch.zeros(0, self.size, self.size)
        if self.stage == "tem":
            if self.patch is not None:
                top, left = (int(v) for v in rng.integers(0, hq.shape[-1] - self.patch + 1, size=2))
                hq = hq[:, top : top + self.patch, left : left + self.patch]
                empty = torch.zeros(0, self.patch, self.patch)
            return hq * 2 - 1, empty
        lq, _ = degrade(hq, self.degradation, int(rng.integers(0, 2**62)))
        if self.stage == "irm64":
            return resize(hq, 64) * 2 - 1, resize(lq, 64).clamp(0, 1) * 2 - 1
        if rng.random() < self.prev_lq_prob:
            prev = resize(lq, 64)
        else:
            prev = _blur(resize(hq, 64), float(rng.uniform(0, self.prev_blur)))
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            prev = prev + torch.randn(prev.shape, generator=gen) * float(rng.uniform(0, self.prev_noise)) / 2
        prev = resize(prev.clamp(0, 1), 256).clamp(0, 1)
        return hq * 2 - 1, torch.cat([prev, lq]) * 2 - 1


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.05:
        return x
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    x = F.pad(x[None], (3, 3, 3, 3), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 7).expand(c, 1, 1, 7), groups=c)
    return F.conv2d(x, k.view(1, 1, 7, 1).expand(c, 1, 7, 1), groups=c)[0]


class StreamBatches(torch.utils.data.Sampler):
    """Positions of this process's micro-batches from optimizer step ``start_step`` on.

    Micro-batch ``m`` of step ``k`` covers global positions
    ``((k * accum + m) * world + rank) * batch + [0, batch)``: the same stream for any world size
    only differs in which process sees which rows.
    """

    def __init__(self, batch: int, *, accum: int = 1, rank: int = 0, world: int = 1, start_step: int = 0) -> None:
        self.batch, self.accum, self.rank, self.world, self.start_step = batch, accum, rank, world, start_step

    def __iter__(self) -> Iterator[Sequence[int]]:
        micro = self.start_step * self.accum
        while True:
            first = (micro * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))
            micro += 1
