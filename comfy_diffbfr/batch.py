"""One photo at a time, so that one bad photo never stops a batch.

``PhotoBatch(inputs).run(process)`` calls ``process(path)`` for every image file of the inputs. A
photo that cannot be read (missing, corrupt, truncated, a decompression bomb), does not fit in
memory, or whose result cannot be written is reported on stderr with its name and the reason;
the batch goes on. ``run`` returns the exit status: 0 when every photo was done, else the number
of failed photos (at most 125, so it is never mistaken for a signal's 128 + N).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ImageReadError, OutputError
from .faces.image_io import list_images

#: Errors that belong to one photo; any other error (bad settings, missing weights) stops the run.
PER_PHOTO_ERRORS = (ImageReadError, OutputError, MemoryError)
MAX_EXIT_STATUS = 125


class PhotoBatch:
    def __init__(self, inputs: Iterable[str | os.PathLike]) -> None:
        self.paths: list[Path] = list_images(list(inputs))
        self.failed: list[tuple[Path, str]] = []

    def fail(self, path: Path, exc: BaseException) -> None:
        """Report ``path`` as failed (``exc`` says why) and count it."""
        reason = "out of memory" if isinstance(exc, MemoryError) else str(exc)
        message = reason if str(path) in reason else f"{path}: {reason}"
        print(f"error: {message}", file=sys.stderr)
        self.failed.append((path, reason))

    def run(self, process: Callable[[Path], None]) -> int:
        for path in self.paths:
            try:
                process(path)
            except PER_PHOTO_ERRORS as exc:
                self.fail(path, exc)
        return self.exit_status()

    def exit_status(self) -> int:
        if not self.failed:
            return 0
        done = len(self.paths) - len(self.failed)
        print(f"{len(self.failed)} of {len(self.paths)} photo(s) failed (see above); {done} done", file=sys.stderr)
        return min(len(self.failed), MAX_EXIT_STATUS)
