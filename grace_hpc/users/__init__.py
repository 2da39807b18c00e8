"""Users of the router: per-user keys (`keys.py`), rate limits (`limits.py`) and cloud budgets (`budget.py`).

Pure logic and the key store's file I/O only; the router's use of them is `grace_hpc/router/users.py`.
"""
