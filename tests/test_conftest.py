"""The test setup itself: missing shared data skips locally and fails on CI."""

from __future__ import annotations

import pytest

from conftest import _shared


def test_missing_shared_data_skips_locally_and_fails_on_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-folder is absent"):
        _shared("no-such-folder")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-folder is absent.*CI=true"):
        _shared("no-such-folder")
