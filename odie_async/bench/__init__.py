"""``odie bench``: measure an endpoint's capacity with your own requests, then run at it.

``workload`` builds the requests (a Batch API input file, or synthetic prompts),
``load`` drives them at a concurrency or a request rate and times every streamed
answer, ``client`` watches the client's own CPU and event loop, ``points``
turns one load level's samples into distributions, ``sweep`` finds the knee and
``report`` writes ``results.json``, the plot and ``recommended.yaml``.
"""
