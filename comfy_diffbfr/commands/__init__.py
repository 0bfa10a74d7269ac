"""Command-line commands; see `comfy_diffbfr.cli`."""
