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


class _RowByRow:
    """The model with every network call made one face at a time: the network's own kernels then
    give the same bits at any batch size, so what remains is the stage's own batching."""

    def __init__(self, loaded, fail_above: int | None = None, error=torch.OutOfMemoryError) -> None:
        self._loaded, self.fail_above, self.error, self.batches = loaded, fail_above, error, []

    def __getattr__(self, name):
        return getattr(self._loaded, name)

    def predict(self, x, tau, cond=None):
        self.batches.append(x.shape[0])
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise self.error("CUDA out of memory" if self.error is torch.OutOfMemoryError
                             else "DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB")
        rows = [self._loaded.predict(x[i:i + 1], tau[i:i + 1], None if cond is None else cond[i:i + 1])
                for i in range(x.shape[0])]
        return torch.cat(rows)


def _row_by_row(handle, **kwargs):
    return model_cache.ModelHandle(loaded=_RowByRow(handle.loaded, **kwargs), name=handle.name)


def test_a_faces_result_does_not_depend_on_the_batching(models):
    """Batch sizes 1 and N give bit-identical results: the seeds are per face of the run."""
    lq = crops(5)
    settings = dict(FAST, seed=7, fidelity=16)
    handle = _row_by_row(models["irm64"])
    whole = stages.run_irm64(handle, lq, max_batch=5, **settings)
    assert handle.loaded.batches[-1] == 5
    for batch in (1, 2, 3):
        assert torch.equal(stages.run_irm64(handle, lq, max_batch=batch, **settings), whole), batch
    tail = stages.run_irm64(handle, lq[2:], first_face=2, **settings)  # faces 2.. of the same run
    assert torch.equal(tail, whole[2:])
    tem = _row_by_row(models["tem"])
    polished = stages.run_tem(tem, whole, reference=lq, max_batch=5, seed=1, strength=0.2, steps=2, fidelity=8)
    assert torch.equal(stages.run_tem(tem, whole, reference=lq, max_batch=1, seed=1, strength=0.2, steps=2, fidelity=8),
                       polished)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError], ids=["cuda", "cpu"])
def test_out_of_memory_retries_with_smaller_batches(models, error):
    lq = crops(5)
    reference = stages.run_irm64(_row_by_row(models["irm64"]), lq, seed=2, max_batch=1, **FAST)
    handle = _row_by_row(models["irm64"], fail_above=2, error=error)
    out = stages.run_irm64(handle, lq, seed=2, max_batch=8, **FAST)
    assert torch.equal(out, reference)
    assert handle.loaded.batches[0] == 5 and max(handle.loaded.batches[1:]) == 2  # 5 failed, then 2, 2, 1
    from comfy_diffbfr.errors import NotEnoughMemoryError

    with pytest.raises(NotEnoughMemoryError, match="one face does not fit.*--precision"):
        stages.run_irm64(_row_by_row(models["irm64"], fail_above=0, error=error), lq[:2], seed=2, **FAST)
    with pytest.raises(RuntimeError, match="something else"):  # other errors are not retried
        stages.run_irm64(_row_by_row(models["irm64"], fail_above=0, error=lambda _: RuntimeError("something else")),
                         lq[:2], seed=2, **FAST)


def test_batch_size_follows_the_free_memory(models, monkeypatch):
    net = models["irm256"].net  # first feature map: 8 channels
    per_face = stages.ACTIVATION_MAPS * 8 * 256 * 256 * 4
    gpu = torch.device("cuda")  # only its free memory is asked, and that is patched
    monkeypatch.setattr(stages, "free_memory", lambda device: 2 * 3 * per_face)
    assert stages.batch_size(net, (256, 256), torch.float32, gpu) == 3
    assert stages.batch_size(net, (256, 256), torch.bfloat16, gpu) == 6  # half the bytes
    monkeypatch.setattr(stages, "free_memory", lambda device: 0)
    assert stages.batch_size(net, (256, 256), torch.float32, gpu) == 1
    monkeypatch.setattr(stages, "free_memory", lambda device: 1 << 50)
    assert stages.batch_size(net, (256, 256), torch.float32, gpu) == stages.MAX_BATCH


@pytest.mark.parametrize("threads, size, expected", [(2, 256, 2), (1, 256, 1), (4, 256, 4), (2, 64, 16), (2, 512, 1), (8, 512, 2)])
def test_cpu_batches_hold_at_most_a_few_pixels_per_thread(models, monkeypatch, threads, size, expected):
    monkeypatch.setattr(stages, "free_memory", lambda device: 1 << 50)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert stages.batch_size(models["irm256"].net, (size, size), torch.float32, torch.device("cpu")) == expected
