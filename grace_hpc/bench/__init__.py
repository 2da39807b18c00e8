"""`grace-hpc bench`: a serving benchmark per endpoint, per model or per category, and measured capacity.

    workload.py   pure: prompts (synthetic or a dataset file) -> OpenAI request bodies
    stream.py     pure: an SSE stream's chunks -> token events and usage
    loadgen.py    the only HTTP: closed-loop (N in flight) and open-loop (fixed rate) load, one result per request
    stats.py      pure: per-request results -> per-level throughput and latency percentiles
    probes.py     engine metrics (vLLM / llama.cpp `/metrics`) and GPU utilisation (`nvidia-smi`) during a level
    targets.py    which endpoints to measure: registry records, or a model or category through the router
    runner.py     targets x load levels -> a BenchRun
    capacity.py   the sustainable throughput at a latency target, written into the registry for the router
    report.py     the JSON document, the rich table and the seed's expected rows
    plots.py      PNG plots with matplotlib (the `bench` extra)
    submit.py     `bench submit`: the same benchmark as a SLURM job next to the server
"""
