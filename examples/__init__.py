"""Example workflows, each a module of tasks a supervisor can import.

- :mod:`examples.static`: seed 001's pre-determined DAG (start, 1, 2, end), a static Graph.
- :mod:`examples.branching`: ``coin`` ends as heads or as tails (``Shape(OneOf(...))``).
- :mod:`examples.random_map`: ``A -> M* -> B`` with 0+ copies of M (``Shape(Repeat(M))``).
- :mod:`examples.map_reduce`: a collection in, a collection out, then a reduce.
- :mod:`examples.subgraph`: ``A -> X -> B`` where X is ``N -> M`` or ``J -> K``.
- :mod:`examples.broken_promise`: a task that breaks its promise and is terminated.
- :mod:`examples.weekly_email`: seed 004's weekly email, with retries; each email sent once.
- :mod:`examples.reminder`: a durable ``ctx.sleep`` that holds no process.
- :mod:`examples.approval`: waits for a person's signal (``ctx.signal``) without a process.

``plait demo`` runs them all but ``approval`` (it waits for a signal); ``plait dev``
serves them all by default.
"""
