"""The host layer inside ComfyUI, against stand-ins for the ComfyUI modules it uses
(``comfy.utils.ProgressBar``, ``comfy.model_management``, ``comfy.model_patcher.ModelPatcher``)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from comfy_diffbfr import stages
from comfy_diffbfr.host import model_cache
from pack_helpers import tiny_model


class FakeInterrupt(Exception):
    pass


@pytest.fixture
def comfy(monkeypatch):
    """Minimal ``comfy`` package recording what the pack asks of it."""
    calls = types.SimpleNamespace(progress=[], loads=[])
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.should_use_fp16 = lambda device=None: False
    mm.should_use_bf16 = lambda device=None: False
    mm.load_models_gpu = lambda models, **kw: calls.loads.append((list(models), kw))
    mm.get_free_memory = lambda device=None: 8 << 30
    mm.soft_empty_cache = lambda: None
    mm.interrupt_processing = False

    def throw():
        if mm.interrupt_processing:
            mm.interrupt_processing = False
            raise FakeInterrupt()

    mm.throw_exception_if_processing_interrupted = throw
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.progress.append((value, total, preview))

    utils.ProgressBar = ProgressBar
    patcher_mod = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    patcher_mod.ModelPatcher = ModelPatcher
    pkg = types.ModuleType("comfy")
    pkg.model_management, pkg.utils, pkg.model_patcher = mm, utils, patcher_mod
    for name, module in {"comfy": pkg, "comfy.model_management": mm, "comfy.utils": utils,
                         "comfy.model_patcher": patcher_mod}.items():
        monkeypatch.setitem(sys.modules, name, module)
    calls.mm = mm
    return calls


def test_models_are_wrapped_and_loaded_through_comfy_model_management(comfy, tmp_path):
    path = tiny_model(tmp_path / "tem.safetensors", "tem", [], resolution=64)
    loaded, patcher = model_cache.ModelCache().get(path)
    assert patcher.model is loaded.net and patcher.load_device == torch.device("cpu")
    handle = model_cache.ModelHandle(loaded=loaded, name="tem.safetensors", patcher=patcher)
    out = stages.run_tem(handle, torch.rand(1, 64, 64, 3), strength=0.2, steps=3, seed=0)
    assert out.shape == (1, 64, 64, 3)
    assert comfy.loads == [([patcher], {"force_full_load": True})]  # loaded right before use, fully
    # the progress bar advanced every step, each time with a JPEG preview of the x0 estimate
    assert [(v, t) for v, t, _ in comfy.progress] == [(1, 3), (2, 3), (3, 3)]
    kind, image, max_size = comfy.progress[-1][2]
    assert kind == "JPEG" and image.size == (64, 64) and max_size == 512


def test_comfy_cancel_stops_the_stage_at_the_next_step(comfy, tmp_path):
    path = tiny_model(tmp_path / "tem.safetensors", "tem", [], resolution=64)
    loaded, patcher = model_cache.ModelCache().get(path)
    handle = model_cache.ModelHandle(loaded=loaded, name="tem.safetensors", patcher=patcher)

    def cancel_after_first_step(value, total=None, preview=None):
        comfy.progress.append((value, total, preview))
        comfy.mm.interrupt_processing = True  # the user pressed Cancel during step 1

    sys.modules["comfy.utils"].ProgressBar.update_absolute = lambda self, *a, **k: cancel_after_first_step(*a, **k)
    with pytest.raises(FakeInterrupt):
        stages.run_tem(handle, torch.rand(1, 64, 64, 3), strength=0.5, steps=50, seed=0)
    assert len(comfy.progress) == 1


@pytest.mark.slow
def test_face_detector_and_parser_run_under_comfy_model_management(comfy, monkeypatch, tmp_path):
    """Inside ComfyUI (started with --cpu here: its device is the CPU) RetinaFace and ParseNet come
    from the model cache as ModelPatchers, loaded by ComfyUI right before use."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    from comfy_diffbfr.faces import Selection, detect_faces, paste_back, weights

    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path))  # this test's weights stay out of the others' folder
    folder = weights.model_dirs(weights.KIND)[0]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(RetinaFace(network_name="mobile0.25", device="cpu").state_dict(), folder / weights.WEIGHTS["retinaface_mobilenet"].name)
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), folder / weights.WEIGHTS["parsenet"].name)
    monkeypatch.setattr(model_cache, "CACHE", model_cache.ModelCache())
    photo = torch.rand(1, 64, 64, 3)
    faces = detect_faces(photo, detector="retinaface_mobilenet", selection=Selection(score_threshold=0.0, max_count=1),
                         crop_size=64)
    paste_back(photo, faces, faces.crops)  # the parsing mask is used: its weights are present
    managed = [type(p[0].model).__name__ for p, _ in comfy.loads]
    assert managed == ["RetinaFace", "ParseNet"] and all(p[0].load_device == torch.device("cpu") for p, _ in comfy.loads)
