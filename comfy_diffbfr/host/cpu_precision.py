"""Precision ``auto`` on the CPU: bf16 where it is measurably faster, float32 elsewhere.

bf16 autocast only pays off on CPUs with native bf16 matrix units (Intel AMX, AVX512-BF16); on
others (e.g. AVX2-only machines) it is many times slower than float32. Even with the units, the
gain depends on the network and the input size (small networks at 64 px can lose). So the choice
is: no bf16 units -> float32, without measuring; else a short timed check of the actual network
on a dummy input of the stage's working size, float32 vs bf16 autocast + channels_last, and bf16
only when it is clearly faster. The result is remembered per machine (CPU model, torch version,
thread count) and network (a hash of its config and the size), in memory and in a small JSON file
in the user cache folder (``folders.cache_dir()``), so each machine measures a network once.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import folders

CACHE_NAME = "cpu_precision.json"
#: bf16 must take at most this fraction of the float32 time: it costs some accuracy
MARGIN = 0.9
#: timed rounds (one float32 and one bf16 forward each) stop after this many seconds, and at most
#: MAX_ROUNDS; there is always one round after the bf16 warm-up
BUDGET_S = 1.0
MAX_ROUNDS = 3

#: runs one forward of the network on the probe input, in bf16 (True) or float32 (False)
Forward = Callable[[bool], None]


def has_bf16_units() -> bool:
    """Whether the CPU has native bf16 matrix instructions (AMX tiles or AVX512-BF16)."""
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_id() -> str:
    """What the measured speed ratio depends on besides the network."""
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def measure(forward: Forward, clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """(float32 ms, bf16 ms): the fastest of a few alternating forwards, after a bf16 warm-up (its
    first call builds the oneDNN kernels)."""
    forward(True)
    best = {False: float("inf"), True: float("inf")}
    deadline = clock() + BUDGET_S
    for _ in range(MAX_ROUNDS):
        for bf16 in (False, True):
            start = clock()
            forward(bf16)
            best[bf16] = min(best[bf16], (clock() - start) * 1000.0)
        if clock() > deadline:
            break
    return best[False], best[True]


class CpuPrecisionChooser:
    """Decides bf16 vs float32 per network on this CPU; thread-safe. ``cache_file=None`` means
    ``folders.cache_dir() / CACHE_NAME``, looked up at each use."""

    def __init__(
        self,
        cache_file: Path | None = None,
        *,
        has_units: Callable[[], bool] = has_bf16_units,
        machine: Callable[[], str] = machine_id,
        timer: Callable[[Forward], tuple[float, float]] = measure,
    ) -> None:
        self._cache_file = cache_file
        self._has_units = has_units
        self._machine = machine
        self._timer = timer
        self._memory: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    @property
    def cache_file(self) -> Path:
        return self._cache_file or folders.cache_dir() / CACHE_NAME

    def prefers_bf16(self, network_key: str, forward: Forward) -> bool:
        """Whether ``auto`` should run this network in bf16 on this CPU."""
        if not self._has_units():
            return False
        key = (self._machine(), network_key)
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            entry = self._read().get(key[0], {}).get(network_key)
            if isinstance(entry, dict) and isinstance(entry.get("bf16"), bool):
                choice = entry["bf16"]
            else:
                fp32_ms, bf16_ms = self._timer(forward)
                choice = bf16_ms < MARGIN * fp32_ms
                self._write(key, {"bf16": choice, "fp32_ms": round(fp32_ms, 2), "bf16_ms": round(bf16_ms, 2)})
            self._memory[key] = choice
            return choice

    def measurement(self, network_key: str) -> dict[str, Any] | None:
        """What the cache file records for this machine and network (``bf16``, ``fp32_ms``, ``bf16_ms``)."""
        entry = self._read().get(self._machine(), {}).get(network_key)
        return entry if isinstance(entry, dict) else None

    def _read(self) -> dict[str, Any]:
        """The cache file's machines; an absent, unreadable or malformed file counts as empty."""
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        machines = data.get("machines") if isinstance(data, dict) else None
        return machines if isinstance(machines, dict) else {}

    def _write(self, key: tuple[str, str], entry: dict[str, Any]) -> None:
        """Merge one entry into the file: a temporary file in the same folder, then ``os.replace``.
        A cache that cannot be written (read-only home) is not an error: the memory cache remains."""
        machines = self._read()
        network = machines.get(key[0])
        machines[key[0]] = {**(network if isinstance(network, dict) else {}), key[1]: entry}
        path = self.cache_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "machines": machines}, f, indent=1, sort_keys=True)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


#: the chooser the model handles use
CHOOSER = CpuPrecisionChooser()
