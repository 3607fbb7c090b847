"""A job's memory ceiling: the worker refuses a job's allocations beyond what it declares it has.

Admission (``api.jobs``) refuses a spec whose estimated peak is over
``worker_memory_bytes``; this is the check for an estimate that was wrong. The
ceiling is ``RLIMIT_DATA`` (private writable memory: heap, anonymous maps,
what torch's and numpy's allocators take), set to what the process uses when
the job starts plus the budget. Past it an allocation fails inside the job,
as ``MemoryError`` or torch's "can't allocate memory" (both read as
``out_of_memory``), so the job fails with a code and a figure, the worker
lives on, and the message is not re-delivered as if the worker had vanished.
``RLIMIT_AS`` would count address space that torch's threads reserve and never
use, and the kernel's OOM killer would take the whole process (and, on the
embedded default, the machine's other services) with the job.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def data_bytes() -> int:
    """This process's private writable memory now (``VmData``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmData line")


@contextmanager
def memory_ceiling(budget_bytes: int) -> Iterator[None]:
    """Allow the code inside ``budget_bytes`` more private memory than the process has now.

    The previous limit comes back on the way out, also when the job ran out:
    recording its failure must not fail for want of memory.
    """
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    hard = previous[1]
    ceiling = data_bytes() + budget_bytes
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)

