"""The example notebooks a person opens first, executed for real against a worker."""

from __future__ import annotations

import pytest

from conftest import EXAMPLE_DATA, REPO, sqlite_only


@pytest.mark.slow
@sqlite_only
@pytest.mark.parametrize("name", ["python_api", "quickstart"])
def test_example_notebook_runs_top_to_bottom(
    name, settings, start_worker, tiny_model, tmp_path, monkeypatch
):
    import papermill

    start_worker()
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)  # the notebook's kernel connects where the worker listens
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(out),
        cwd=str(tmp_path),
        parameters={
            "base_model": str(tiny_model),
            "max_steps": 6,
            **({"data": str(EXAMPLE_DATA)} if name == "python_api" else {}),
        },
        kernel_name="python3",
        progress_bar=False,
    )
    import nbformat

    nb = nbformat.read(out, as_version=4)
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.output_type == "error" for o in outputs)
    if name == "quickstart":
        widgets = [
            o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        ]
        assert len(widgets) >= 2, "the panel and the dashboard render as widgets"
    else:
        assert any("image/png" in o.get("data", {}) for o in outputs), "the loss plot"
