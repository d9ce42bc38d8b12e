"""The dashboard: live workers, queue depth, jobs with progress and loss sparklines (filtered by
status and by tag), recent sweeps, a page per job with its loss curve and rendered report, and
cancel buttons.

Server-rendered HTML with inline SVG, no build step: it reads in a bare browser, and a twelve-line
script refreshes the live part in place every few seconds (without it the page is still whole).
It reads what the HTTP API reads, through the same Client: workers, health, jobs, sweeps, metrics,
logs. Every value from a record is escaped: records are written by anyone with the queue's URL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..client import Client
from ..core.html import Markup, esc
from ..core.html import table as html_table
from ..core.rules import JOB_ID, TAG
from ..core.statuses import FINAL, STATUSES
from ..errors import JobNotFound
from ..placement import Offer
from ..plots import loss_svg, margins_svg, preference_line
from ..sweeping import recent
from .auth import COOKIE, auth_of, signed_in, token_ok
from .deps import get_client
from .sessions import SESSION_SECONDS

router = APIRouter(include_in_schema=False)
SPARKLINE_ROWS = 20  # one metrics read per row: the newest rows get a sparkline
SWEEP_ROWS = 10
REFRESH_SECONDS = 2.0

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:8px 16px}header a{color:#fff;text-decoration:none}
main,section.static{padding:8px 16px}table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{padding:4px 8px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap}
th{background:#f0f0f0}.bar{width:120px;height:10px;background:#e5e5e5;display:inline-block}
.bar>span{display:block;height:100%;background:#1976d2}.st-completed{color:green}
.st-failed{color:crimson}.st-cancelled{color:darkorange}.st-training{color:steelblue}
.muted{color:#777}.waiting{color:#b45309;white-space:normal}button.cancel{color:#b45309;border:1px solid #b45309;background:#fff}
pre.logs{background:#fff;border:1px solid #ddd;padding:6px;max-height:220px;overflow:auto}
iframe.report{width:100%;height:900px;border:1px solid #ddd;background:#fff}
form.tag-filter{padding:8px 16px 0}a.tag{background:#e8eef3;border-radius:3px;padding:0 4px;
margin-right:3px;color:#263238;text-decoration:none}
"""

SCRIPT = """
const every = Number(document.body.dataset.refresh) * 1000;
async function refresh() {
  const r = await fetch(location.href, {credentials: 'same-origin', cache: 'no-store'});
  if (!r.ok) return;
  const next = new DOMParser().parseFromString(await r.text(), 'text/html');
  const live = next.getElementById('live');
  if (!live) return;
  if (live.dataset.final !== document.getElementById('live').dataset.final) location.reload();
  else document.getElementById('live').replaceWith(live);
}
document.addEventListener('click', async (e) => {
  const b = e.target.closest('button.cancel');
  if (!b) return;
  b.disabled = true;
  const csrf = document.querySelector('meta[name=csrf-token]').content;
  await fetch('/job/' + b.dataset.job,
              {method: 'DELETE', credentials: 'same-origin', headers: {'X-CSRF-Token': csrf}});
  refresh();
});
if (every > 0) setInterval(() => refresh().catch(() => {}), every);
"""


