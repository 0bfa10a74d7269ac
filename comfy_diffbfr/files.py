"""Writing files so that no user's file is ever lost (README: "Your files are safe").

``write_atomic`` writes every file the project makes: the content goes to a temporary file in
the target's folder, is flushed to the disk and only then takes the target's name. An error,
Ctrl-C or SIGTERM while writing, or a full disk, removes the temporary file, so the target name
holds either the complete new file or what it held before, never a partial one.

``OutputNames`` is the naming policy of the commands that write one result per input:

- a result never replaces an input file: not under its own name, not through a hard or
  symbolic link to it (compared by device and inode, as ``os.path.samefile`` does);
- an existing file is not replaced either unless ``overwrite``: the result takes the first free
  name ``<stem>_00001.png``, ``<stem>_00002.png``, ... Whether a name is free is settled when the
  file is put in place (a hard link, which fails instead of replacing), so two runs writing into
  one folder at the same time each keep their result;
- two results of one run never share a name (``a.jpg`` and ``a.png`` -> ``a.png``, ``a_00001.png``),
  with ``overwrite`` too.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, count
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError
from .host.interrupt import sigterm_as_exception

Writer = Callable[[BinaryIO], None]
TEMP_SUFFIX = ".partial"  # temporary files are ".<target name>.<random>.partial" beside the target
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: new files get the permissions open() would give them
# link() fails with these where a file system has no hard links (FAT, some network shares)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_atomic(targets: str | os.PathLike | Iterable[Path], write: Writer, *, replace: bool = True) -> Path:
    """Write a file with ``write(fh)`` (a binary file object) and put it in place; returns its path.

    ``replace=True``: the file takes the name ``targets`` (one path), replacing what was there in
    one step (``os.replace``). ``replace=False``: ``targets`` is one path or candidate paths in
    one folder (possibly endless); the file takes the first that does not exist at the moment it
    is put in place, and an existing file is never replaced. ``OutputError`` says what failed.
    """
    candidates: Iterator[Path] = iter([Path(targets)]) if isinstance(targets, (str, os.PathLike)) else map(Path, targets)
    first = next(candidates)
    folder = first.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write {first}: cannot create the folder {folder} ({_reason(exc)}); choose an output folder you can write to"
        ) from None
    with sigterm_as_exception():
        try:
            # the name's start (file names have at most 255 bytes), a random part, the suffix
            fd, name = tempfile.mkstemp(dir=folder, prefix=f".{first.name[:120]}.", suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise OutputError(f"cannot write {first}: {_reason(exc)}; choose an output folder you can write to") from None
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on the disk before the name points at them
            os.chmod(temp, 0o666 & ~_UMASK)
            return _publish(temp, first, candidates, replace)
        except OSError as exc:
            raise OutputError(f"cannot write {first}: {_reason(exc)}") from None
        finally:
            temp.unlink(missing_ok=True)


def _publish(temp: Path, first: Path, others: Iterator[Path], replace: bool) -> Path:
    if replace:
        os.replace(temp, first)
        _sync_folder(first.parent)
        return first
    for target in chain([first], others):
        try:
            os.link(temp, target)  # fails if the name exists: nothing is ever replaced
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if os.path.lexists(target):  # no hard links here: check, then rename (a narrow race)
                continue
            os.replace(temp, target)
        _sync_folder(target.parent)
        return target
    raise OutputError(f"{first} already exists and is not replaced; choose another name")


def _sync_folder(folder: Path) -> None:
    """Make the new name itself durable (where folders can be opened: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, value: Any, *, replace: bool = True) -> Path:
    """``value`` as indented JSON text, written with ``write_atomic``."""
    text = json.dumps(value, indent=1) + "\n"
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")), replace=replace)


def _file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symbolic links, so a link to an input has the input's id
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class OutputNames:
    """Where a command writes its results: ``folder`` / the first usable name for each (see the
    module docstring). ``inputs`` are the files the run reads; none of them is ever replaced."""

    def __init__(self, folder: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, overwrite: bool = False) -> None:
        if not str(folder).strip():
            raise OutputError("the output folder is empty (''); give a folder, or '.' for the current one")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"the output folder {self.folder} is a file; give a folder")
        self.overwrite = overwrite
        self._inputs = {i for i in map(_file_id, inputs) if i is not None}
        self._claimed: set[str] = set()  # the results of this run

    def is_input(self, path: str | os.PathLike) -> bool:
        return _file_id(path) in self._inputs

    def _taken(self, path: Path) -> bool:
        if os.path.abspath(path) in self._claimed or self.is_input(path):
            return True
        return not self.overwrite and os.path.lexists(path)

    def _usable(self, stem: str, suffix: str, companions: tuple[str, ...]) -> Iterator[Path]:
        for n in count():
            base = stem if n == 0 else f"{stem}_{n:05d}"
            names = [self.folder / f"{base}{s}" for s in (suffix, *companions)]
            if not any(self._taken(p) for p in names):
                yield names[0]

    def write(self, stem: str, suffix: str, write: Writer, *, companions: Iterable[str] = ()) -> Path:
        """Write ``folder/<stem><suffix>`` (or the first usable counter name) with ``write(fh)``.
        ``companions``: suffixes of files written next to it later (``companion``), which must be
        free under the same stem too."""
        candidates = self._usable(stem, suffix, tuple(companions))
        path = write_atomic(next(candidates) if self.overwrite else candidates, write, replace=self.overwrite)
        self._claimed.add(os.path.abspath(path))
        return path

    def companion(self, path: Path, suffix: str, write: Writer) -> Path:
        """A file beside a result, under its stem (``a_00001.png`` -> ``a_00001.json``)."""
        target = path.with_name(path.stem + suffix)
        if self.is_input(target):
            raise OutputError(f"{target} is an input of this run; it is never replaced")
        written = write_atomic(target, write, replace=True)
        self._claimed.add(os.path.abspath(written))
        return written
