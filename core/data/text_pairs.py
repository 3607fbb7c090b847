"""Text pairs: a .jsonl file of (anchor, positive) strings, read, checked and split.

Each non-blank line is one JSON object with string fields ``anchor`` and
``positive`` and an optional ``label`` (a string or an integer, kept as a
string). The file is parsed with ``json.loads`` line by line (nothing is ever
evaluated or unpickled), and every problem is reported with its line number,
all of them in one error (up to ``MAX_REPORTED_LINES``), so a user can fix the file in one pass: invalid UTF-8 or JSON, a line that is not an
object, unknown or missing fields, empty or over-long texts, too many lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from embedmix.core.errors import DataError
from embedmix.core.spec import SplitSpec

SUFFIX = ".jsonl"
FIELDS = ("anchor", "positive")
OPTIONAL_FIELDS = ("label",)
MAX_TEXT_CHARS = 10_000
MAX_LINE_BYTES = 64 * 1024
MAX_PAIRS = 5_000_000
MIN_PAIRS = 4  # two to train on (a batch needs a negative), two to test on
MAX_REPORTED_LINES = 20  # bad lines named in one error, each with its number


@dataclass
class RawPairs:
    """The file's pairs in file order; ``labels[i]`` is None where line i had no label."""

    anchors: list[str]
    positives: list[str]
    labels: list[str | None]

    def __len__(self) -> int:
        return len(self.anchors)


@dataclass
class TextPairs:
    """Train and test pairs as the engine trains on them, plus what the model card records.

    It answers the questions the service asks of any dataset (``describe``,
    ``task``, ``input_shape``) the way text does: no class labels, each sample
    a single string (rank 0).
    """

    anchors_train: list[str]
    positives_train: list[str]
    anchors_test: list[str]
    positives_test: list[str]
    source: str
    labelled_rows: int = 0
    split: dict[str, Any] = field(default_factory=dict)

    task = None
    y_train = None
    y_test = None
    class_names = None
    num_classes = None
    input_shape: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What the model card and the job's timeline show about the data."""
        return {
            "source": self.source,
            "kind": "text_pairs",
            "task": None,
            "input_shape": [],
            "input_dtype": "string",
            "train_rows": len(self.anchors_train),
            "test_rows": len(self.anchors_test),
            "labelled_rows": self.labelled_rows,
            "num_classes": None,
            "class_names": None,
            "split": self.split,
        }


def iter_text_pairs(path: str | Path, max_pairs: int = MAX_PAIRS) -> Iterator[tuple[str, str, str | None]]:
    """(anchor, positive, label) line by line, checked; DataError at the end names every bad line (up to a cap)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    count, problems = 0, []
    with path.open("rb") as file:
        for number, line in enumerate(_bounded_lines(file), start=1):
            if not line.strip():
                continue
            if count == max_pairs:
                raise DataError(f"{path.name}: line {number}: more than {max_pairs} pairs")
            count += 1
            try:
                pair = _parse_line(line, f"line {number}")
            except DataError as exc:
                problems.append(str(exc))
                if len(problems) == MAX_REPORTED_LINES:
                    break
                continue
            yield pair
    if problems:
        raise DataError(_bad_lines_message(path.name, problems))


def _bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """The file's lines, each read to at most ``MAX_LINE_BYTES`` + 1 bytes: a line longer than that
    is passed on cut (and refused by ``_parse_line``), its rest skipped without being held in memory."""
    while line := file.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := file.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield line


def _bad_lines_message(name: str, problems: list[str]) -> str:
    """Every bad line at once (up to a cap), so a user fixes the file in one pass."""
    if len(problems) == 1:
        return f"{name}: {problems[0]}"
    more = f" (the first {MAX_REPORTED_LINES}; reading stopped there)" if len(problems) == MAX_REPORTED_LINES else ""
    return f"{name}: {len(problems)} bad lines{more}: " + "; ".join(problems)


def read_text_pairs(path: str | Path, max_pairs: int = MAX_PAIRS) -> RawPairs:
    """Every pair of a .jsonl file, checked line by line."""
    pairs = RawPairs([], [], [])
    for anchor, positive, label in iter_text_pairs(path, max_pairs):
        pairs.anchors.append(anchor)
        pairs.positives.append(positive)
        pairs.labels.append(label)
    _check_count(len(pairs), Path(path))
    return pairs


def count_text_pairs(path: str | Path, max_pairs: int = MAX_PAIRS) -> int:
    """Check every line as `read_text_pairs` does, keeping no text: how the API validates an upload
    in memory that does not grow with the file."""
    count = sum(1 for _ in iter_text_pairs(path, max_pairs))
    _check_count(count, Path(path))
    return count


def _check_count(count: int, path: Path) -> None:
    if count < MIN_PAIRS:
        raise DataError(f"{path.name}: {count} pairs; at least {MIN_PAIRS} are needed (some to train on, some to test)")


def _parse_line(line: bytes, where: str) -> tuple[str, str, str | None]:
    """One line's (anchor, positive, label), or DataError saying what is wrong with it."""
    if len(line) > MAX_LINE_BYTES:
        raise DataError(f"{where}: longer than {MAX_LINE_BYTES} bytes")
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'anchor' and 'positive', got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown fields {unknown[:5]}; allowed: {list(FIELDS + OPTIONAL_FIELDS)}")
    texts = [_text(record, name, where) for name in FIELDS]
    return texts[0], texts[1], _label(record.get("label"), where)


def _text(record: dict[str, Any], name: str, where: str) -> str:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: {name!r} is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(f"{where}: {name!r} has {len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def _label(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: 'label' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def split_pairs(raw: RawPairs, split: SplitSpec, seed: int, source: str) -> TextPairs:
    """A seeded random share of the pairs for testing (at least two, so retrieval has a distractor)."""
    if split.kind != "random":
        raise DataError(f"{source}: text pairs are split at random; dataset.split.kind {split.kind!r} does not apply")
    n = len(raw)
    n_test = min(n - 2, max(2, round(n * split.test_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    test, train = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    return TextPairs(
        anchors_train=[raw.anchors[i] for i in train],
        positives_train=[raw.positives[i] for i in train],
        anchors_test=[raw.anchors[i] for i in test],
        positives_test=[raw.positives[i] for i in test],
        source=source,
        labelled_rows=sum(label is not None for label in raw.labels),
        split={"kind": "random", "test_fraction": split.test_fraction, "seed": seed, "test_rows": n_test},
    )
