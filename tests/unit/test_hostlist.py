"""Slurm hostlist expansion: Slurm 22.05's observed behaviour as tables, plus properties.

The tables hold outputs of ``scontrol show hostnames`` on Slurm 22.05; the differential test
in tests/slurm/ compares with the real ``scontrol`` on hundreds of generated expressions.
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpclaunch.errors import HostlistError, UsageError
from hpclaunch.model.hostlist import MAX_RANGE, expand_hostlist, parse_counts

SLURM_22_05 = [
    ("n[01-2]", ["n01", "n02"]),
    ("n[8-12]", ["n8", "n9", "n10", "n11", "n12"]),
    ("n[1-003]", ["n1", "n2", "n3"]),
    ("n[7-010]", ["n7", "n8", "n9", "n10"]),
    ("n[0001-3]", ["n0001", "n0002", "n0003"]),
    ("n[01,2,003]", ["n01", "n2", "n003"]),
    ("n[1-2],n1", ["n1", "n2", "n1"]),
    ("n[1-3,2-4]", ["n1", "n2", "n3", "n2", "n3", "n4"]),
    ("n[1-3]-ib[1-2]", ["n1-ib1", "n1-ib2", "n2-ib1", "n2-ib2", "n3-ib1", "n3-ib2"]),
    ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
    (
        "a[0-1]b[0-1]c[0-1]",
        ["a0b0c0", "a0b0c1", "a1b0c0", "a1b0c1", "a0b1c0", "a0b1c1", "a1b1c0", "a1b1c1"],
    ),
    ("[0-1]a[0-1]", ["0a0", "0a1", "1a0", "1a1"]),
    ("[1-2]", ["1", "2"]),
    ("n[1-]", ["n1"]),
    ("n[00-0]", ["n00"]),
    ("n5-6", ["n5-6"]),
    ("n", ["n"]),
    ("a,b", ["a", "b"]),
    ("n[1-2] m", ["n1", "n2", "m"]),
    ("n[1-2]\tm", ["n1", "n2", "m"]),
    ("n[1-2],,n3", ["n1", "n2", "n3"]),
    (",n1,", ["n1"]),
    ("n01,n2,n3", ["n01", "n2", "n3"]),
    ("n[98-99],n[100-101]", ["n98", "n99", "n100", "n101"]),
    ("n[4294967296-4294967297]", ["n4294967296", "n4294967297"]),
    ("", []),
    ("  ", []),
]


@pytest.mark.parametrize("expression, hosts", SLURM_22_05)
def test_matches_slurm_22_05(expression: str, hosts: List[str]) -> None:
    assert expand_hostlist(expression) == hosts


def test_four_groups_follow_slurms_peeling_order() -> None:
    """Slurm peels the last group (fastest), then expands the rest left group fastest."""
    hosts = expand_hostlist("a[0-1]b[0-1]c[0-1]d[0-1]")
    expected = [
        f"a{a}b{b}c{c}d{d}"
        for c, b, a, d in itertools.product(range(2), range(2), range(2), range(2))
    ]
    assert hosts == expected


BAD = [
    ("n[1-2]x", "n[1-2]x"),  # text after the last bracket
    ("n[1-2]:3", "n[1-2]:3"),
    ("n[3-1]", "3-1"),
    ("n[010-8]", "010-8"),
    ("n[]", ""),
    ("n[1-2,]", ""),
    ("n[,1]", ""),
    ("n[-1]", "-1"),
    ("n[a-b]", "a-b"),
    ("n[1x2]", "1x2"),
    ("n[1-2-3]", "1-2-3"),
    ("n[+1]", "+1"),
    ("n[\u0663]", "\u0663"),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to Slurm
    ("n[1-\u00b9]", "1-\u00b9"),
    ("n[ 1]", " 1"),
    ("n[1", "n[1"),
    ("n1]", "n1]"),
    ("n[[1]]", "n[["),
    (f"n[1-{MAX_RANGE + 1}]", f"1-{MAX_RANGE + 1}"),
]


@pytest.mark.parametrize("expression, part", BAD)
def test_bad_expressions_raise_with_the_offending_part(expression: str, part: str) -> None:
    with pytest.raises(HostlistError) as info:
        expand_hostlist(expression)
    assert info.value.part == part
    assert isinstance(info.value, UsageError)  # the CLI turns it into exit 2
    assert "\n" not in str(info.value)


@pytest.mark.timeout(30)  # a hang guard: refusing must not build 3.6 billion names first
def test_huge_product_is_refused_before_expanding() -> None:
    with pytest.raises(HostlistError, match="more than"):
        expand_hostlist("a[1-60000]b[1-60000]")


@pytest.mark.parametrize(
    "expression, first, last",
    [
        ("node[00001-10000]", "node00001", "node10000"),
        ("r[001-100]n[001-100]", "r001n001", "r100n100"),
        (",".join(f"gpu{i:05d}" for i in range(10000)), "gpu00000", "gpu09999"),
        (",".join(f"rack{i}-n[{i}-{i + 9}]" for i in range(1000)), "rack0-n0", "rack999-n1008"),
    ],
)
def test_ten_thousand_nodes_expand(expression: str, first: str, last: str) -> None:
    """Big lists come out whole and in order (their speed is a row of benchmarks/run.py)."""
    hosts = expand_hostlist(expression)
    assert (len(hosts), hosts[0], hosts[-1]) == (10000, first, last)
    assert len(set(hosts)) == 10000


# -- properties ---------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9.\-]{0,10}[a-z0-9]", fullmatch=True)


@given(st.lists(names, max_size=30))
def test_plain_names_come_back_in_order_with_duplicates(hosts: List[str]) -> None:
    assert expand_hostlist(",".join(hosts)) == hosts


ranges = st.tuples(st.integers(0, 300), st.integers(0, 12), st.integers(0, 3)).map(
    lambda t: (t[0], t[0] + t[1], t[2])  # low, high, extra leading zeros on low
)


def _range_text(low: int, high: int, zeros: int) -> str:
    low_text = "0" * zeros + str(low)
    return low_text if low == high and zeros % 2 else f"{low_text}-{high}"


def _model(prefix: str, items: List[Tuple[int, int, int]]) -> List[str]:
    """Expansion of one group, written independently: width = digits of the low bound."""
    hosts = []
    for low, high, zeros in items:
        width = len("0" * zeros + str(low))
        hosts.extend(prefix + str(value).zfill(width) for value in range(low, high + 1))
    return hosts


@given(
    st.from_regex(r"[a-z][a-z\-.]{0,5}", fullmatch=True), st.lists(ranges, min_size=1, max_size=5)
)
def test_one_group_matches_the_model(prefix: str, items: List[Tuple[int, int, int]]) -> None:
    expression = prefix + "[" + ",".join(_range_text(*item) for item in items) + "]"
    assert expand_hostlist(expression) == _model(prefix, items)


@given(
    st.lists(
        st.sampled_from(["n[1-3]", "a[01-2]b[7-8]", "x", "c[9-11]", "r[1]s[2]t[3-4]"]), max_size=6
    )
)
def test_concatenation_is_concatenation(parts: List[str]) -> None:
    expected: List[str] = []
    for part in parts:
        expected.extend(expand_hostlist(part))
    assert expand_hostlist(",".join(parts)) == expected


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_count_is_the_product_of_group_sizes(sizes: List[int]) -> None:
    expression = "".join(f"g{i}[1-{size}]" for i, size in enumerate(sizes))
    hosts = expand_hostlist(expression)
    total = 1
    for size in sizes:
        total *= size
    assert len(hosts) == total
    assert len(set(hosts)) == total  # distinct groups never collide


# -- compressed counts --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, counts",
    [
        ("2(x3),1", [2, 2, 2, 1]),
        ("1(x2)", [1, 1]),
        ("4", [4]),
        ("3,1", [3, 1]),
        ("2,1(x2)", [2, 1, 1]),
        (" 8(x1) ", [8]),
    ],
)
def test_parse_counts(text: str, counts: List[int]) -> None:
    assert parse_counts(text) == counts


@pytest.mark.parametrize(
    "text, part",
    [
        ("", ""),
        ("2(x)", "2(x)"),
        ("x", "x"),
        ("2(x0)", "2(x0)"),
        ("1,,2", ""),
        ("-1", "-1"),
        ("\u0663", "\u0663"),
    ],
)
def test_bad_counts_raise_with_the_offending_part(text: str, part: str) -> None:
    with pytest.raises(HostlistError) as info:
        parse_counts(text)
    assert info.value.part == part


def _compress(counts: List[int]) -> str:
    """Slurm's compressed form, written independently of the parser."""
    items = []
    for value, run in itertools.groupby(counts):
        length = len(list(run))
        items.append(f"{value}(x{length})" if length > 1 else str(value))
    return ",".join(items)


@given(st.lists(st.integers(0, 128), min_size=1, max_size=50))
def test_counts_round_trip(counts: List[int]) -> None:
    assert parse_counts(_compress(counts)) == counts
