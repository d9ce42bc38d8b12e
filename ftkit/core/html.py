"""The one HTML table that the panels, the run report, sweeps and the web page share: every value
escaped, so a tag or a note someone typed never becomes markup (only what the caller marked as
``Markup``, built from escaped parts, passes as HTML)."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class Markup(str):
    """HTML the caller built from escaped parts (a link, a badge, an inline SVG): ``esc``, and so
    every table cell and value, leaves it as it is. Never wrap text read from a record in it."""


def esc(value: Any) -> str:
    """Text as HTML; None is empty; Markup stays as it is."""
    if isinstance(value, Markup):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    caption: str = "",
    css_class: str = "ftkit-table",
    empty: str | None = None,
    cell: Callable[[str, Any], Any] | None = None,
    row_attrs: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Rows of mappings as a table, one column per name in ``columns``. ``cell(column, value)``
    formats a value (default: as it is); ``row_attrs(row)`` adds attributes to its <tr>;
    ``headers`` renames a column's heading; ``empty``: what to show instead of a table without
    rows (default: the table with its head only)."""
    if not rows and empty is not None:
        return f"<i>{esc(empty)}</i>"
    pad = "padding:2px 8px"
    head = "".join(
        f"<th style='text-align:left;{pad}'>{esc((headers or {}).get(c, c))}</th>" for c in columns
    )

    def tr(row: Mapping[str, Any]) -> str:
        attrs = "".join(
            f" {esc(k)}='{esc(v)}'" for k, v in (row_attrs(row) if row_attrs else {}).items()
        )
        cells = "".join(
            f"<td style='{pad}'>{esc(cell(c, row.get(c)) if cell else row.get(c))}</td>"
            for c in columns
        )
        return f"<tr{attrs}>{cells}</tr>"

    top = f"<caption style='text-align:left'>{esc(caption)}</caption>" if caption else ""
    return (
        f"<table class='{esc(css_class)}'>{top}<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(tr(r) for r in rows)}</tbody></table>"
    )


def key_values(
    mapping: Mapping[str, Any], *, caption: str = "", css_class: str = "ftkit-kv"
) -> str:
    """A two-column table of names and values (a run's summary, a model's facts)."""
    top = f"<caption style='text-align:left'><b>{esc(caption)}</b></caption>" if caption else ""
    body = "".join(
        f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{esc(v)}</td></tr>"
        for k, v in mapping.items()
    )
    return f"<table class='{esc(css_class)}'>{top}{body}</table>"
