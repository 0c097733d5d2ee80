"""vipfarm-operator: runs the Kopf operator cluster-wide with peering (one active replica)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vipfarm-operator", description="vipfarm Kopf operator")
    p.add_argument("--log-level", default=os.environ.get("VIPFARM_LOG_LEVEL", "info"))
    p.add_argument("--liveness", default=os.environ.get("VIPFARM_LIVENESS", ""),
                   help="e.g. http://0.0.0.0:8080/healthz")
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)
    asyncio.run(kopf.operator(clusterwide=True, standalone=False,
                              peering_name=os.environ.get("VIPFARM_PEERING_NAME", "vipfarm"),
                              liveness_endpoint=args.liveness or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
