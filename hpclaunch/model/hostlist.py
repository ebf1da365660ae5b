"""Slurm hostlist expressions and compressed counts, expanded exactly as Slurm 22.05 does.

Written from the observed behaviour of ``scontrol show hostnames`` (the tests compare with it
on hundreds of generated expressions), not copied from Slurm or python-hostlist. What matters
for a launcher, and what a naive expander gets wrong:

* order is kept and duplicates are kept (``n[1-2],n1`` -> n1 n2 n1): the order *is* the
  node order, and a silent de-duplication would shift every later node's rank;
* zero padding comes from the *low* bound's digit count (``n[01-2]`` -> n01 n02,
  ``n[8-12]`` -> n8 ... n12, ``n[1-003]`` -> n1 n2 n3);
* several bracket groups are not a plain product: the last group varies fastest, then the
  first, the second, ... (``a[0-1]b[0-1]c[0-1]`` -> a0b0c0 a0b0c1 a1b0c0 a1b0c1 a0b1c0 ...),
  because Slurm peels the last group off and expands the rest as a prefix, left to right;
* text after the last bracket group is rejected (``n[1-2]x``), text between groups is fine.

Where Slurm is lax in ways no Slurm-generated variable ever uses (unbalanced brackets, signs or
spaces inside brackets, a stray ``]``) this module refuses with :class:`HostlistError`, which
keeps the offending part so the message can point at it. Numbers beyond 64 bits, which Slurm
clamps to 18446744073709551615, are kept as written.

Expansion is linear in the output and done by C-level regex passes and ``map``s: a
100,000-node fragmented list takes tens of milliseconds (benchmarks/run.py measures it).
"""

from __future__ import annotations

import itertools
import re
from typing import Iterable, Iterator, List, Sequence, Tuple

from hpclaunch.errors import HostlistError

#: Slurm refuses one range of more than 64Ki hosts (``n[1-65537]`` is "Too many hosts").
MAX_RANGE = 64 * 1024

#: A whole expression may not expand past this: a typo like ``a[1-60000]b[1-60000]`` must
#: fail fast instead of building 3.6 billion strings. Far above any real cluster.
MAX_HOSTS = 1 << 20

# Patterns are kept as strings: ``re`` compiles and caches them on first use, so the many
# starts that import this module (the Slurm adapter's detection) and expand nothing do not
# pay for compiling them.

#: Separators between hostlist tokens outside brackets, as in Slurm.
_SEPARATORS = frozenset(",\t ")

_COUNT_ITEM = r"([0-9]+)(?:\(x([0-9]+)\))?"

#: One numeric range inside brackets: ``7``, ``01-10``, or ``3-`` (Slurm reads it as ``3``).
#: ASCII digits only: ``\d`` would take other scripts' digits, which Slurm refuses.
_RANGE_ITEM = r"([0-9]+)(?:-([0-9]*))?"
_RANGE_LIST = r"[0-9]+(?:-[0-9]*)?(?:,[0-9]+(?:-[0-9]*)?)*"

_Range = Tuple[int, int, int]  # low, high, zero-padding width


def expand_hostlist(expression: str) -> List[str]:
    """Every host name of a Slurm hostlist, in Slurm's order, duplicates kept.

    An empty or blank expression gives an empty list; callers decide whether that is an error.
    """
    total = 0
    tokens = []
    for token in _tokens(expression):
        texts, groups = _split_token(token)
        count = 1
        for group in groups:
            count *= sum(high - low + 1 for low, high, _ in group)
        total += count
        if total > MAX_HOSTS:
            raise HostlistError(
                f"hostlist {_short(expression)!r} expands to more than {MAX_HOSTS} hosts: "
                "check the ranges",
                token,
            )
        tokens.append((texts, groups))
    hosts: List[str] = []
    for texts, groups in tokens:
        hosts.extend(_expand_token(texts, groups))
    return hosts


