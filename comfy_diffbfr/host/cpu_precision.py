"""Precision ``auto`` on the CPU: bf16 where it is measurably faster, float32 elsewhere.

bf16 autocast only pays off on CPUs with native bf16 matrix units (Intel AMX, AVX512-BF16); on
others (e.g. AVX2-only machines) it is many times slower than float32. Even with the units, the
gain depends on the network and the input size (small networks at 64 px can lose). So the choice
is: no bf16 units -> float32, without measuring; else a short timed check of the actual network
on a dummy input of the stage's working size, float32 vs bf16 autocast + channels_last, and bf16
only when it is clearly faster (see ``measure``). The result is remembered per machine (CPU model, torch version,
thread count) and network (a hash of its config and the size), in memory and in a small JSON file
in the user cache folder (``folders.cache_dir()``), so each machine measures a network once.
"""

from __future__ import annotations

import json
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from . import folders

CACHE_NAME = "cpu_precision.json"
#: bf16 must take at most this fraction of the float32 time: it costs some accuracy
MARGIN = 0.9
#: timed rounds (a float32 and a bf16 forward back to back, in alternating order) after the bf16
#: warm-up: MAX_ROUNDS, or fewer (at least one) once BUDGET_S seconds have passed; the starter
#: networks get all three at about 0.7 s (IRM 64) to 2 s (IRM 256, TEM) per network
BUDGET_S = 1.5
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


class Timing(NamedTuple):
    fp32_ms: float  # median over the rounds
    bf16_ms: float  # median over the rounds
    ratio: float  # median over the rounds of bf16 / fp32 time within a round


def measure(forward: Forward, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time float32 against bf16 after a bf16 warm-up (its first call builds the oneDNN kernels).
    Each round runs both back to back (ABBA order), and the decision uses the median of the rounds'
    ratios: load from other processes that slows a whole round leaves its ratio nearly intact."""
    forward(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    deadline = clock() + BUDGET_S
    for round_ in range(MAX_ROUNDS):
        for bf16 in ((False, True) if round_ % 2 == 0 else (True, False)):
            start = clock()
            forward(bf16)
            times[bf16].append((clock() - start) * 1000.0)
        if clock() > deadline:
            break
    ratios = [b / f for f, b in zip(times[False], times[True])]
    return Timing(statistics.median(times[False]), statistics.median(times[True]), statistics.median(ratios))


class CpuPrecisionChooser:
    """Decides bf16 vs float32 per network on this CPU; thread-safe. ``cache_file=None`` means
    ``folders.cache_dir() / CACHE_NAME``, looked up at each use."""

    def __init__(
        self,
        cache_file: Path | None = None,
        *,
        has_units: Callable[[], bool] = has_bf16_units,
        machine: Callable[[], str] = machine_id,
        timer: Callable[[Forward], Timing] = measure,
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
                timing = self._timer(forward)
                choice = timing.ratio < MARGIN
                self._write(key, {"bf16": choice, "fp32_ms": round(timing.fp32_ms, 2),
                                  "bf16_ms": round(timing.bf16_ms, 2), "ratio": round(timing.ratio, 3)})
            self._memory[key] = choice
            return choice

    def measurement(self, network_key: str) -> dict[str, Any] | None:
        """What the cache file records for this machine and network (``bf16``, ``fp32_ms``, ``bf16_ms``, ``ratio``)."""
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
        """Merge one entry into the file (``folders.write_cache_file``: a temporary file, then
        ``os.replace``). A cache that cannot be written (read-only home) is not an error: the memory
        cache remains."""
        machines = self._read()
        network = machines.get(key[0])
        machines[key[0]] = {**(network if isinstance(network, dict) else {}), key[1]: entry}
        record = json.dumps({"version": 1, "machines": machines}, indent=1, sort_keys=True)
        folders.write_cache_file(self.cache_file, lambda tmp: tmp.write_text(record, encoding="utf-8"))


#: the chooser the model handles use
CHOOSER = CpuPrecisionChooser()
