"""Helpers for the node-pack tests: tiny real models, and the pack imported the way ComfyUI does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from comfy_diffbfr.diffusion.schedules import Schedule
from comfy_diffbfr.models import save_model
from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
EXAMPLE_PHOTO = REPO / "assets" / "diffbfr_example.png"  # the photo every workflow loads
STAGE_FILES = {"irm64": "irm64.safetensors", "irm256": "irm256.safetensors", "tem": "tem.safetensors"}  # the trainer's export names
_CONDITIONS = {"irm64": ["lq"], "irm256": ["prev", "lq"], "tem": []}
_SIZES = {"irm64": 64, "irm256": 256, "tem": None}  # a TEM without a native size runs at its input's size
PUBLIC_PRIOR = "iddpm_ffhq512_ema500000.pth"  # DifFace's FFHQ-512 prior, named by diffbfr_public_prior.json


def tiny_model(path: Path, role: str | None, conditions: list[str], *, resolution: int | None, seed: int = 0) -> Path:
    """A randomly initialised ADM UNet of a few thousand parameters, saved in the native format."""
    cond = 3 * len(conditions)
    # enough levels that the middle block's attention sees at most 16x16 tokens (fast on a CPU)
    levels = max(2, ((resolution or 64) // 16).bit_length())
    config = adm_config(
        in_channels=3 + cond, out_channels=3, model_channels=8, channel_mult=[1] * (levels - 1) + [2],
        num_res_blocks=1, attention_levels=[False] * levels, num_head_channels=-1, norm_groups=8, super_res=bool(cond),
        image_size=resolution or 64,
    )
    torch.manual_seed(seed)
    net = ADMUNet.from_config(config)
    with torch.no_grad():  # random outputs of a sensible size, not zero-initialised ones
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_model(path, net, arch="adm", config=config, role=role, conditions=conditions,
                      schedule=Schedule.from_name("linear", 100), prediction="eps", resolution=resolution)


def stage_models(folder: Path) -> dict[str, Path]:
    """The three starter-weight file names as tiny models in ``folder`` (the diffbfr model folder)."""
    return {role: tiny_model(folder / name, role, _CONDITIONS[role], resolution=_SIZES[role])
            for role, name in STAGE_FILES.items()}


def stand_in_public_prior(folder: Path) -> Path:
    """A tiny random guided-diffusion state dict saved as a plain ``.pth`` under ``PUBLIC_PRIOR``
    (32 channels: the loader assumes the public priors' 32 groups; four levels, so the middle block's
    attention sees 64x64 tokens of a 512 px crop and a run at the workflow's own settings stays short)."""
    config = adm_config(model_channels=32, channel_mult=[1, 1, 2, 2], num_res_blocks=1, out_channels=6, learn_sigma=True)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ADMUNet.from_config(config).state_dict(), folder / PUBLIC_PRIOR)
    return folder / PUBLIC_PRIOR


def load_pack():
    """The repo's top-level ``__init__.py`` under a path-shaped module name, as ComfyUI imports it."""
    name = str(REPO).replace(".", "_x_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
