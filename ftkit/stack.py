"""What a worker needs installed, checked before it takes a job.

A package can be installed and still fail to import for want of one of its own needs (nbconvert
without ``tinycss2``, which only ``bleach[css]`` brings), and it can be installed at a version
ftkit's ranges exclude. Both are found here, at the worker's start, and said with the package to
install: a worker that would fail every job exits instead, naming the fix.

Two halves: ``version_problems`` reads installed metadata (cheap, in the worker's own process);
``import_problems`` really imports what a job imports and runs in a child process
(``python -m ftkit.stack``), so that torch, transformers and unsloth never load into the worker
itself (unsloth would take a CUDA context there).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# What a job's kernel imports (the template, ftkit.training), and the worker process itself.
WORKER_MODULES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "papermill",
    "nbclient",
    "ipykernel",
    "nbconvert",
    "matplotlib",
    "psutil",
)
INSTALL = "pip install 'ftkit[worker]'"


@dataclass(frozen=True)
class Problem:
    """One thing that stops a worker, said so that a person can fix it."""

    package: str
    what: str  # what is wrong, in a sentence
    fix: str  # the command that fixes it

    def __str__(self) -> str:
        return f"{self.package}: {self.what}; fix: {self.fix}"


# -- declared ranges -------------------------------------------------------------------------------
def declared_requirements(extras: tuple[str, ...] = ("worker",)) -> list:
    """ftkit's own requirements for ``extras`` (and the core), from its installed metadata, or from
    pyproject.toml when it runs from a source tree (the GPU check's PYTHONPATH)."""
    from packaging.requirements import Requirement

    try:
        lines = md.requires("ftkit") or []
    except md.PackageNotFoundError:
        lines = _from_pyproject(extras)
    wanted = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            wanted.append(req)
    return wanted


def _from_pyproject(extras: tuple[str, ...]) -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return []
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not path.is_file():
        return []
    project = tomllib.loads(path.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    return list(project["dependencies"]) + [r for e in extras for r in optional.get(e, [])]


def version_problems(extras: tuple[str, ...] = ("worker",)) -> list[Problem]:
    """Each of ftkit's requirements that is missing or installed at a version outside its range."""
    if importlib.util.find_spec("packaging") is None:  # every package of the worker's needs it
        return [Problem("packaging", "is not installed: the worker's stack is not", INSTALL)]
    problems = []
    for req in declared_requirements(extras):
        spec = f"{req.name}{req.specifier}"
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(Problem(req.name, "is not installed", f"pip install '{spec}'"))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(
                Problem(
                    req.name,
                    f"{installed} is installed, and ftkit needs {req.specifier}",
                    f"pip install '{spec}'",
                )
            )
    return problems


def missing_needs(distribution: str) -> list[str]:
    """The requirements of ``distribution`` (its extras' too, as it was asked for), followed down,
    that are not installed: ``['tinycss2 (nbconvert -> bleach[css] -> tinycss2)']``."""
    from packaging.requirements import Requirement

    missing: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str], tuple[str, ...]]] = [
        (distribution, frozenset(), (distribution,))
    ]
    while todo:
        name, extras, chain = todo.pop()
        if (name.lower(), extras) in seen:
            continue
        seen.add((name.lower(), extras))
        try:
            lines = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in lines:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (extras or {""})
            ):
                continue
            shown = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
            try:
                md.version(req.name)
            except md.PackageNotFoundError:
                missing.append(f"{req.name} ({' -> '.join((*chain, shown))})")
                continue
            todo.append((req.name, frozenset(req.extras), (*chain, shown)))
    return sorted(set(missing))


# -- real imports ----------------------------------------------------------------------------------
def import_problem(module: str) -> Problem | None:
    """Import ``module``; a failure named with what is missing beneath it, if anything is."""
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # ImportError, and the NameError a half-installed package raises
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    distribution = module  # each of WORKER_MODULES is its distribution's name
    needs = missing_needs(distribution)
    if needs:
        names = " ".join(sorted({n.split(" ")[0] for n in needs}))
        return Problem(
            distribution,
            f"`import {module}` fails ({error}): it needs {', '.join(needs)}, not installed",
            f"pip install {names}",
        )
    missing = re.search(r"No module named '([\w.]+)'", error)
    fix = f"pip install {missing.group(1).split('.')[0]}" if missing else INSTALL
    return Problem(distribution, f"`import {module}` fails ({error})", fix)


def import_problems(modules: tuple[str, ...] = WORKER_MODULES) -> list[Problem]:
    """The modules a job imports, imported for real; unsloth and bitsandbytes too on a CUDA device
    where they are installed (a job there uses them)."""
    problems = [p for m in modules if (p := import_problem(m)) is not None]
    if problems:
        return problems
    import torch

    if torch.cuda.is_available():
        for optional in ("unsloth", "bitsandbytes"):
            if importlib.util.find_spec(optional) is not None:
                problem = import_problem(optional)
                if problem is not None:
                    problems.append(problem)
    return problems


def check_in_child(timeout: float = 600) -> list[Problem]:
    """``import_problems`` in a child process: what a job's kernel would meet, without loading
    torch into the caller."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftkit.stack"], capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 and not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [Problem("python", f"the import check exited {proc.returncode}: {tail[0]}", INSTALL)]
    return [Problem(**json.loads(line)) for line in lines]


def report(problems: list[Problem]) -> str:
    """What the worker prints before it exits."""
    lines = ["the worker cannot run jobs with what is installed here:"]
    lines += [f"  - {p}" for p in problems]
    lines.append(f"(everything a worker needs: {INSTALL})")
    return "\n".join(lines)


if __name__ == "__main__":
    for problem in import_problems():
        print(json.dumps(asdict(problem)), flush=True)
