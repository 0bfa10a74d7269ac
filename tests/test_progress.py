"""DiffBFR Restore's progress in ComfyUI: one bar from 0 to 100 % across all its stages."""

from __future__ import annotations

import torch

from comfy_diffbfr.defaults import STAGE_DEFAULTS
from comfy_diffbfr.host.model_cache import ModelHandle
from comfy_diffbfr.models import load_model
from comfy_diffbfr.pipeline import Stage, restore_crops
from pack_helpers import tiny_model


def test_the_pipeline_reports_one_bar_across_its_stages(tmp_path, comfy_progress_bar, one_thread):
    bars = []

    class ProgressBar:  # ComfyUI's comfy.utils.ProgressBar, recording
        def __init__(self, total):
            self.total, self.updates = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total, preview is not None))

    comfy_progress_bar(ProgressBar)
    models = {name: ModelHandle(load_model(tiny_model(tmp_path / f"{name}.safetensors", name, cond, resolution=size)), name)
              for name, cond, size in (("irm64", ["lq"], 64), ("tem", [], None))}
    stages = [Stage(name, models[name], STAGE_DEFAULTS[name].updated(steps=steps)) for name, steps in (("irm64", 3), ("tem", 2))]
    restore_crops(torch.rand(2, 64, 64, 3), stages)
    assert len(bars) == 1  # not one bar per stage, each restarting at 0
    values = [v for v, _, _ in bars[0].updates]
    assert values == sorted(values) and values[-1] == bars[0].total
    assert values[:3] == [round(bars[0].total * k / 6) for k in (1, 2, 3)]  # IRM 64 (3 steps): the first half
    assert all(total == bars[0].total and preview for _, total, preview in bars[0].updates)
