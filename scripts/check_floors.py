"""Every floor in pyproject.toml is one a lowest-direct resolution reaches: each direct
requirement's ``>=`` bound is the version ``uv pip compile --resolution lowest-direct`` chose. A
floor nothing can install (another package needs more) is a promise no one tests, so it fails here,
naming the version to raise it to.

    python scripts/check_floors.py LOCKFILE [--extra NAME ...] [--exempt NAME=WHY ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def floors(extras: list[str]) -> dict[str, Version]:
    """Each direct requirement's lower bound, from the project's own metadata."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found: dict[str, Version] = {}
    for line in project["dependencies"] + [
        r for extra in extras for r in project["optional-dependencies"][extra]
    ]:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            found[canonicalize_name(req.name)] = max(lows)
    return found


def pinned(lockfile: Path) -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", lockfile.read_text(), re.M)
    return {canonicalize_name(n): Version(v) for n, v in pins}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("lockfile", type=Path)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--exempt", action="append", default=[], metavar="NAME=WHY")
    args = parser.parse_args()
    exempt = dict(e.split("=", 1) for e in args.exempt)
    locked = pinned(args.lockfile)
    bad = 0
    for name, floor in sorted(floors(args.extra).items()):
        got = locked.get(name)
        if got is None:
            print(
                f"  {name}: not in {args.lockfile.name} (a requirement that does not apply here?)"
            )
            continue
        if Version(got.base_version) == floor or name in exempt:
            why = f" (exempt: {exempt[name]})" if Version(got.base_version) != floor else ""
            print(f"  {name} {got}: the floor{why}")
            continue
        print(f"  {name}: the floor is {floor}, but the lowest installable is {got}: raise it")
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
