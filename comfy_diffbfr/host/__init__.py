"""Services of the host application: ComfyUI's when it is running, plain fallbacks otherwise.

This is our own thin layer (no ComfyUI code). Every ComfyUI import happens inside a function and
is guarded, so the library works the same with or without ComfyUI installed.
"""
