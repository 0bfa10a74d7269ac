"""The diffusion stages on IMAGE tensors, with tiny real models (native files through load_model)."""

from __future__ import annotations

import pytest
import torch

from comfy_diffbfr import stages
from comfy_diffbfr.errors import DiffBFRError, Interrupted, InvalidParameterError, NoFaceError, WrongModelKindError
from comfy_diffbfr.host import interrupt, model_cache
from comfy_diffbfr.host.model_cache import load_cached
from pack_helpers import tiny_model

FAST = dict(strength=0.5, steps=3, sampler="ddim", eta=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage_models")
    return {
        "irm64": load_cached(tiny_model(folder / "irm64.safetensors", "irm64", ["lq"], resolution=64), "irm64.safetensors"),
        "irm256": load_cached(tiny_model(folder / "irm256.safetensors", "irm256", ["prev", "lq"], resolution=256), "irm256.safetensors"),
        "tem": load_cached(tiny_model(folder / "tem.safetensors", "tem", [], resolution=64), "tem.safetensors"),
    }


@pytest.fixture(autouse=True)
def _one_thread_no_interrupt(one_thread):
    yield
    interrupt.clear_interrupt()


def crops(n: int, size: int = 96) -> torch.Tensor:
    return torch.rand(n, size, size, 3, generator=torch.Generator().manual_seed(n))


def test_each_stage_outputs_an_image_batch_of_its_size(models):
    lq = crops(2)
    out64 = stages.run_irm64(models["irm64"], lq, seed=1, **FAST)
    assert out64.shape == (2, 64, 64, 3) and out64.dtype == torch.float32
    assert 0 <= out64.min() and out64.max() <= 1
    out256 = stages.run_irm256(models["irm256"], out64, lq=lq, seed=1, **{**FAST, "steps": 1})
    assert out256.shape == (2, 256, 256, 3)
    tem = stages.run_tem(models["tem"], out64, seed=1, strength=0.1, steps=2)
    assert tem.shape == (2, 64, 64, 3)
    assert not torch.equal(tem, out64)  # the stage changed the image
    wide = stages.run_tem(models["tem"], torch.rand(1, 48, 80, 3), seed=1, strength=0.1, steps=1)
    assert wide.shape == (1, 48, 80, 3)  # run at the model's 64x64, returned at the input's size


def test_same_seed_same_output_other_seed_different(models):
    lq = crops(1)
    a = stages.run_irm64(models["irm64"], lq, seed=5, **FAST)
    b = stages.run_irm64(models["irm64"], lq, seed=5, **FAST)
    c = stages.run_irm64(models["irm64"], lq, seed=6, **FAST)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_equals_faces_one_at_a_time(models):
    lq = crops(3)
    batch = stages.run_irm64(models["irm64"], lq, seed=10, seed_mode="per_face", **FAST)
    for i in range(3):
        single = stages.run_irm64(models["irm64"], lq[i:i + 1], seed=10 + i, seed_mode="per_face", **FAST)
        assert torch.allclose(batch[i], single[0], atol=1e-5), i
    same = stages.run_irm64(models["irm64"], torch.cat([lq[:1], lq[:1]]), seed=10, seed_mode="same", **FAST)
    assert torch.allclose(same[0], same[1], atol=1e-5)
    with pytest.raises(InvalidParameterError, match="seed_mode must be one of"):
        stages.run_irm64(models["irm64"], lq, seed_mode="each", **FAST)


def test_wrong_kind_of_model_is_explained(models):
    with pytest.raises(WrongModelKindError, match="IRM 64 needs a conditional model; 'tem.safetensors' is an unconditional face prior.*TEM node"):
        stages.run_irm64(models["tem"], crops(1), **FAST)
    with pytest.raises(WrongModelKindError, match="TEM needs an unconditional face model.*IRM node"):
        stages.run_tem(models["irm64"], crops(1), **FAST)
    with pytest.raises(WrongModelKindError, match="made for IRM 256.*DiffBFR IRM 256 node"):
        stages.run_irm64(models["irm256"], crops(1), **FAST)


def test_wrong_resolution_is_explained(tmp_path):
    handle = load_cached(tiny_model(tmp_path / "big.safetensors", None, ["lq"], resolution=128), "big.safetensors")
    with pytest.raises(WrongModelKindError, match="IRM 64 works at 64x64, but 'big.safetensors' was made for 128x128"):
        stages.run_irm64(handle, crops(1), **FAST)


def test_empty_batch_and_mismatched_lq_are_explained(models):
    with pytest.raises(NoFaceError, match="empty batch: the face set has no faces"):
        stages.run_irm64(models["irm64"], torch.zeros(0, 64, 64, 3), **FAST)
    with pytest.raises(DiffBFRError, match="the image batch has 2 faces but 'lq' has 3"):
        stages.run_irm256(models["irm256"], crops(2, 64), lq=crops(3), **FAST)
    with pytest.raises(DiffBFRError, match="connect the crops .* to the 'lq' input"):
        stages.run_irm256(models["irm256"], crops(1, 64), **FAST)


def test_cancel_stops_within_one_step_and_the_model_stays_usable(models):
    handle = models["irm64"]
    calls = []
    original = handle.loaded.predict
    handle.loaded.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        def cancel_at_step_2(step, total, preview):
            assert preview.shape == (1, 64, 64, 3)  # the x0 preview of the first face
            if step == 2:
                interrupt.request_interrupt()

        with pytest.raises(Interrupted):
            stages.run_irm64(handle, crops(2), seed=3, callback=cancel_at_step_2, **{**FAST, "steps": 10})
        assert len(calls) == 2  # stopped right after the step during which Cancel came
    finally:
        del handle.loaded.predict
    # the cached module is intact: the next run equals a run on a freshly loaded copy
    again = stages.run_irm64(handle, crops(2), seed=3, **FAST)
    model_cache.CACHE.clear()
    fresh = stages.run_irm64(load_cached(handle.loaded.path, "irm64.safetensors"), crops(2), seed=3, **FAST)
    assert torch.equal(again, fresh)


def test_an_interrupted_load_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    import comfy_diffbfr.models as models_pkg

    path = tiny_model(tmp_path / "m.safetensors", "tem", [], resolution=64)
    cache = model_cache.ModelCache()

    def interrupted_load(*args, **kwargs):
        raise Interrupted("cancelled by the user")

    monkeypatch.setattr(models_pkg, "load_model", interrupted_load)
    with pytest.raises(Interrupted):
        cache.get(path)
    assert len(cache) == 0
    monkeypatch.undo()
    loaded, _ = cache.get(path)
    assert len(cache) == 1 and cache.get(path)[0] is loaded


def test_nonfinite_half_precision_falls_back_to_float32(models, monkeypatch):
    handle = model_cache.ModelHandle(loaded=models["tem"].loaded, name="tem.safetensors", precision="bf16")
    original = handle.loaded.predict

    def overflow_in_bf16(x, t, cond=None):
        out = original(x, t, cond)
        return out * float("inf") if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(handle.loaded, "predict", overflow_in_bf16)
    out = stages.run_tem(handle, crops(1, 64), seed=0, strength=0.1, steps=2)
    assert torch.isfinite(out).all()
    reference = stages.run_tem(models["tem"], crops(1, 64), seed=0, strength=0.1, steps=2)
    assert torch.equal(out, reference)  # the float32 redo is the plain float32 result
