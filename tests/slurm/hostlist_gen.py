"""Random Slurm hostlist expressions for the differential test against ``scontrol``.

Kept apart from the test so the grammar it covers is easy to read: prefixes with letters,
dots and dashes, up to four bracket groups (text between them), ranges whose low and high
bounds carry their own zero padding, single numbers, plain names with numeric suffixes,
and commas or spaces between tokens.
"""

from __future__ import annotations

import random
from typing import List

_TEXT_CHARS = "abcnrx.-"
_FIRST_CHARS = "abcnrx"


def _number(rng: random.Random, value: int) -> str:
    return "0" * rng.choice([0, 0, 0, 1, 2]) + str(value)


def _item(rng: random.Random) -> str:
    low = rng.choice([0, 1, 2, 7, 8, 9, 10, 98, 99, 100, rng.randint(0, 120)])
    if rng.random() < 0.35:
        return _number(rng, low)
    high = low + rng.choice([0, 1, 2, 3, 5, 12])
    return f"{_number(rng, low)}-{_number(rng, high)}"


def _text(rng: random.Random, allow_empty: bool, first: bool = False) -> str:
    """Text around brackets; a token never starts with '-' (scontrol would take an option)."""
    length = rng.randint(0 if allow_empty else 1, 3)
    chars = [rng.choice(_TEXT_CHARS) for _ in range(length)]
    if first and chars:
        chars[0] = rng.choice(_FIRST_CHARS)
    return "".join(chars)


def _token(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return _text(rng, allow_empty=False, first=True) + _number(rng, rng.randint(0, 300))
    groups = rng.choice([1, 1, 1, 2, 2, 3, 4])
    parts: List[str] = []
    for index in range(groups):
        parts.append(_text(rng, allow_empty=index > 0 or rng.random() < 0.2, first=index == 0))
        width = 1 if groups > 2 else rng.randint(1, 3)
        parts.append("[" + ",".join(_item(rng) for _ in range(width)) + "]")
    return "".join(parts)


def valid_expression(rng: random.Random) -> str:
    tokens = [_token(rng) for _ in range(rng.randint(1, 3))]
    return "".join(tok + rng.choice([",", ",", " "]) for tok in tokens).rstrip(", ")


def invalid_expression(rng: random.Random) -> str:
    """Expressions both Slurm and hpclaunch must refuse."""
    base = _token(rng)
    broken = rng.choice(
        [
            base + "[3-1]",
            base + "[]",
            base + "[1x2]",
            base + "[-1]",
            base + "[a-b]",
            base + "[1-2-3]",
            base.rstrip("]") + "],x" if base.endswith("]") else base + "[1-2]y",
            "n[1-2]" + _text(rng, allow_empty=False, first=True),
            "n[1,]",
            "n[,1]",
            "n[1-65537]",
        ]
    )
    return broken
