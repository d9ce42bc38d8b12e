"""``ftkit serve``: the HTTP API and the web dashboard, a thin layer over ``ftkit.client.Client``.

Needs the ``server`` extra (FastAPI, uvicorn, python-multipart); ``import ftkit`` never loads it.

    app.py      the app factory: routers, auth, limits, error mapping; ``serve()`` runs uvicorn
    routes/     one router per resource: datasets (upload), jobs, health
    page.py     the server-rendered dashboard
    models.py   pydantic request and response models (the OpenAPI contract)
    errors.py   ftkit's error tree -> status codes, once
    auth.py     the bearer-token dependency
    limits.py   request size limits and the streamed multipart upload
"""
