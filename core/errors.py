"""The engine's errors, each with the failure code a job records when it ends with it.

A caller that turns an exception into a job's ``error.code`` asks
``failure_code``; the codes are written here once, so the worker, the CLI and
the API agree on them. Anything that is not one of these errors is the
service's fault and reads as ``internal_error``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

INTERNAL_ERROR = "internal_error"
OUT_OF_MEMORY = "out_of_memory"


class EngineError(Exception):
    """Base of the errors a user can act on; ``code`` is what the job records."""

    code: ClassVar[str]


class SpecError(EngineError, ValueError):
    """A spec that cannot run; `errors` is a list of {"field", "message"}, the field as a dotted path."""

    code = "invalid_spec"

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class DataError(EngineError, ValueError):
    """Data that cannot be trained on; the message says what is wrong and where."""

    code = "invalid_data"


class UnsupportedSpec(EngineError, ValueError):
    """A valid spec that this engine or machine cannot run (the message says which field)."""

    code = "unsupported"


class Diverged(EngineError, FloatingPointError):
    """The loss stopped being a finite number."""

    code = "diverged"


def failure_code(exc: BaseException) -> str:
    """The code a job that ended with ``exc`` records."""
    if isinstance(exc, EngineError):
        return exc.code
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or _cpu_allocation_failed(exc):
        return OUT_OF_MEMORY
    return INTERNAL_ERROR



def _cpu_allocation_failed(exc: BaseException) -> bool:
    """Torch's CPU allocator reports a refused allocation as a plain RuntimeError (errno 12)."""
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
