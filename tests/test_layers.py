"""Imports run one way: no module of ftkit imports a module above it in the layer order.

Read from the source with ast, function-level (lazy) imports included: a lazy import still ties
two rooms together, and the circles it makes are the ones a newcomer trips over.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ftkit

ROOT = Path(ftkit.__file__).parent

# Lower numbers sit lower in the house; a module may import only modules with a smaller number.
# A new module must be placed here (the test fails for one that is not).
RANK: dict[str, float] = {
    # errors and config
    "ftkit._version": 0,
    "ftkit.errors": 0,
    # the vocabulary: statuses, typed records, shared rules, the retry helper, the HTML table
    "ftkit.core.statuses": 0.1,
    "ftkit.core.records": 0.2,
    "ftkit.core.rules": 0.2,
    "ftkit.core.retry": 0.2,
    "ftkit.core.html": 0.2,
    "ftkit.core.lifetime": 0.2,
    "ftkit.core": 0.3,
    "ftkit.envfile": 0.5,
    "ftkit.config": 1,
    "ftkit.webhooks": 1,  # the wire format of a job's announced end: signing, verifying, sending
    "ftkit.trackers": 0.9,
    "ftkit.sweep_plan": 1.5,
    "ftkit.stack": 1,
    "ftkit.machine": 1,
    "ftkit.placement": 0.9,
    # the job store: Huey's queue layout, the contract, one module per backend, the package's face
    "ftkit.jobstore.huey_layout": 1.5,
    "ftkit.jobstore.contract": 1.6,
    "ftkit.jobstore.redis": 1.7,
    "ftkit.jobstore.sqlite": 1.7,
    "ftkit.jobstore": 1.9,
    # storage, machine facts, kernels
    "ftkit.storage": 2,
    "ftkit.worker.kernels": 2,
    # the data layer, room by room
    "ftkit.data.problems": 2.1,
    "ftkit.data.readers": 2.2,
    "ftkit.data.conversations": 2.3,
    "ftkit.data.preferences": 2.35,
    "ftkit.data.formats": 2.4,
    "ftkit.data.render": 2.5,
    "ftkit.data.preference_sets": 2.55,
    "ftkit.data.profile": 2.6,
    "ftkit.data": 2.7,
    # what builds on them: the signed spec, the kernel's training code, test model, figures
    "ftkit.spec": 3,
    # the kernel's training code: who owns the job, checkpoints, reporting, the trainer, the report
    "ftkit.training.device": 2.75,
    "ftkit.training.tinymodel": 2.75,
    "ftkit.training.inference": 2.75,
    "ftkit.training.fencing": 2.8,
    "ftkit.training.checkpoints": 2.8,
    "ftkit.training.model": 2.8,
    "ftkit.training.display": 2.8,
    "ftkit.training.samples": 2.8,
    "ftkit.training.margins": 2.78,
    "ftkit.training.preference": 2.85,
    "ftkit.training.chat": 2.85,
    "ftkit.training.warmup": 3.15,
    "ftkit.training.reporter": 2.9,
    "ftkit.training.callback": 3.0,
    "ftkit.training.trainer": 3.1,
    "ftkit.training.ranks": 2.7,
    "ftkit.training.launch": 3.12,
    "ftkit.training.launcher": 3.12,
    "ftkit.training.rank_run": 3.15,
    "ftkit.training.trackers": 3.05,
    "ftkit.training": 3.2,
    "ftkit.plots": 3,
    "ftkit.worker.output_log": 3,
    "ftkit.worker.forkclient": 0,
    "ftkit.worker.zygote": 3.5,
    # the queue, then the report, then the worker and the client
    "ftkit.queue": 4,
    "ftkit.report": 4.5,
    "ftkit.cleanup": 4.8,
    "ftkit.lineage": 4.8,
    # the worker, room by room: what its threads share, staging and the notebook, one job, the process
    "ftkit.worker.runtime": 4.85,
    "ftkit.worker.staging": 4.9,
    "ftkit.worker.notebook": 4.9,
    "ftkit.worker.notify": 4.9,
    "ftkit.worker.routing": 4.9,
    "ftkit.worker.trackers": 4.9,
    "ftkit.worker.job": 4.95,
    "ftkit.worker.process": 4.97,
    "ftkit.worker": 5,
    # the client, room by room: what a status shows, data sets, workers, a job, the client
    "ftkit.client.status": 4.85,
    "ftkit.client.datasets": 4.85,
    "ftkit.client.workers": 4.85,
    "ftkit.client.job": 4.9,
    "ftkit.client.health": 4.9,
    "ftkit.client.client": 5,
    "ftkit.client": 5.1,
    "ftkit.sweeping": 5.5,
    # panels, then the face, then the HTTP layer over it, then the command line over everything
    "ftkit.panels.common": 6,
    "ftkit.panels.monitor": 6.1,
    "ftkit.panels.train": 6.2,
    "ftkit.panels.sweeps": 6.3,
    "ftkit.panels.chat": 6.3,
    "ftkit.panels": 6.5,
    "ftkit": 7,
    "ftkit.server.asgi": 8.0,
    "ftkit.server.sessions": 8.05,
    "ftkit.server.redact": 8.05,
    "ftkit.server.reservations": 8.05,
    "ftkit.server.auth": 8.1,
    "ftkit.server.csrf": 8.15,
    "ftkit.server.errors": 8.1,
    "ftkit.server.limits": 8.1,
    "ftkit.server.models": 8.1,
    "ftkit.server.sweep_models": 8.15,
    "ftkit.server.deps": 8.1,
    "ftkit.server.routes.datasets": 8.2,
    "ftkit.server.routes.health": 8.2,
    "ftkit.server.routes.jobs": 8.2,
    "ftkit.server.routes.sweeps": 8.21,
    "ftkit.server.routes.generate": 8.21,
    "ftkit.server.routes": 8.25,
    "ftkit.server.page": 8.3,
    "ftkit.server.docs": 8.35,
    "ftkit.server.app": 8.4,
    "ftkit.server": 8.5,
    "ftkit.cli.output": 9.0,
    "ftkit.cli.jobs": 9.1,
    "ftkit.cli.service": 9.1,
    "ftkit.cli.datasets": 9.1,
    "ftkit.cli.demo": 9.1,
    "ftkit.cli.parser": 9.2,
    "ftkit.cli": 9.3,
    "ftkit.cli.__main__": 9.4,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("ftkit", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every ftkit module ``name`` imports, anywhere in the file; ``from pkg import mod`` counts as
    importing ``pkg.mod``, ``from pkg import name`` as importing ``pkg``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ftkit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base.split(".")[0] != "ftkit":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found - {name}


def upward_imports() -> list[str]:
    found = modules()
    wrong = []
    for name, path in found.items():
        for target in sorted(imports_of(name, path, set(found))):
            if RANK.get(target, float("inf")) >= RANK.get(name, float("-inf")):
                wrong.append(f"{name} ({RANK.get(name)}) imports {target} ({RANK.get(target)})")
    return wrong


def test_every_module_has_a_place_in_the_layers():
    assert set(modules()) == set(RANK)


def test_no_module_imports_one_above_it():
    assert upward_imports() == []


def test_the_reading_sees_lazy_and_relative_imports():
    """The checker itself: a function-level relative import is found and resolved to its module."""
    found = modules()
    assert "ftkit.data.render" in imports_of(
        "ftkit.data.profile", found["ftkit.data.profile"], set(found)
    )
    assert "ftkit.panels.train" in imports_of(
        "ftkit", found["ftkit"], set(found)
    )  # lazy, in panel()
    assert "ftkit.worker" in imports_of(
        "ftkit.cli.service", found["ftkit.cli.service"], set(found)
    )  # lazy, in cmd_worker


def test_the_queue_runs_what_the_worker_hands_it_and_a_client_queue_only_enqueues(tmp_path):
    """The queue knows no worker: tasks are registered by name, their bodies come from the caller."""
    from ftkit.config import Settings
    from ftkit.queue import TASK_NAME, enqueue, make_huey

    settings = Settings.from_env({}, queue_db=str(tmp_path / "queue.db"), home=str(tmp_path))
    client_side = make_huey(settings)
    enqueue(client_side, "0123456789ab")
    message = client_side.dequeue()
    with pytest.raises(RuntimeError, match="only enqueues: a worker runs it"):
        message.execute()
    ran: list[str] = []
    worker_side = make_huey(settings, run_job=ran.append, refuse=lambda *a: None)
    enqueue(client_side, "ba9876543210")  # enqueued by a client, run by a worker
    worker_side.execute(worker_side.dequeue())
    assert ran == ["ba9876543210"]
    assert type(message).__name__ == TASK_NAME


def test_every_module_a_warm_kernel_imports_exists():
    """The warm-up is code in a string: a module that moved (ftkit.render became ftkit.data.render)
    would only log a warning on each worker, and every job would pay the cold import."""
    from importlib.util import find_spec

    from ftkit.worker.kernels import WARM_UP

    names = [
        alias.name
        for node in ast.walk(ast.parse(WARM_UP))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    ]
    missing = [name for name in names if find_spec(name) is None]
    assert not missing, f"the kernel warm-up imports modules that do not exist: {missing}"
    assert "ftkit.training.warmup" in names and "ftkit.data.render" in names  # what every job runs


# The walls the ranks alone do not hold: who may never import whom, whatever their floors.
WALLS = {
    # the kernel package knows no queue, no worker, no client, no screen
    "ftkit.training": (
        "ftkit.queue",
        "ftkit.worker",
        "ftkit.client",
        "ftkit.panels",
        "ftkit.sweeping",
        "ftkit.server",
        "ftkit.cli",
    ),
    # storage knows files, never a job's state
    "ftkit.storage": ("ftkit.jobstore", "ftkit.core.statuses", "ftkit.queue", "ftkit.spec"),
    # the job store keeps records; it queues nothing itself and knows no worker
    "ftkit.jobstore": ("ftkit.queue", "ftkit.worker", "ftkit.storage", "ftkit.training"),
    # the panels speak only the public API: the client, its configuration and errors, and what
    # draws (the vocabulary, figures, comparisons, sweeps)
    "ftkit.panels": (
        "ftkit.jobstore",
        "ftkit.queue",
        "ftkit.storage",
        "ftkit.worker",
        "ftkit.training",
        "ftkit.spec",
        "ftkit.server",
    ),
    # the worker runs the kernel's code in notebook kernels, never in its own process (its zygote,
    # which forks those kernels, is the one room of the worker that loads it: see below)
    "ftkit.worker": ("ftkit.training", "ftkit.client", "ftkit.panels"),
}


def breaches() -> list[str]:
    found = modules()
    wrong = []
    for name, path in found.items():
        for package, forbidden in WALLS.items():
            if name != package and not name.startswith(package + "."):
                continue
            if name == "ftkit.worker.zygote":  # a kernel's parent: it preloads what kernels run
                continue
            for target in imports_of(name, path, set(found)):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    wrong.append(f"{name} imports {target}")
    return sorted(wrong)


def test_the_walls_hold():
    assert breaches() == []


def test_only_the_kernel_package_imports_torch():
    """torch is the heaviest import there is: a notebook client installs without it, and a worker
    process must not touch CUDA before it forks kernels. The one exception is the worker's
    start-up check, which imports in a child process what a job will import, to refuse jobs on a
    broken install (ftkit/stack.py)."""
    heavy = {"torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes", "accelerate"}
    allowed = ("ftkit.training", "ftkit.stack")
    wrong = []
    for name, path in modules().items():
        if name.startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            wrong += [f"{name} imports {t}" for t in targets if t.split(".")[0] in heavy]
    assert wrong == []
