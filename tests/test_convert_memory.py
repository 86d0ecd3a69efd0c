"""The conversion-memory benchmark's meter: a forked child's shared pages count once (PSS), not twice (RSS)."""

from __future__ import annotations

import subprocess
import sys

import psutil

from cdx.benchmarks.convert_memory import _tree_memory_bytes

SHARED_MIB = 128
FORKING_PROCESS = f"""
import os, sys, time
shared = bytearray(b"\\x01" * ({SHARED_MIB} << 20))  # touched: resident in the parent, shared with the child
child = os.fork()
os.write(1, b"ready\\n")  # one write per process: lines never interleave
time.sleep(60)
"""


def test_tree_memory_counts_a_forked_childs_shared_pages_once() -> None:
    proc = subprocess.Popen([sys.executable, "-c", FORKING_PROCESS], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert [proc.stdout.readline().strip() for _ in range(2)] == ["ready", "ready"]
        parent = psutil.Process(proc.pid)
        assert len(parent.children()) == 1
        rss, pss = _tree_memory_bytes(parent)
        assert rss >= 2 * SHARED_MIB << 20  # both processes map the buffer
        assert rss - pss >= 0.9 * SHARED_MIB * 2**20  # PSS splits it between them: counted once
    finally:
        for child in psutil.Process(proc.pid).children():
            child.kill()
        proc.kill()
        proc.wait()
