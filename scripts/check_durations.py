"""Keep `make test-fast` fast: from the full suite's own JUnit XML (`make test` writes it), sum the
time of the tests that `-m "not slow and not browser"` would select, and fail past the budget.

    python scripts/check_durations.py test-timings.xml --select "not slow and not browser" --budget 150

Each test's markers come from the XML's ``markers`` property, which tests/conftest.py records; the
time of a test is pytest's own (setup, call and teardown). `make test-fast` runs on two processes,
so its wall time is about half the sum. The tests that take more than ``--slow`` seconds and are
still selected are listed: mark them ``@pytest.mark.slow`` (pyproject.toml says what slow means).
"""

from __future__ import annotations

import argparse
import ast
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    test: str
    seconds: float
    markers: frozenset[str]


def timings(path: str) -> list[Timing]:
    """Every test case in a JUnit XML file, with its time and the markers conftest recorded."""
    found = []
    for case in ET.parse(path).getroot().iter("testcase"):
        names = [p.get("value", "") for p in case.iter("property") if p.get("name") == "markers"]
        if not names:
            sys.exit(
                f"{path}: {case.get('name')} has no markers property: not written by ftkit's tests"
            )
        test = f"{case.get('classname')}::{case.get('name')}"
        found.append(Timing(test, float(case.get("time") or 0), frozenset(names[0].split())))
    return found


def selects(expression: str, markers: frozenset[str]) -> bool:
    """Whether pytest's ``-m expression`` selects a test with these markers: names joined by and,
    or, not and parentheses, a name true when the test has that marker."""
    return _value(ast.parse(expression, mode="eval").body, markers, expression)


def _value(node: ast.expr, markers: frozenset[str], expression: str) -> bool:
    if isinstance(node, ast.Name):
        return node.id in markers
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _value(node.operand, markers, expression)
    if isinstance(node, ast.BoolOp):
        values = [_value(v, markers, expression) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    raise ValueError(f"not a marker expression that -m reads: {expression!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xml", help="the JUnit XML of a full run (pytest --junitxml)")
    parser.add_argument("--select", default="not slow and not browser", help="the -m expression")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds of test time, summed")
    parser.add_argument("--slow", type=float, default=5.0, help="list selected tests over this")
    args = parser.parse_args(argv)

    every = timings(args.xml)
    chosen = [t for t in every if selects(args.select, t.markers)]
    total = sum(t.seconds for t in chosen)
    print(
        f"{len(chosen)} of {len(every)} tests selected by -m {args.select!r}: {total:.0f} s of test"
        f" time (budget {args.budget:.0f} s); all tests in the file: {sum(t.seconds for t in every):.0f} s"
    )
    for t in sorted(chosen, key=lambda t: -t.seconds):
        if t.seconds > args.slow:
            print(f"  {t.seconds:6.1f} s  {t.test}  (slow: mark it, or make it faster)")
    if any(t.seconds > args.slow for t in chosen):
        print("  (times include setup: the first test to use a session fixture pays for it)")
    if total > args.budget:
        print(f"FAIL: the selected tests take {total:.0f} s, over the {args.budget:.0f} s budget")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
