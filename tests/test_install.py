"""The library installs like a library: a non-editable install into a fresh environment, run from
another folder, restores with the starter weights (no checkout beside it).

The fresh environment reuses this one's packages (torch, ...) through a path file, so nothing is
downloaded: pip runs with ``--no-deps --no-build-isolation --no-index``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from pack_helpers import REPO

SKIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "*.egg-info", ".pytest_cache", "tests")


@pytest.mark.slow
def test_a_non_editable_install_restores_from_another_folder(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the build backend, from this environment (no download)
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=SKIPPED)  # a copy: the build writes its own files beside the sources
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(packages, "reused.pth"), "w") as fh:  # this environment's torch, numpy, ... (a plain
        fh.write(sysconfig.get_path("purelib") + "\n")  # path line: its editable-install hooks are not run)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "--quiet", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    shutil.rmtree(source)  # nothing may come from the sources any more

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(COMFY_DIFFBFR_MODELS=str(tmp_path / "no_models"), COMFY_DIFFBFR_PROGRESS="0", COMFY_DIFFBFR_OFFLINE="1")
    where = subprocess.run([python, "-c", "import comfy_diffbfr; print(comfy_diffbfr.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(env_dir)), where
    photo = next(REPO.glob("*/diffbfr_example.png"))
    run = subprocess.run([python, "-m", "comfy_diffbfr", "restore", str(photo), "-o", "out", "--steps", "1",
                          "--no-identity", "--json"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [s["model"] for s in report["stages"]] == ["irm64.safetensors", "irm256.safetensors", "tem.safetensors"]
    assert len(report["photos"][0]["faces"]) == 1 and (elsewhere / "out" / "diffbfr_example.png").is_file()
    script = subprocess.run([env_dir / "bin" / "comfy-diffbfr", "restore", "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "restore every face" in script.stdout, script.stderr
