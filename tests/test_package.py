"""Importing bmkt: process-wide settings it makes, and that the user can override."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = (
    "import os, bmkt\n"
    "from numpy._core import multiarray\n"
    "print(multiarray._get_madvise_hugepage(), os.environ['NUMPY_MADVISE_HUGEPAGE'])\n"
)


def _probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env_value is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = env_value
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux matter")
def test_import_turns_numpy_hugepage_advice_off_and_children_inherit_it() -> None:
    # numpy's own default on Linux >= 4.6 is True; bmkt turns it off for this
    # process and puts 0 in the environment for kernels and workers it starts.
    assert _probe(None) == "False 0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux matter")
def test_a_user_who_exports_the_setting_keeps_it() -> None:
    assert _probe("1") == "True 1"
    assert _probe("0") == "False 0"
