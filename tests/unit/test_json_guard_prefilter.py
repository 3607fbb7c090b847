"""The JSON body guard's fast pre-check (``api.limits._may_be_refused``) never lets through
what the exact token-by-token scan (``_first_problem``) refuses, and ``json_problem`` answers
what that scan answers: the same code and message, the first problem in the body.

Bodies: the shapes routes get (an embed request of floats, strings, specs), the tricky
cases (brackets and escapes inside strings, escaped backslashes, unterminated strings,
valid and lone surrogates, nesting at and past the limit), and many random strings over
the bytes that matter to either check, derandomised so a failure reproduces.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedmix.api.limits import _first_problem, _may_be_refused, json_problem

LIMIT = 4


def answer(body: bytes, depth: int) -> tuple[str, str] | None:
    error = json_problem(body, depth)
    return None if error is None else (error.code, error.message)


def exact(body: bytes, depth: int) -> tuple[str, str] | None:
    error = _first_problem(body, depth)
    return None if error is None else (error.code, error.message)


CASES = [
    json.dumps({"inputs": np.random.default_rng(0).normal(size=(64, 8)).tolist()}).encode(),
    json.dumps({"inputs": ["Grëta likes sushi — a lot", "a [bracket] and {brace}", 'a "quote"']}).encode(),
    json.dumps({"a": {"b": {"c": {"d": 1}}}}).encode(),  # at the limit
    json.dumps({"a": {"b": {"c": {"d": {"e": 1}}}}}).encode(),  # past it
    b'{"name": "[[[[[[[[[[[[["}',  # brackets inside a string are text
    b'{"name": "\\"[[[[[[[[[[["}',  # after an escaped quote, still inside the string
    b'{"name": "\\\\"[[[[[[[[[[["}',  # an escaped backslash ends the string before the brackets
    b'{"name": "bo\\u0000b"}',
    b'{"name": "bo\\\\u0000b"}',  # the text \u0000, not a NUL
    b'{"name": "\\ud83d\\ude00"}',  # a valid surrogate pair
    b'{"name": "a\\ud800"}',
    b'{"name": "\\udc00b"}',
    b'{"name": "\\uD800\\u0041"}',
    b'{"name": "unterminated [[[[[[[[',
    b'[[[[[ "\\u0000" ]]]]]',  # both: the depth comes first
    b'[ "\\u0000" [[[[[ ]]]]]]',  # both: the escape comes first
    b"]]]][[[[[[",  # malformed: left to the parser once the depth is under the limit
    b"",
    b"[" * 50_000 + b"]" * 50_000,
]


@pytest.mark.parametrize("body", CASES)
def test_the_pre_check_and_the_answer_agree_with_the_exact_scan(body: bytes) -> None:
    found = exact(body, LIMIT)
    assert found is None or _may_be_refused(body, LIMIT)
    assert answer(body, LIMIT) == found


def test_an_embed_request_of_numbers_skips_the_exact_scan() -> None:
    body = json.dumps({"inputs": np.random.default_rng(1).normal(size=(256, 40)).tolist()}).encode()
    assert not _may_be_refused(body, 32)
    assert json_problem(body, 32) is None


@settings(max_examples=600, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"u", b"0000", b"d800", b"DC00",
                                 b"d83d", b"\\\\", b"1", b",", b" "]), max_size=40),
       st.integers(min_value=1, max_value=6))
def test_random_bodies(pieces: list[bytes], depth: int) -> None:
    body = b"".join(pieces)
    found = exact(body, depth)
    assert found is None or _may_be_refused(body, depth)
    assert answer(body, depth) == found
