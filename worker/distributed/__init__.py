"""One model over several processes (ranks) with ``mlx.distributed``.

A worker started by MLX's launcher (``mlx.launch --backend ring|jaccl|mpi
--hostfile HOSTS -- kmlx-worker -m MODEL ...``) runs as one rank of a group.
Rank 0 is the worker gateways see: it alone speaks ZeroMQ and runs the
scheduler. The other ranks (followers) hold their share of the weights and
of every running sequence's KV, and run the same batch steps: rank 0 sends
them, before each step, what it decided (``ops.py``: sequences added and
removed, states taken).
Sampling, grammars, penalties and stop strings stay on rank 0; its sampled
tokens reach the other ranks by one all-reduce after each forward
(``leader.py``). Docs: docs/distributed.md.

Modules: ``group`` (the launch environment, the rank-0 broadcast channel),
``ops`` (every rank-0 -> rank message, typed), ``model`` (tensor or pipeline
split, the per-rank forward), ``launch`` (joining the group; rank 0's
parts), ``leader`` (rank 0's mirrored batch and sampler), ``follower``
(every other rank's loop).

A single-process worker imports only ``group`` and ``launch`` (no MLX: to
read the launcher's environment and the ``--pipeline`` flag).
"""
