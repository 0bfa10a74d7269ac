"""DiffBFRDegrade (extra): the training degradation (blur, downscale, noise, JPEG) with fixed amounts,
to make test inputs inside ComfyUI."""

from __future__ import annotations

import torch

from comfy_diffbfr.training.degradation import DegradationConfig, degrade

from .common import CATEGORY, MAX_SEED


class DiffBFRDegrade:
    DESCRIPTION = "Degrades images the way the stages were trained on (blur, downscale, noise, JPEG), to test restoration."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "degrade"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE",),
                "blur_sigma": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip": "0 = no blur"}),
                "downscale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.1}),
                "noise_sigma": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 50.0, "step": 0.5, "tooltip": "on the 0..255 scale"}),
                "jpeg_quality": ("INT", {"default": 60, "min": 1, "max": 100, "tooltip": "100 = no JPEG"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            },
        }

    def degrade(self, image: torch.Tensor, blur_sigma: float, downscale: float, noise_sigma: float,
                jpeg_quality: int, seed: int) -> tuple[torch.Tensor]:
        config = DegradationConfig(
            blur_prob=1.0 if blur_sigma > 0 else 0.0, kernel_kinds=("iso",), kernel_weights=(1.0,),
            blur_sigma=(blur_sigma, blur_sigma), scale=(downscale, downscale),
            gaussian_noise_prob=1.0 if noise_sigma > 0 else 0.0, noise_sigma=(noise_sigma, noise_sigma),
            gray_noise_prob=0.0, poisson_prob=0.0,
            jpeg_prob=1.0 if jpeg_quality < 100 else 0.0, jpeg_quality=(jpeg_quality, jpeg_quality),
        )
        rows = [degrade(img[..., :3].movedim(-1, 0), config, (seed + i) % 2**63)[0].movedim(0, -1) for i, img in enumerate(image)]
        return (torch.stack(rows).float(),)