def sparkline(losses: list[float], width: int = 120, height: int = 24) -> str:
    """A loss curve as an inline SVG polyline (at most 60 points)."""
    if len(losses) < 2:
        return "<span class='muted'>-</span>"
    step = max(1, len(losses) // 60)
    ys = losses[::step] + ([losses[-1]] if (len(losses) - 1) % step else [])
    lo, hi = min(ys), max(ys)
    pts = " ".join(
        f"{i / (len(ys) - 1) * (width - 2) + 1:.1f},"
        f"{height - 2 - (y - lo) / ((hi - lo) or 1) * (height - 4):.1f}"
        for i, y in enumerate(ys)
    )
    return (
        f"<svg class='spark' width='{width}' height='{height}' data-points='{len(losses)}'>"
        f"<polyline fill='none' stroke='#1976d2' stroke-width='1.5' points='{pts}'/></svg>"
    )


def progress_bar(s: Mapping[str, Any]) -> str:
    pct = float(s.get("progress") or 0.0)
    return (
        f"<span class='bar' title='{pct:.0f}%'><span style='width:{pct:.1f}%'></span></span> "
        f"<span class='pct'>{pct:.0f}%</span>"
    )


def cancel_button(s: Mapping[str, Any]) -> str:
    if s["status"] in FINAL:
        return ""
    return f"<button class='cancel' data-job='{esc(s['job_id'])}'>Cancel</button>"


def layout(
    title: str,
    live: str,
    *,
    final: bool = False,
    static: str = "",
    top: str = "",
    refresh: float,
    csrf: str = "",
) -> str:
    """``top`` sits above the live part, which the script replaces: a form there keeps its text.
    ``csrf`` is the session's token, which the script sends with what it changes; with a session
    the header offers sign-out."""
    out = (
        "<form class='sign-out' method='post' action='/logout' style='display:inline'>"
        "<button>Sign out</button></form>"
        if csrf
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta name='csrf-token' content='{esc(csrf)}'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body data-refresh='{refresh:g}'><header><a href='/'><b>ftkit</b></a> · {esc(title)}"
        f" · <a href='/docs'>API docs</a> {out}</header>"
        f"{top}<main id='live' data-final='{str(final).lower()}'>{live}</main>"
        f"<section class='static'>{static}</section><script>{SCRIPT}</script></body></html>"
    )


def table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    """Rows under these headings (cells escaped unless Markup), or a muted line when none."""
    if not rows:
        return f"<p class='muted'>{esc(empty)}</p>"
    return html_table(rows, columns)


def job_link(job_id: str) -> Markup:
    return Markup(f"<a href='/ui/job/{esc(job_id)}'>{esc(job_id)}</a>")


def workers_table(workers: Sequence[Mapping[str, Any]]) -> str:
    now = time.time()
    rows = [
        {
            "worker": w["worker_id"],
            "host": w.get("host"),
            "devices": Offer.of(dict(w)).describe(),
            "GPU": (w.get("gpu") or "CPU")
            + (f" ({w['gpu_memory']})" if w.get("gpu_memory") else ""),
            "current job": job_link(w["current_job"])
            if w.get("current_job")
            else Markup("<span class='muted'>idle</span>"),
            "jobs done": w.get("jobs_done", 0),
            "heartbeat": f"{max(0.0, now - w['last_seen']):.0f} s ago",
        }
        for w in workers
    ]
    return table(
        rows,
        ["worker", "host", "devices", "GPU", "current job", "jobs done", "heartbeat"],
        "no live workers: start one with `ftkit worker`",
    )


def url(**query: Any) -> str:
    """A dashboard link with these filters (those set), escaped for an attribute."""
    return esc("/?" + urlencode({k: v for k, v in query.items() if v}))


def tag_links(tags: Any) -> str:
    if not isinstance(tags, list):
        return ""
    return "".join(
        f"<a class='tag' href='{url(tag=t)}'>{esc(t)}</a>"
        for t in tags
        if isinstance(t, str) and TAG.fullmatch(t)
    )


JOB_COLUMNS = ["job", "data set", "model", "method", "status", "progress", "step", "loss", "loss curve",
               "created (UTC)", "tags", ""]  # fmt: skip


def jobs_table(client: Client, jobs: Sequence[Mapping[str, Any]]) -> str:
    """One row per job; the newest SPARKLINE_ROWS with their loss curve (one metrics read each)."""
    rows = []
    for i, s in enumerate(jobs):
        metrics = client.get_job(s["job_id"]).metrics() if i < SPARKLINE_ROWS else []
        jid = esc(s["job_id"])
        rows.append(
            {
                "job": Markup(f"<a class='job-link' href='/ui/job/{jid}'>{jid}</a>"),
                "data set": (s.get("dataset") or {}).get("name"),
                "model": (s.get("config") or {}).get("base_model"),
                "method": (s.get("config") or {}).get("method") or "sft",
                "status": status_badge(s),
                "progress": Markup(progress_bar(s)),
                "step": Markup(
                    f"<span class='step'>{esc(s.get('current_step') or 0)}</span>/"
                    f"{esc(s.get('total_steps') or '?')}"
                ),
                "loss": f"{s['loss']:.4f}" if s.get("loss") is not None else "",
                "loss curve": Markup(
                    sparkline([m["loss"] for m in metrics if m.get("loss") is not None])
                ),
                "created (UTC)": (s.get("created_at") or "")[:19].replace("T", " "),
                "tags": Markup(f"<span class='tags'>{tag_links(s.get('tags'))}</span>"),
                "": Markup(cancel_button(s)),
            }
        )
    return table(rows, JOB_COLUMNS, "no jobs yet")


def status_badge(s: Mapping[str, Any]) -> Markup:
    """The status; a queued job that no live worker can run says why beside it."""
    waiting = s.get("waiting_for")
    why = f" <span class='waiting'>{esc(waiting)}</span>" if isinstance(waiting, str) else ""
    return Markup(f"<span class='status st-{esc(s['status'])}'>{esc(s['status'])}</span>{why}")


def filters(
    current: str | None, tag: str | None, offset: int, limit: int, shown: int, total: int | None
) -> str:
    """Status links (keeping the tag), the count, and newer/older pages. A tag's jobs are not
    counted (read through its index, page by page): "older" shows while a page is full."""
    links = []
    for name in ("all", *STATUSES):
        value = None if name == "all" else name
        label = f"<b>{name}</b>" if value == current else name
        links.append(f"<a href='{url(status=value, tag=tag)}'>{label}</a>")
    pages = ""
    if offset > 0:
        pages += (
            f" <a href='{url(status=current, tag=tag, offset=max(0, offset - limit))}'>newer</a>"
        )
    if (offset + limit < total) if total is not None else shown == limit:
        pages += f" <a href='{url(status=current, tag=tag, offset=offset + limit)}'>older</a>"
    count = f"{total} jobs" if total is not None else f"tagged <b class='tag-shown'>{esc(tag)}</b>"
    return f"<p>status: {' · '.join(links)} · {count}{pages}</p>"


def tag_form(status: str | None, tag: str | None, refused: str | None) -> str:
    """Filter by one tag; a sweep's runs carry ``sweep:<id>``."""
    keep = f"<input type='hidden' name='status' value='{esc(status)}'>" if status else ""
    clear = f" <a class='clear-tag' href='{url(status=status)}'>all tags</a>" if tag else ""
    problem = (
        f" <span class='tag-refused' style='color:crimson'>{esc(refused[:80])} is not a tag: "
        "1-64 letters, digits or _ . : + = -</span>"
        if refused
        else ""
    )
    return (
        f"<form class='tag-filter' method='get' action='/'>{keep}<label>tag "
        f"<input name='tag' value='{esc(refused or tag)}' placeholder='e.g. baseline' size='24'></label> "
        f"<button>Filter</button>{clear}{problem}</form>"
    )


def sweeps_table(sweeps: list[dict[str, Any]], tag: str | None) -> str:
    """Recent sweeps; a sweep's id filters the jobs to its runs."""
    rows = [
        {
            "sweep": Markup(
                f"<a class='sweep-link' href='{url(tag='sweep:' + s['sweep_id'])}'>"
                f"{esc(s['sweep_id'])}</a>"
            ),
            "created (UTC)": (s.get("created_at") or "")[:19].replace("T", " "),
            "mode": s.get("mode"),
            "swept": ", ".join(s.get("swept") or []),
            "runs": s.get("runs"),
            "data set": s.get("dataset"),
            "tags": Markup(tag_links(s.get("tags"))),
            "note": (s.get("note") or "")[:80] if isinstance(s.get("note"), str) else "",
        }
        for s in sweeps
    ]
    return table(
        rows,
        ["sweep", "created (UTC)", "mode", "swept", "runs", "data set", "tags", "note"],
        f"no sweeps tagged {tag}" if tag else "no sweeps yet: ftkit.sweep(...) or POST /sweep",
    )


def sign_in(
    message: str = "", *, status: int = 401, headers: dict[str, str] | None = None
) -> HTMLResponse:
    form = (
        "<h2>Sign in</h2><p>This server needs its API token (FTKIT_API_TOKEN).</p>"
        f"<p style='color:crimson'>{esc(message)}</p>"
        "<form method='post' action='/login'><input type='password' name='token' "
        "autocomplete='current-password' size='40' autofocus> <button>Sign in</button></form>"
    )
    return HTMLResponse(layout("sign in", form, refresh=0), status_code=status, headers=headers)


def csrf_of(request: Request) -> str:
    session = auth_of(request)[1]
    return session.csrf if session is not None else ""


@router.post("/login")
async def login(request: Request):
    """Check the token, start a session and keep its id in an HttpOnly, SameSite=Strict cookie.
    A client that sent wrong tokens waits (429, Retry-After) before it may try again."""
    if not request.app.state.token:
        return RedirectResponse("/", status_code=303)  # nothing to sign in to
    throttle, who = request.app.state.login_throttle, request.client.host if request.client else ""
    wait = throttle.wait(who)
    if wait:
        message = f"too many wrong tokens: try again in {wait} s"
        return sign_in(message, status=429, headers={"Retry-After": str(wait)})
    token = parse_qs((await request.body()).decode("utf-8", "replace")).get("token", [""])[0]
    if not token_ok(request.app.state.token, token):
        throttle.failed(who)
        return sign_in("wrong token")
    throttle.succeeded(who)
    session = request.app.state.sessions.start()
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        session.id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_SECONDS,
    )
    return response