def parse_counts(expression: str) -> List[int]:
    """Expand Slurm's compressed per-node counts: ``2(x3),1`` -> [2, 2, 2, 1].

    This is the format of ``SLURM_TASKS_PER_NODE``, ``SLURM_STEP_TASKS_PER_NODE`` and
    ``SLURM_JOB_CPUS_PER_NODE``: one entry per node of the matching node list, in its order.
    """
    text = expression.strip()
    if not text:
        raise HostlistError("empty per-node count list: expected e.g. '2(x3),1'", expression)
    counts: List[int] = []
    for item in text.split(","):
        match = re.fullmatch(_COUNT_ITEM, item.strip())
        if match is None:
            raise HostlistError(
                f"bad per-node count {item!r} in {_short(expression)!r}: expected N or N(xM)",
                item,
            )
        repeat = int(match.group(2)) if match.group(2) is not None else 1
        if repeat < 1 or len(counts) + repeat > MAX_HOSTS:
            raise HostlistError(
                f"bad repeat in per-node count {item!r}: expected 1..{MAX_HOSTS} nodes", item
            )
        counts.extend([int(match.group(1))] * repeat)
    return counts


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: A well-formed expression: brackets pair up and never nest. Unambiguous (every part is
#: delimited by a bracket), so it runs in linear time even when it fails.
_WELL_FORMED = r"[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*"

#: One host token: a run of characters that are not separators, and whole bracket groups.
_TOKEN = r"(?:[^\[\],\t ]|\[[^\[\]]*\])+"


def _tokens(expression: str) -> Iterable[str]:
    """Split at separators outside brackets; brackets must pair up and not nest.

    Two C-level regex passes over the whole expression. A malformed one goes through the
    character scan below instead, lazily as before, so its error names the same part.
    """
    if re.fullmatch(_WELL_FORMED, expression) is None:
        return _scan_tokens(expression)
    return re.findall(_TOKEN, expression)


def _scan_tokens(expression: str) -> Iterator[str]:
    """The per-character tokenizer, kept to say where a malformed expression goes wrong."""
    start = 0
    depth = 0
    for index, char in enumerate(expression):
        if char == "[":
            if depth:
                raise HostlistError(
                    f"nested '[' in hostlist {_short(expression)!r}",
                    expression[start : index + 1],
                )
            depth = 1
        elif char == "]":
            if not depth:
                raise HostlistError(
                    f"']' without '[' in hostlist {_short(expression)!r}",
                    expression[start : index + 1],
                )
            depth = 0
        elif char in _SEPARATORS and not depth:
            if index > start:
                yield expression[start:index]
            start = index + 1
    if depth:
        raise HostlistError(
            f"unclosed '[' in hostlist {_short(expression)!r}", expression[start:]
        )
    if len(expression) > start:
        yield expression[start:]


def _split_token(token: str) -> Tuple[List[str], List[List[_Range]]]:
    """``a[1-2]b[3]`` -> texts ['a', 'b'], groups [[(1, 2, 1)], [(3, 3, 1)]].

    Text before each group is kept; text after the last group is refused, as Slurm does.
    """
    texts: List[str] = []
    groups: List[List[_Range]] = []
    rest = token
    while "[" in rest:
        text, _, rest = rest.partition("[")
        inside, _, rest = rest.partition("]")
        texts.append(text)
        groups.append(_parse_ranges(inside, token))
    if groups and rest:
        raise HostlistError(
            f"text {rest!r} after the last ']' in host {token!r}: Slurm allows text only "
            "before and between bracket groups",
            token,
        )
    if not groups:
        texts.append(rest)
    return texts, groups


def _parse_ranges(inside: str, token: str) -> List[_Range]:
    """The ranges of one bracket group: one regex pass over the whole group, then the
    per-item checks; the per-item parse below runs only to name a bad item."""
    if re.fullmatch(_RANGE_LIST, inside) is not None:
        ranges = []
        for low_text, high_text in re.findall(_RANGE_ITEM, inside):
            low = int(low_text)
            high = int(high_text) if high_text else low
            if low > high or high - low + 1 > MAX_RANGE:
                break
            ranges.append((low, high, len(low_text)))
        else:
            return ranges
    return _explain_ranges(inside, token)


def _explain_ranges(inside: str, token: str) -> List[_Range]:
    ranges = []
    for item in inside.split(","):
        match = re.fullmatch(_RANGE_ITEM, item)
        if match is None:
            raise HostlistError(
                f"bad range {item!r} in host {token!r}: expected N, N-M or a comma list of them",
                item,
            )
        low_text, high_text = match.group(1), match.group(2)
        low = int(low_text)
        high = int(high_text) if high_text else low
        if low > high:
            raise HostlistError(
                f"range {item!r} in host {token!r} runs backwards: write it low-high", item
            )
        if high - low + 1 > MAX_RANGE:
            raise HostlistError(
                f"range {item!r} in host {token!r} has more than {MAX_RANGE} hosts "
                "(Slurm refuses it too)",
                item,
            )
        ranges.append((low, high, len(low_text)))
    return ranges


def _numbers(group: Sequence[_Range], prefix: str = "") -> List[str]:
    """``prefix`` + each number of the group, zero-padded to its range's width."""
    names: List[str] = []
    for low, high, width in group:
        # C-level maps only; zfill pads to the low bound's width as Slurm does, and hands
        # back a number that is already wide enough without copying it.
        numbers = map(str.zfill, map(str, range(low, high + 1)), itertools.repeat(width))
        names.extend(map(prefix.__add__, numbers) if prefix else numbers)
    return names


def _expand_token(texts: List[str], groups: List[List[_Range]]) -> List[str]:
    """Slurm's order: the last group fastest, then groups 1, 2, ..., k-1 (first fastest)."""
    if not groups:
        return [texts[0]]
    last = _numbers(groups[-1], texts[-1])
    if len(groups) == 1:
        return last
    prefixes = [_numbers(group) for group in groups[:-1]]
    hosts: List[str] = []
    # itertools.product varies its *last* argument fastest, so feed the prefix groups
    # reversed: group k-1 slowest ... group 1 fastest, as Slurm peels them.
    for combo in itertools.product(*reversed(prefixes)):
        head = "".join(text + number for text, number in zip(texts, reversed(combo)))
        hosts.extend(map(head.__add__, last))
    return hosts


__all__ = ["MAX_HOSTS", "MAX_RANGE", "expand_hostlist", "parse_counts"]
