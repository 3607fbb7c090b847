"""core.launch.exit_rank: a rank that has done its work leaves with its output flushed and
without the interpreter's teardown, where a gloo group's threads can abort it (SIGABRT)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import atexit, logging, sys
from embedmix.core.launch import exit_rank
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
atexit.register(lambda: print("teardown ran", flush=True))
print("written, not yet flushed", end="")
logging.getLogger("rank").info("logged")
exit_rank(7)
"""


def test_exit_rank_flushes_and_skips_the_teardown() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 7
    assert done.stdout == "written, not yet flushed"  # flushed, and the atexit handler never ran
    assert "logged" in done.stderr
