"""The house rules, read from the source: no module of ftkit over 500 lines, no function or method
over 60 (docstring included; a nested function is measured on its own, and also as part of the
function around it). And the notebook side stays light: a client installed without the worker and
server extras connects, uploads, submits and watches without loading any of them.
(``import ftkit`` alone is pinned by tests/test_public_api.py.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import ftkit

ROOT = Path(ftkit.__file__).parent
REPO = ROOT.parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def too_long(source: str, module: str) -> list[str]:
    """What in one module breaks the size rules, each named with its line count."""
    found: list[tuple[int, str]] = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append((0, f"{module}: {lines} lines (at most {MAX_MODULE_LINES})"))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                why = f"{node.name}: {length} lines (at most {MAX_FUNCTION_LINES})"
                found.append((node.lineno, f"{module}:{node.lineno} {why}"))
    return [problem for _, problem in sorted(found)]


def house_report(paths: list[Path]) -> list[str]:
    return [
        problem
        for path in paths
        for problem in too_long(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]


def test_no_module_over_500_lines_and_no_function_over_60():
    problems = house_report(sorted(ROOT.rglob("*.py")))
    assert not problems, "split these:\n" + "\n".join(problems)


def test_the_measure_counts_docstrings_methods_and_nested_functions():
    """The checker itself: a method 61 lines long with its docstring, a nested function over the
    limit and the function around it are named; a 60-line function is not."""

    def lines(n: int, indent: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(n))

    source = (
        f'class A:\n    def method(self):\n        """Why."""\n{lines(59, 8)}\n'
        f"def outer():\n    async def inner():\n{lines(60, 8)}    return inner\n\n"
        f"def fits():\n{lines(59, 4)}"
    )
    assert too_long(source, "m.py") == [
        "m.py:2 method: 61 lines (at most 60)",
        "m.py:64 outer: 63 lines (at most 60)",
        "m.py:65 inner: 61 lines (at most 60)",
    ]


# What pyproject.toml's worker, server, unsloth and qlora extras install, by import name
EXTRAS = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "papermill", "ipykernel",
    "jupyter_client", "nbclient", "matplotlib", "nbconvert", "psutil",
    "fastapi", "uvicorn", "python_multipart", "fastapi_offline", "unsloth", "bitsandbytes",
)  # fmt: skip


def test_a_notebook_client_loads_nothing_of_the_worker_or_server_extras(tmp_path):
    """A notebook client installs without torch: its whole round (connect, upload, submit, status,
    cancel, health) and the command line's parser must not import the worker's or server's stack."""
    # What the client's own requirements import by themselves is theirs, not ftkit's: redis loads
    # opentelemetry's SDK where one is installed (the trackers extra brings it), and it psutil.
    code = (
        "import sys, warnings\n"
        "import fsspec, huey, ipywidgets, platformdirs, redis, redis.asyncio, tqdm\n"
        "theirs = set(sys.modules)\n"
        "import ftkit, ftkit.cli\n"
        "warnings.simplefilter('ignore')\n"
        "client = ftkit.Client()\n"
        f"ds = client.upload_dataset({str(REPO / 'examples' / 'example_data.jsonl')!r})\n"
        "job = client.submit(ds, base_model='org/model', max_steps=2)\n"
        "job.status(); client.jobs(); client.health(); job.cancel(); ftkit.cli.build_parser()\n"
        f"print([m for m in {EXTRAS!r} if m in sys.modules and m not in theirs])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTKIT_", "REDIS_"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "FTKIT_HOME": str(tmp_path)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_wheel_holds_every_module(tmp_path):
    """Packages are found, not listed, in pyproject.toml: a new package (ftkit/core/ was one) must
    reach what pip installs, or a user's worker fails at import where an editable install passed."""
    import shutil
    import zipfile

    source = tmp_path / "src"
    shutil.copytree(REPO / "ftkit", source / "ftkit", symlinks=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "examples", "templates"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name)
        elif (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("ftkit-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        str(p.relative_to(REPO))
        for p in (REPO / "ftkit").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(modules - shipped) == []
    assert {"ftkit/templates/train_template.ipynb", "ftkit/examples/example_data.jsonl"} <= shipped
