"""``odie batch`` on a Ray cluster: shards of the input, one engine each, one cluster-wide rate budget.

Needs the ``ray`` extra (``pip install 'odie-async[ray]'``); only ``cluster.py``
imports Ray, and only when a run asks for it.
"""
