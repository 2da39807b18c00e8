"""The router: one OpenAI-compatible URL in front of every live endpoint, by task category, with cloud fallback.

    policy.py      pure choice: category resolution, the ordered attempts, whether a prompt fits a context
    failures.py    pure attribution: each failure kind, its side, whether it ejects, what the client sees
    health.py      in-flight counts, ejection and exponential cooldown (state only)
    upstream.py    one relayed call with explicit timeouts; streaming with backpressure; client vs upstream side
    tokens.py      exact prompt counts from an engine's /tokenize, cached per endpoint
    state.py       the application's state; app.py the application, its middleware and lifespan
    proxy.py       the POST handlers; views.py the GET pages; background.py the supervised background tasks
    auth.py, metrics.py, errors.py, access_log.py   keys, Prometheus text, OpenAI error bodies, JSON access log
    serve.py       run in the foreground or in a thread
    users.py       per-user keys, rate limits, cloud budgets and the usage ledger's hooks (docs/usage.md)
    coldstart.py   demand for the fleet controller; holding a request until the first replica is ready
    samples.py     recent load per endpoint and category (a bounded ring, O(1) per request) for the dashboard
    dashboard.py, dashboard_view.py, fleet_jobs.py, models_api.py, static/   the live page at /ui/ and its JSON API
"""

from grace_hpc.router.app import create_app
from grace_hpc.router.serve import run_router, serve_in_thread

__all__ = ["create_app", "run_router", "serve_in_thread"]
