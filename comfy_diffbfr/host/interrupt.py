"""Cancellation: ComfyUI's interrupt flag when present, else a process-wide flag of our own.

SIGTERM (what ``kill`` and service managers send) is turned into ``Terminated``, a
``KeyboardInterrupt``, wherever a clean stop matters: for a whole command-line run
(``sigterm_as_exception()`` in ``cli.main``) and around every file write (``files.write_atomic``),
so that ``finally`` blocks run and no temporary file is left behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Interrupted

_flag = threading.Event()


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; handled like Ctrl-C (the command line exits with 143)."""


def request_interrupt() -> None:
    """Ask the running stage to stop at its next step (fallback flag; ComfyUI sets its own)."""
    _flag.set()


def clear_interrupt() -> None:
    _flag.clear()


def _comfy_interrupted() -> bool:
    try:
        import comfy.model_management as mm  # ComfyUI's module; absent outside ComfyUI
    except ImportError:
        return False
    return bool(getattr(mm, "interrupt_processing", False))


def check_interrupt() -> None:
    """Raise ``Interrupted`` when a cancel was requested. Called once per sampling step."""
    if _flag.is_set():
        _flag.clear()
        raise Interrupted("cancelled by the user")
    if _comfy_interrupted():
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()  # raises ComfyUI's own exception type


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("terminated (SIGTERM)")


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` instead of killing the process on the spot.

    Only where it is safe to do so: in the main thread (Python delivers signals there; ComfyUI
    runs nodes in another thread) and when nobody else handles SIGTERM (the default action)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
