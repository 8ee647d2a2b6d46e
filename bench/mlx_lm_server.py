"""Start ``mlx_lm.server`` for a side-by-side run: ``python -m bench.mlx_lm_server ARGS...``.

Two things differ from a plain ``python -m mlx_lm.server``, both so that
the comparison measures its generation engine rather than the machine:

- the same BLAS as the kmlx worker (on Linux CPU, mlx's bundled reference
  BLAS is ~35x slower; worker/models/blas.py);
- a listen backlog of 256 instead of ``http.server``'s 5: with 32 or more
  clients connecting at once, the kernel otherwise resets connections
  (the H200 run in the fast-backends issue lost 9 of 32 and 45 of 64
  streams that way).
"""

from __future__ import annotations

import sys


def main() -> None:
    from worker.models import ensure_fast_blas

    ensure_fast_blas()
    from http.server import ThreadingHTTPServer

    ThreadingHTTPServer.request_queue_size = 256
    from mlx_lm.server import main as server_main

    sys.argv = ["mlx_lm.server", *sys.argv[1:]]
    server_main()


if __name__ == "__main__":
    main()
