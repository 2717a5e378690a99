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


def _run(code: str, variable: str, value: str | None, **fixed: str) -> str:
    """The output of ``code`` run by a fresh interpreter with ``variable`` set to ``value``.

    ``fixed`` sets more variables whatever the caller's environment holds.
    """
    env = {k: v for k, v in os.environ.items() if k != variable}
    env.update(fixed)
    if value is not None:
        env[variable] = value
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _probe(env_value: str | None) -> str:
    return _run(_PROBE, "NUMPY_MADVISE_HUGEPAGE", env_value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux matter")
def test_import_turns_numpy_hugepage_advice_off_and_children_inherit_it() -> None:
    # numpy's own default on Linux >= 4.6 is True; bmkt turns it off for this
    # process and puts 0 in the environment for kernels and workers it starts.
    assert _probe(None) == "False 0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux matter")
def test_a_user_who_exports_the_setting_keeps_it() -> None:
    assert _probe("1") == "True 1"
    assert _probe("0") == "False 0"


# What keeping freed memory (opt-in) means for the next large array: a 400 MB
# array freed and allocated again costs (almost) no new page faults, and the
# memory goes back to the system on release_memory(); by default glibc unmaps
# the array when it is freed and the next one faults every page again.
_REUSE_PROBE = """
import os, resource, numpy as np, bmkt
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
n = 50_000_000  # 400 MB of float64: glibc's default serves it with mmap
start = rss()
a = np.ones(n); del a
kept = rss() - start
f0 = faults()
b = np.ones(n)
refaulted = (faults() - f0) * os.sysconf('SC_PAGE_SIZE') / b.nbytes
del b
before = rss()
released = bmkt.release_memory()
print(round(refaulted, 2), kept > 300e6, released, rss() < before - 300e6)
"""


def _reuse_probe(env_value: str | None) -> list[str]:
    # page faults count pages: a huge page would count as one fault for 512
    return _run(
        _REUSE_PROBE, "BMKT_KEEP_FREED_MEMORY", env_value, NUMPY_MADVISE_HUGEPAGE="0"
    ).split()


def _thp_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return "[always]" in fh.read()
    except OSError:
        return False


def _is_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # musl and others do not know the name
        return False


_GLIBC = _is_glibc() and not _thp_always()  # faults as pages need THP off or on request


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator settings, counted without huge pages")
def test_import_keeps_freed_memory_when_asked_until_released() -> None:
    refaulted, kept, released, given_back = _reuse_probe("1")
    assert float(refaulted) < 0.1  # the second array reuses the first one's pages
    assert (kept, released, given_back) == ("True", "True", "True")


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator settings, counted without huge pages")
@pytest.mark.parametrize("env_value", [None, "0"])
def test_by_default_glibc_keeps_its_own_behaviour(env_value: str | None) -> None:
    refaulted, kept, _, _ = _reuse_probe(env_value)
    assert float(refaulted) > 0.9  # every page of the second array is fresh
    assert kept == "False"  # the freed array went back to the system at once


def test_a_setting_that_is_not_understood_is_named_in_a_warning() -> None:
    code = "import warnings; warnings.simplefilter('error'); import bmkt"
    env = {**os.environ, "BMKT_KEEP_FREED_MEMORY": "maybe"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "BMKT_KEEP_FREED_MEMORY='maybe' is not understood" in done.stderr
    assert _run("import bmkt; print('ok')", "BMKT_KEEP_FREED_MEMORY", "off") == "ok"
