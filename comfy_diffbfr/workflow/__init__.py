"""The headless workflow runner: ComfyUI workflows without ComfyUI."""

from .runner import load_workflow, run_workflow

__all__ = ["load_workflow", "run_workflow"]
