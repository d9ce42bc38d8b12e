"""The public face: what `import ftkit` exports, and that it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ftkit


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(ftkit) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(ftkit, n)).__name__ == "module"}
    assert set(ftkit.__all__) == public - modules - {"annotations", "os", "Path", "Any"}
    for name in (
        "upload_dataset",
        "submit",
        "Job",
        "jobs",
        "cancel",
        "download",
        "health",
        "panel",
        "dashboard",
        "TrainConfig",
        "connect",
        "get_job",
        "monitor",
        "example_data",
        "start_local_worker",
        "NoWorkerWarning",
    ):
        assert name in ftkit.__all__


def test_no_public_name_is_shadowed_by_a_submodule_once_imported():
    # Importing ftkit.X sets the attribute ftkit.X to the module: a function of the same name
    # (loaded lazily) would work once and then be replaced by its own module.
    code = (
        "import importlib, pkgutil, ftkit\n"
        "for m in pkgutil.walk_packages(ftkit.__path__, 'ftkit.'):\n"
        "    importlib.import_module(m.name)\n"
        "print([n for n in ftkit.__all__ if type(getattr(ftkit, n)).__name__ == 'module'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_import_loads_no_heavy_stack_and_connects_to_nothing():
    code = (
        "import sys, ftkit; heavy = [m for m in ('torch', 'transformers', 'papermill', 'trl', 'peft', 'unsloth', "
        "'datasets', 'redis', 'huey', 'ipywidgets', 'fastapi', 'uvicorn', 'starlette', 'python_multipart') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "FTKIT_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert out.stdout.strip() == "[]"


def test_cli_refuses_bad_config_before_queueing(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftkit.cli",
            "submit",
            str(tmp_path / "x.jsonl"),
            "--learning-rate",
            "-1",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FTKIT_STORAGE": str(tmp_path / "s")},
    )
    assert out.returncode == 2 and "learning_rate" in out.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["JobStatus", "JobResult", "Health"])
def test_the_http_models_declare_the_fields_of_the_typed_records(name):
    """What Job.status(), a job's result and Client.health() return (core.records, checked by
    mypy) and what the HTTP API declares (server.models, its OpenAPI schema) name the same
    fields; the only differences are the documented renames and omissions."""
    pytest.importorskip("fastapi")
    from ftkit.core import records
    from ftkit.server import models

    typed, model = set(getattr(records, name).__annotations__), getattr(models, name)
    renamed: dict[str, str] = getattr(model, "RENAMED", {})
    not_served = set(getattr(model, "NOT_SERVED", ()))
    served = {renamed.get(field, field) for field in model.model_fields}
    assert served - typed == set(), "model fields the typed record lacks"
    assert typed - served - not_served == set(), "typed keys the model does not declare"
    assert not_served <= typed
