"""vipfarm-operator: runs the Kopf operator cluster-wide with peering (one active replica)."""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import sys

from vipfarm.listen_address import parse_listen_address

from . import metrics
from .metrics import DEFAULT_METRICS_ADDRESS

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
    p.add_argument("--metrics-address", default=os.environ.get("VIPFARM_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
                   help=f"HOST:PORT of the Prometheus /metrics endpoint, or off (default {DEFAULT_METRICS_ADDRESS})")
    args = p.parse_args(argv)
    try:
        metrics_address = parse_listen_address(args.metrics_address, "--metrics-address")
    except ValueError as e:
        print(f"vipfarm-operator: {e}", file=sys.stderr)
        return 2
    limit_malloc_arenas()
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        metrics.serve(metrics_address)
    except OSError as e:
        print(f"vipfarm-operator: --metrics-address {args.metrics_address}: cannot listen there "
              f"({e.strerror or e}); pick a free port, or pass --metrics-address off", file=sys.stderr)
        return 1
    import kopf

    from . import handlers, replica  # noqa: F401  (registers the handlers)
    replica.install()     # before kopf.operator(): a standby's own threads must not write
    asyncio.run(kopf.operator(clusterwide=True, standalone=False,
                              peering_name=os.environ.get("VIPFARM_PEERING_NAME", "vipfarm"),
                              liveness_endpoint=args.liveness or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
