"""The plug-in lookup: entry_points.txt parsing and the sys.path scan, on real directories."""

from __future__ import annotations

from pathlib import Path

from hpclaunch.adapters.plugins import parse_entry_points, scan

ENTRY_POINTS = """
[console_scripts]
pbs = not_an_adapter:main

[hpclaunch.adapters]
# comment
pbs = hpclaunch_pbs:PBSAdapter
flux=hpclaunch_flux.adapter:FluxAdapter [extra]
; another comment

[other.group]
lsf = x:Y
"""


def test_only_our_group_is_read() -> None:
    found = parse_entry_points(ENTRY_POINTS, "src")
    assert [(e.name, e.target) for e in found] == [
        ("pbs", "hpclaunch_pbs:PBSAdapter"),
        ("flux", "hpclaunch_flux.adapter:FluxAdapter"),
    ]


def install(site: Path, dist: str, text: str) -> None:
    info = site / f"{dist}.dist-info"
    info.mkdir(parents=True)
    (info / "entry_points.txt").write_text(text)


def test_the_first_copy_on_the_path_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    install(first, "hpclaunch_pbs-2.0", "[hpclaunch.adapters]\npbs = new:A\n")
    install(second, "hpclaunch_pbs-1.0", "[hpclaunch.adapters]\npbs = old:A\nqsub = old:B\n")
    install(second, "other_pkg-1.0", "[hpclaunch.adapters]\npbs = shadowed:C\nlsf = lsf:D\n")
    install(second, "unrelated-3.0", "[console_scripts]\nx = y:z\n")
    (second / "no_entry_points-1.0.dist-info").mkdir()
    found = scan([str(first), str(second), str(tmp_path / "missing"), str(tmp_path / "f.zip")])
    assert {name: entry.target for name, entry in found.items()} == {
        "pbs": "new:A",  # version 1.0 of the same package is shadowed, as Python would
        "lsf": "lsf:D",
    }
    assert found["pbs"].source.endswith("hpclaunch_pbs-2.0.dist-info")
