"""`inspect` names the public checkpoints from their key layouts alone and reports their full config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_diffbfr.cli import main
from comfy_diffbfr.errors import CheckpointError
from comfy_diffbfr.commands.inspect import format_report, inspect_state_dict, parse_hints
from comfy_diffbfr.models.checkpoint_io import unwrap
from comfy_diffbfr.models.loader import format_specs
from comfy_diffbfr.models.signatures import public_checkpoints
from comfy_diffbfr.networks.adm_unet import ADMUNet, adm_config

REPO = Path(__file__).resolve().parents[1]


def _signatures(parity_dir: Path) -> list[dict]:
    files = sorted((parity_dir / "public_signatures").glob("*.json"))
    assert files, "public_signatures/ holds no signature files"
    return [json.loads(f.read_text()) for f in files]


def _meta(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def _layouts(sig: dict) -> list[tuple[dict[str, torch.Tensor], dict]]:
    """(meta state dict, hints the file itself would give) per stored key layout of a signature."""
    # A diffusers folder comes with config.json; other files bring nothing but their weights.
    hints = {k: v for k, v in sig.get("config", {}).items() if not k.startswith("_")} if "scheduler" in sig else {}
    return [(_meta(sig[name]), hints) for name in ("keys", "keys_legacy_attention_names") if name in sig]


def _expected_structure(sig: dict) -> dict:
    """Config facts of the published constructor call, in our config's names."""
    if "yaml" in sig:  # ermongroup/ddim Model
        model = sig["yaml"]["model"]
        return {"base_channels": model["ch"], "block_out_channels": [model["ch"] * m for m in model["ch_mult"]],
                "layers_per_block": model["num_res_blocks"]}
    if "config" in sig:  # diffusers UNet2DModel
        config = sig["config"]
        return {key: config[key] for key in ("block_out_channels", "layers_per_block", "norm_num_groups")}
    kwargs = sig.get("constructor_kwargs") or sig["constructor_kwargs_script_util"]
    if "inner_channel" in kwargs:  # SR3
        return {"inner_channel": kwargs["inner_channel"], "channel_mults": kwargs["channel_multiplier"],
                "res_blocks": kwargs["res_blocks"], "norm_groups": kwargs["norm_groups"]}
    nrb = kwargs["num_res_blocks"]
    return {"model_channels": kwargs.get("model_channels", kwargs.get("num_channels")),
            "num_res_blocks": nrb if isinstance(nrb, list) else None, "learn_sigma": True,
            "num_head_channels": kwargs["num_head_channels"]}


def test_every_public_signature_is_recognised_with_its_config(parity_dir):
    known = {name for c in public_checkpoints() for name in c.names}
    for sig in _signatures(parity_dir):
        assert sig["name"] in known, f"{sig['name']} is missing from public_checkpoints.json"
        for state_dict, hints in _layouts(sig):
            report = inspect_state_dict(state_dict, hints, name=sig["file"])
            assert sig["name"] in report["public_checkpoint"].split(" or ")
            assert report["num_params"] == sig["num_params"] - sum(
                t.numel() for k, t in state_dict.items() if "." not in k)  # SR3's schedule buffers are not the net's
            for key, value in _expected_structure(sig).items():
                assert value is None or report["config"][key] == value, (sig["name"], key)
            _assert_config_fits(report, state_dict)


