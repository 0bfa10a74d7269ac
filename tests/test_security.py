"""Untrusted or broken model files must be refused with a clear CheckpointError, never executed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.models import load_model


class _WritesMarker:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _malicious_pth(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}, "payload": _WritesMarker(marker)}, path)
    return path


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker_loader"
    path = _malicious_pth(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert "evil.pth" in message and "not executed" in message and "safetensors" in message
    assert not marker.exists()


def test_the_malicious_payload_is_live(tmp_path):
    """Guards the test above: an unsafe load of the same kind of file does create its marker."""
    marker = tmp_path / "marker_unsafe"
    path = _malicious_pth(tmp_path / "evil.pth", marker)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    assert marker.read_text() == "pwned"


def _small_safetensors(path: Path) -> Path:
    save_file({"time_embed.0.weight": torch.randn(64, 16), "out.2.weight": torch.randn(3, 16, 3, 3)}, str(path))
    return path


def test_truncated_safetensors(tmp_path):
    path = _small_safetensors(tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*(truncated|corrupt)"):
        load_model(path)


def test_truncated_pth(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"a.weight": torch.randn(256, 256)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupt)"):
        load_model(path)


@pytest.mark.parametrize("name", ["noise.safetensors", "noise.pth", "noise.ckpt"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(path)


@pytest.mark.parametrize("content", [b"hello\n", b"t"])  # KeyError 101, IndexError (pop from empty list)
def test_text_or_broken_legacy_pickle_is_a_checkpoint_error(tmp_path, content):
    """Bytes the legacy (non-zip) torch reader fails on with KeyError/IndexError."""
    path = tmp_path / "text.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"text\.ckpt"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_diffusion_state_dict_lists_keys(tmp_path, suffix):
    classifier = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path / f"classifier{suffix}"
    if suffix == ".pth":
        torch.save(classifier.state_dict(), path)
    else:
        save_file(classifier.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="not a diffusion checkpoint") as err:
        load_model(path)
    assert "0.weight [16, 8]" in str(err.value) and path.name in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.touch()
    with pytest.raises(CheckpointError, match=r"empty\.safetensors is empty"):
        load_model(path)


def test_folder_without_config(tmp_path):
    folder = tmp_path / "not_diffusers"
    folder.mkdir()
    _small_safetensors(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(folder)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth")
    odd = tmp_path / "model.onnx"
    odd.write_bytes(b"\x08\x01")
    with pytest.raises(CheckpointError, match=r"unknown model file type '\.onnx'"):
        load_model(odd)


def test_pickle_without_tensors(tmp_path):
    path = tmp_path / "settings.pt"
    torch.save({"lr": 1e-4, "epochs": [1, 2]}, path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_model(path)


def test_model_names_from_workflows_stay_inside_the_model_folders(tmp_path):
    from comfy_diffbfr.host import folders

    root = folders.model_dirs("diffbfr")[0]
    root.mkdir(parents=True, exist_ok=True)
    (root / "ok.safetensors").write_bytes(b"x")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    (root / "link.safetensors").unlink(missing_ok=True)
    (root / "link.safetensors").symlink_to(outside)
    assert folders.resolve_model("diffbfr", "ok.safetensors") == (root / "ok.safetensors").resolve()
    for name in (str(outside), "../outside.safetensors", "sub/../../outside.safetensors"):
        with pytest.raises(CheckpointError, match="must be a path inside the diffbfr model folders"):
            folders.resolve_model("diffbfr", name)
    # a link the user put into the folder is followed wherever it points, as it is listed
    assert "link.safetensors" in folders.list_models("diffbfr")
    assert folders.resolve_model("diffbfr", "link.safetensors") == outside.resolve()
