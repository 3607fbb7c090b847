"""The formats of the service's public ids, written once.

An id is a prefix that says what it names (``job_``, ``ds_``, ``art_``,
``ckpt_``, ``swp_``) followed by :data:`ID_LENGTH` random alphanumerics, so ids cannot be
guessed or enumerated. The store mints them, the worker checks that a message
carries one, and the logs find job ids in their lines; all three use this module.
"""

from __future__ import annotations

import re
import secrets
import string

ID_LENGTH = 20
JOB_PREFIX = "job_"
DATASET_PREFIX = "ds_"
ARTIFACT_PREFIX = "art_"
CHECKPOINT_PREFIX = "ckpt_"
SWEEP_PREFIX = "swp_"

_ALPHABET = string.ascii_letters + string.digits
# A job id as a whole word: found inside a log line, or matched against a whole string.
JOB_ID = re.compile(rf"\b{JOB_PREFIX}[A-Za-z0-9]{{{ID_LENGTH}}}\b")


def new_id(prefix: str) -> str:
    """A prefixed random id: unguessable, and its prefix says what it names."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH))


def new_job_id() -> str:
    """A fresh job id (``job_`` + 20 alphanumerics)."""
    return new_id(JOB_PREFIX)


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a string in the job id format."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def find_job_id(text: str) -> str | None:
    """The first job id named in ``text`` (a log line), if any."""
    match = JOB_ID.search(text)
    return match.group(0) if match else None
