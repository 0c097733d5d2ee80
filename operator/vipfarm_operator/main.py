"""vipfarm-operator: runs the Kopf operator cluster-wide with peering (one active replica)."""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import sys

M_ARENA_MAX = -8


def limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with 8 workers plus Kopf's
    executor the RSS grows with fragmentation, not data. Two arenas hold it down (the
    usual MALLOC_ARENA_MAX=2 of multi-threaded Python services), set before threads start."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n)
    except OSError:      # not glibc: nothing to tune
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vipfarm-operator", description="vipfarm Kopf operator")
    p.add_argument("--log-level", default=os.environ.get("VIPFARM_LOG_LEVEL", "info"))
    p.add_argument("--liveness", default=os.environ.get("VIPFARM_LIVENESS", ""),
                   help="e.g. http://0.0.0.0:8080/healthz")
    args = p.parse_args(argv)
    limit_malloc_arenas()
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    import kopf

    from . import handlers, replica  # noqa: F401  (registers the handlers)
    replica.install()     # before kopf.operator(): a standby's own threads must not write
    asyncio.run(kopf.operator(clusterwide=True, standalone=False,
                              peering_name=os.environ.get("VIPFARM_PEERING_NAME", "vipfarm"),
                              liveness_endpoint=args.liveness or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