def _assert_config_fits(report: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """The reported config builds a network whose keys and shapes are the checkpoint's."""
    spec = format_specs()[report["format"]]
    with torch.device("meta"):
        net = spec.build(report["config"])
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    prepared = spec.prepare_state_dict(unwrap(state_dict, Path("meta"))[0])
    assert own == {k: tuple(v.shape) for k, v in prepared.items()}


def test_recognition_supplies_what_weights_cannot_say(parity_dir):
    sigs = {s["name"]: s for s in _signatures(parity_dir)}
    sr3 = inspect_state_dict(_meta(sigs["sr3_64_512"]["keys"]))
    assert sr3["config"]["norm_groups"] == 16  # the weights alone would suggest 32... or any divisor
    assert sr3["config"]["image_size"] == 512
    assert (sr3["role"], sr3["conditions"], sr3["resolution"]) == ("irm256", ["lq"], 512)
    assert (sr3["schedule"]["name"], sr3["schedule"]["num_timesteps"]) == ("linear_range", 2000)
    assert sr3["schedule"]["args"] == {"start": 1e-6, "end": 0.01}
    difface = inspect_state_dict(_meta(sigs["difface_iddpm_ffhq512"]["keys"]))
    assert difface["config"]["num_head_channels"] == 64 and difface["config"]["num_res_blocks"] == [1, 2, 2, 2, 2, 3, 4]
    assert (difface["role"], difface["conditions"], difface["diffusion"]["learned_sigma"]) == ("tem", [], True)
    dps = inspect_state_dict(_meta(sigs["dps_ffhq_10m"]["keys"]))
    assert dps["public_checkpoint"] == "dps_ffhq_10m or p2_ffhq_p2"  # one layout, two releases


def test_user_hints_override_recognition(parity_dir):
    sigs = {s["name"]: s for s in _signatures(parity_dir)}
    keys = _meta(sigs["sr3_64_512"]["keys"])
    report = inspect_state_dict(keys, {"norm_groups": 32, "num_timesteps": 1000, "noise_schedule": "linear"})
    assert report["config"]["norm_groups"] == 32 and report["schedule"]["num_timesteps"] == 1000
    assert report["public_checkpoint"] == "sr3_64_512"
    with pytest.raises(CheckpointError, match="contradicts"):
        inspect_state_dict(_meta(sigs["dps_ffhq_10m"]["keys"]), {"channel_mult": [1, 2, 4]})


def _tiny_adm_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = ADMUNet.from_config(adm_config(model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
                                         attention_levels=[False, True], num_head_channels=16))
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_cli_json_and_text(tmp_path, capsys):
    path = _tiny_adm_file(tmp_path)
    assert main(["inspect", str(path), "--hint", "num_head_channels=16", "--hint", "num_timesteps=500", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["public_checkpoint"], report["role"]) == ("adm", None, "tem")
    assert report["config"]["channel_mult"] == [1, 2] and report["config"]["num_head_channels"] == 16
    assert report["schedule"]["num_timesteps"] == 500
    assert report["wrapping"] == ["took the 'state_dict' entry of a wrapper dict", "stripped key prefix 'module.'"]
    text = format_report(report)
    assert "public checkpoint: not recognised" in text and "serves stage:      tem" in text
    assert '  channel_mult: [1, 2]' in text


def test_cli_errors_without_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.pth")]) == 2
    assert "error: model file not found" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="KEY=VALUE"):
        parse_hints(["num_heads"])
    assert parse_hints(["a=4", "b=true", "c=[16, 8]", "d=linear"]) == {"a": 4, "b": True, "c": [16, 8], "d": "linear"}


def test_python_dash_m_inspect(tmp_path):
    path = _tiny_adm_file(tmp_path)
    done = subprocess.run([sys.executable, "-m", "comfy_diffbfr", "inspect", str(path), "--hint", "num_head_channels=16"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "format:            adm" in done.stdout and "parameters:" in done.stdout


def test_the_entry_point_imports_with_the_collector_off_and_leaves_it_on(tmp_path):
    """``cli.entry`` (``python -m``, the console script) freezes what the command's imports made, so
    the collector neither scans torch's objects while they are made nor at exit, and it is on again
    for the command itself."""
    path = _tiny_adm_file(tmp_path)
    script = ("import gc, sys; from comfy_diffbfr import cli; "
              f"sys.argv = ['comfy-diffbfr', 'inspect', {str(path)!r}, '--hint', 'num_head_channels=16']; "
              "status = cli.entry(); print('RESULT', status, gc.isenabled(), gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    status, enabled, frozen = done.stdout.split("RESULT ")[1].split()
    assert (status, enabled) == ("0", "True") and int(frozen) > 100_000, done.stderr


def test_closed_stdout_pipe_stops_quietly(tmp_path):
    """`inspect ... | head`: the reader goes away before the report is written; no traceback."""
    path = _tiny_adm_file(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "comfy_diffbfr", "inspect", "--json", str(path), "--hint", "num_head_channels=16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 141 and stderr == ""


def test_manifest_agrees_with_the_recognition_table():
    manifest = json.loads((REPO / "weights" / "manifest.json").read_text())["checkpoints"]
    by_name = {c: entry for entry in public_checkpoints() for c in entry.names}
    assert sorted(m["name"] for m in manifest) == sorted(by_name)
    for m in manifest:
        entry = by_name[m["name"]]
        assert (m["format"], m["stage"]) == (entry.format, entry.role), m["name"]
        assert m["file"] and m["repo"] and m["licence"] and "sha256" in m
