"""DiffBFRDegrade (extra): the training degradation (blur, downscale, noise, JPEG), to make test
inputs inside ComfyUI: fixed amounts from the sliders, or a preset drawn like ``degrade --preset``."""

from __future__ import annotations

import torch

from comfy_diffbfr.training.degradation import DegradationConfig, degrade

from .common import CATEGORY, MAX_SEED

PRESETS = ("custom", "moderate", "severe")


class DiffBFRDegrade:
    DESCRIPTION = (
        "Degrades images the way the stages were trained on (blur, downscale, noise, JPEG), to test restoration. "
        "'custom' uses the sliders (their defaults keep a 75 px face detectable); 'moderate' and 'severe' draw "
        "the amounts from the evaluation presets of the command line (degrade --preset), made for face crops "
        "of about 256 px: on a whole photo with small faces they can leave no face to detect."
    )
    SEARCH_ALIASES = ["degrade", "low quality", "blur", "jpeg artifacts", "add noise", "test input"]
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "degrade"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        # 'preset' comes last: saved workflows store widget values by position
        return {
            "required": {
                "image": ("IMAGE",),
                "blur_sigma": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                         "tooltip": "Gaussian blur sigma in pixels (0 = no blur). Used by 'custom'."}),
                "downscale": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 16.0, "step": 0.1,
                                        "tooltip": "Shrink by this factor and scale back up (1 = keep). Used by 'custom'."}),
                "noise_sigma": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 50.0, "step": 0.5,
                                          "tooltip": "Gaussian noise sigma on the 0..255 scale (0 = none). Used by 'custom'."}),
                "jpeg_quality": ("INT", {"default": 75, "min": 1, "max": 100,
                                         "tooltip": "JPEG quality (100 = no JPEG). Used by 'custom'."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Image i of the batch uses seed + i (noise, and the presets' draws)."}),
                "preset": (list(PRESETS), {
                    "default": "custom",
                    "tooltip": "custom: the sliders above. moderate / severe: amounts drawn per image from the "
                               "command line's presets (degrade --preset), which ignore the sliders.",
                }),
            },
        }

    def degrade(self, image: torch.Tensor, blur_sigma: float, downscale: float, noise_sigma: float,
                jpeg_quality: int, seed: int, preset: str = "custom") -> tuple[torch.Tensor]:
        if preset == "custom":
            config = DegradationConfig(
                blur_prob=1.0 if blur_sigma > 0 else 0.0, kernel_kinds=("iso",), kernel_weights=(1.0,),
                blur_sigma=(blur_sigma, blur_sigma), scale=(downscale, downscale),
                gaussian_noise_prob=1.0 if noise_sigma > 0 else 0.0, noise_sigma=(noise_sigma, noise_sigma),
                gray_noise_prob=0.0, poisson_prob=0.0,
                jpeg_prob=1.0 if jpeg_quality < 100 else 0.0, jpeg_quality=(jpeg_quality, jpeg_quality),
            )
        else:
            from comfy_diffbfr.training.evaluate import EVAL_DEGRADATIONS

            config = EVAL_DEGRADATIONS[preset]
        rows = [degrade(img[..., :3].movedim(-1, 0), config, (seed + i) % 2**63)[0].movedim(0, -1) for i, img in enumerate(image)]
        return (torch.stack(rows).float(),)