@router.post("/logout")
def logout(request: Request):
    """End the session here (its cookie no longer signs anyone in) and drop the cookie."""
    session = auth_of(request)[1]
    if session is not None:
        request.app.state.sessions.end(session.id)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request,
    status: str | None = Query(default=None),
    tag: str | None = Query(default=None, max_length=1000),
    offset: int = Query(default=0, ge=0, le=100_000),
    limit: int = Query(default=50, ge=1, le=500),
    refresh: float = Query(default=REFRESH_SECONDS, ge=0, le=3600),
    client: Client = Depends(get_client),
) -> HTMLResponse:
    if not signed_in(request):
        return sign_in()
    status = status if status in STATUSES else None
    refused = tag if tag and not TAG.fullmatch(tag) else None
    tag = None if refused else tag or None
    health = client.health()
    jobs = client.jobs(status=status, limit=limit, offset=offset, tag=tag)
    total = None if tag else client.count_jobs(status)
    live = (
        f"<p class='health'>broker <b>{esc(health['broker'])}</b> "
        f"({'connected' if health['broker_connected'] else 'unreachable'}) · "
        f"<b class='n-workers'>{health['workers']}</b> live workers · queue depth "
        f"<b class='queue-depth'>{health['queue_depth']}</b></p>"
        f"<h3>Workers</h3>{workers_table(client.workers())}"
        f"<h3>Jobs</h3>{filters(status, tag, offset, limit, len(jobs), total)}"
        f"{jobs_table(client, jobs)}"
        f"<h3>Sweeps</h3>{sweeps_table(recent(client, SWEEP_ROWS, tag=tag), tag)}"
    )
    top = tag_form(status, tag, refused)
    return HTMLResponse(layout("dashboard", live, top=top, refresh=refresh, csrf=csrf_of(request)))


