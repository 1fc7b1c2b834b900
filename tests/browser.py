"""Headless Chromium for the tests that read a built page (the tour's report, the docs site).

Optional: without a working Chromium the browser tests skip, they never fail for its absence.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


@functools.cache
def chromium() -> str | None:
    """A headless Chromium that starts (a half-installed one skips the browser tests rather than failing them)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return None
    try:
        probe = subprocess.run([exe, *FLAGS, "--dump-dom", "about:blank"], capture_output=True, text=True, timeout=120)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return exe if probe.returncode == 0 and "<html" in probe.stdout else None


def headless(*args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with ``args``; skip the test when there is none."""
    exe = chromium()
    if exe is None:
        pytest.skip("no working headless Chromium (Debian: apt-get install chromium)")
    # --disable-dev-shm-usage: containers give /dev/shm 64 MB, too little for a page of inlined pictures.
    command = [exe, *FLAGS, "--hide-scrollbars", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("headless Chromium did not finish within 180 s")
    assert proc.returncode == 0, f"Chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc
