"""The allocator tuning is applied once and can be switched off by the environment."""

import os
import subprocess
import sys

import pytest


def _run(env_extra: dict) -> str:
    code = "from ipi_ncforces.ipi_driver.allocator import keep_freed_memory as k; print(k(), k())"
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuning_applies_on_linux_glibc():
    assert _run({"IPI_NC_NO_MALLOC_TUNING": "0"}).split() == ["True", "True"]


def test_tuning_can_be_disabled():
    assert _run({"IPI_NC_NO_MALLOC_TUNING": "1"}).split() == ["False", "False"]
