"""``ftkit serve``: the HTTP API and the web dashboard, a thin layer over ``ftkit.client.Client``.

Needs the ``server`` extra (FastAPI, uvicorn, python-multipart); ``import ftkit`` never loads it.

    app.py      the app factory: routers, auth, limits, error mapping; ``serve()`` runs uvicorn
    routes/     one router per resource: datasets (upload), jobs, health
    page.py     the server-rendered dashboard
    models.py   pydantic request and response models (the OpenAPI contract)
    errors.py   ftkit's error tree -> status codes, once (and 422s without non-finite numbers)
    auth.py     who asks: bearer token or session, checked before a body is read
    sessions.py dashboard sessions (a random id in the cookie) and the sign-in throttle
    csrf.py     forged requests from other origins refused; no page can be framed
    redact.py   ANSI codes and the server's folders out of what clients see
    reservations.py  job ids reserved at upload expire
    docs.py     Swagger UI from the installed package, not a CDN
    limits.py   request size limits and the streamed multipart upload
"""