def about(s: Mapping[str, Any]) -> str:
    """What people said of the job: its tags, its note, the job it continues from."""
    parent = s.get("resume_from")
    parts = [
        f"tags {links}" if (links := tag_links(s.get("tags"))) else "",
        f"continues from <a class='parent' href='/ui/job/{esc(parent)}'>{esc(parent)}</a>"
        if isinstance(parent, str) and JOB_ID.fullmatch(parent)
        else "",
        f"<span class='note'>{esc(s['note'][:4000])}</span>"
        if isinstance(s.get("note"), str) and s["note"]
        else "",
    ]
    shown = " · ".join(p for p in parts if p)
    return f"<p class='about'>{shown}</p>" if shown else ""


def preference(metrics: Sequence[Mapping[str, Any]]) -> str:
    """A preference job's last rewards/margins and rewards/accuracies, and its margins curve."""
    line = preference_line(metrics)
    if not line:
        return ""
    return f"<p class='preference'>{esc(line)}</p>{margins_svg(metrics, width=640, height=220)}"


@router.get("/ui/job/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: str,
    refresh: float = Query(default=REFRESH_SECONDS, ge=0, le=3600),
    client: Client = Depends(get_client),
) -> HTMLResponse:
    if not signed_in(request):
        return sign_in()
    missing = HTMLResponse(layout("no such job", "<p>no such job</p>", refresh=0), 404)
    if not JOB_ID.fullmatch(job_id):
        return missing
    try:
        job = client.get_job(job_id)
        s = job.status()
    except JobNotFound:
        return missing
    final = s["status"] in FINAL
    result = s.get("result") or {}
    clean = request.app.state.redact.text
    error = (
        f"<pre class='error' style='color:crimson;white-space:pre-wrap'>"
        f"{esc(clean(str(s.get('error'))))}\n"
        f"{esc(clean(str(s.get('error_traceback') or ''))[-3000:])}</pre>"
        if s.get("error")
        else ""
    )
    metrics = job.metrics()
    method = (s.get("config") or {}).get("method") or "sft"
    live = (
        f"<h2>Job {esc(job_id)} {status_badge(s)} {cancel_button(s)}</h2>"
        f"<p>{progress_bar(s)} step <span class='step'>{esc(s.get('current_step') or 0)}</span>/"
        f"{esc(s.get('total_steps') or '?')}"
        + (f" · loss <b>{s['loss']:.4f}</b>" if s.get("loss") is not None else "")
        + f" · method <b class='method'>{esc(method)}</b>"
        + f" · worker {esc(s.get('worker') or '-')} · attempt {esc(s.get('attempt') or 1)}</p>"
        f"{about(s)}{loss_svg(metrics, width=640, height=220)}{preference(metrics)}{error}"
        f"<h3>Log</h3><pre class='logs'>{esc(clean(chr(10).join(job.logs(30))))}</pre>"
    )
    static = ""
    if final:
        if result:
            static += (
                f"<p><a class='download' href='/download/{esc(job_id)}'>Download the adapter "
                f"(zip)</a> · training {esc(result.get('training_duration_seconds'))} s</p>"
            )
        if s.get("report"):
            static += (
                f"<h3>Report</h3><iframe class='report' sandbox src='/report/{esc(job_id)}'>"
                "</iframe>"
            )
    return HTMLResponse(
        layout(
            f"job {job_id}",
            live,
            final=final,
            static=static,
            refresh=0 if final else refresh,
            csrf=csrf_of(request),
        )
    )
