"""Shared test fixtures. Data beside the checkout (`../shared`) is optional: tests that need it skip,
except under ``CI=true``, where they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


class _PackRootIsADirectory:
    """The checkout's root holds ComfyUI's entry point (``__init__.py``), not a test package: pytest
    would import it on its own, which fails where the folder's name is no Python identifier
    (``custom_nodes/comfy-diffbfr``). Tests import the pack where they need it (``pack_helpers``)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        return pytest.Dir.from_parent(parent, path=path) if path == REPO else None


def pytest_configure(config: pytest.Config) -> None:
    # registered as a plugin, not a conftest hook: the root is collected above this folder
    config.pluginmanager.register(_PackRootIsADirectory(), "diffbfr-pack-root")


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.is_dir():
        message = f"{path} is absent: these tests read the shared fixtures that sit beside the checkout"
        if os.environ.get("CI", "").lower() == "true":  # CI must run them: a missing folder is a failure
            pytest.fail(message + " (CI=true)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _shared("parity")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return _shared("faces")


@pytest.fixture
def one_thread():
    """Tiny networks and per-face ops: one thread avoids oversubscribing the shared CPU (and a
    second thread costs more than it gains there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_model_folders(tmp_path_factory, monkeypatch):
    """Never read or write the user's real model cache from a test."""
    monkeypatch.setenv("COMFY_DIFFBFR_MODELS", str(tmp_path_factory.getbasetemp() / "models"))


@pytest.fixture(autouse=True)
def _float32_cpu_auto(tmp_path_factory, monkeypatch):
    """Precision ``auto`` on the CPU is float32 in tests, as on a CPU without bf16 units: a measured
    choice would make results depend on the machine. ``tests/test_cpu_precision.py`` tests the
    choice itself. Its cache file never goes to the user's folder."""
    from comfy_diffbfr.host import cpu_precision

    monkeypatch.setenv("COMFY_DIFFBFR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setattr(cpu_precision, "CHOOSER", cpu_precision.CpuPrecisionChooser(has_units=lambda: False))


@pytest.fixture
def comfy_progress_bar(monkeypatch):
    """Installs a stand-in ``comfy.utils`` module (only that: the pack then reports progress as in
    ComfyUI); call it with the ``ProgressBar`` class to use."""
    import sys
    import types

    def install(progress_bar: type) -> None:
        utils = types.ModuleType("comfy.utils")
        utils.ProgressBar = progress_bar
        package = types.ModuleType("comfy")
        package.utils = utils
        monkeypatch.setitem(sys.modules, "comfy", package)
        monkeypatch.setitem(sys.modules, "comfy.utils", utils)

    return install
