"""Cancellation: ComfyUI's interrupt flag when present, else a process-wide flag of our own."""

from __future__ import annotations

import threading

from ..errors import Interrupted

_flag = threading.Event()


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
