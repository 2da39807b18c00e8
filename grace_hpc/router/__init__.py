"""The router: one OpenAI-compatible URL in front of every live endpoint, by task category, with cloud fallback.

    policy.py   pure choice: category resolution and the ordered attempts over a registry snapshot
    health.py   in-flight counts, ejection and exponential cooldown (state only)
    upstream.py one relayed call with explicit timeouts; streaming with backpressure
    app.py      the aiohttp application and its handlers
    serve.py    run in the foreground or in a thread
    samples.py  recent load per endpoint and category (a bounded ring, O(1) per request) for the dashboard
    dashboard.py, dashboard_view.py, fleet_jobs.py, static/   the live page at /ui/ and its JSON API
"""

from grace_hpc.router.app import create_app
from grace_hpc.router.serve import run_router, serve_in_thread

__all__ = ["create_app", "run_router", "serve_in_thread"]
