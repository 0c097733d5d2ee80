"""vipfarm-agent: the node agent's entry point (standalone or cluster mode).

  vipfarm-agent --farm-file farm.yaml --node n1     standalone (nodeagent/standalone.py)
  vipfarm-agent --cluster                           cluster mode (nodeagent/cluster.py)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from vipfarm.spec import FarmSpecError, node_name_problem

from . import capabilities
from .bpf_program import DataplaneError
from .dataplane import PIN_ROOT, STATE_ROOT
from vipfarm.listen_address import parse_listen_address

from .netconfig import InterfaceError
from .observe import DEFAULT_OBSERVE_ADDRESS, ObserveError
from .standalone import StandaloneAgent


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


def dump_threads_on_sigusr1() -> None:
    """`kill -USR1 <agent>` writes every thread's Python stack to stderr (the agent's log) and
    the agent goes on: what a stuck main loop or heartbeat thread is doing, even inside a
    blocking call (faulthandler's handler runs in C, not between bytecodes)."""
    import faulthandler
    import signal
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    except (AttributeError, ValueError, OSError):   # io.UnsupportedOperation: stderr without a file descriptor
        pass                                         # (an embedding, a test's capture): no dump, nothing else lost


def keep_the_heartbeat_thread_prompt() -> None:
    """The heartbeat thread shares the interpreter with API calls and compiles: hand the GIL
    over every 1 ms instead of 5, and keep the start-up objects out of the collector's scans
    (gc.freeze), so neither a busy main thread nor a full collection delays a heartbeat much
    (bench/soak.py measures the worst send delay)."""
    import gc
    sys.setswitchinterval(0.001)
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vipfarm-agent", description="vipfarm node agent")
    p.add_argument("--farm-file", action="append", default=[],
                   help="standalone mode: a Farm YAML whose spec.nodes lists the members (repeatable)")
    p.add_argument("--node", help="this node's name as listed in spec.nodes (standalone)")
    p.add_argument("--cluster", action="store_true", help="cluster mode: watch Farm resources")
    p.add_argument("--pin-root", default=PIN_ROOT, help="bpffs directory for pinned maps")
    p.add_argument("--state-root", default=STATE_ROOT, help="directory for the agent's local state")
    p.add_argument("--refresh", type=float, default=60.0,
                   help="cluster mode: rewrite an unchanged status report at most this often (s, >= 30)")
    p.add_argument("--leave-on-exit", action="store_true",
                   help="cluster mode: remove VIPs and XDP on SIGTERM instead of leaving them for the next agent")
    p.add_argument("--observe-address", default=os.environ.get("VIPFARM_OBSERVE_ADDRESS", DEFAULT_OBSERVE_ADDRESS),
                   help="HOST:PORT of the /metrics, /status, /healthz and /readyz endpoint, or off "
                        f"(default {DEFAULT_OBSERVE_ADDRESS}, or $VIPFARM_OBSERVE_ADDRESS)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    try:
        args.observe = parse_listen_address(args.observe_address, "--observe-address")
    except ValueError as e:
        print(f"vipfarm-agent: {e}\nNothing was changed on this node.", file=sys.stderr)
        return 2
    setup_logging(args.log_level)
    dump_threads_on_sigusr1()
    keep_the_heartbeat_thread_prompt()
    name = args.node or (os.environ.get("NODE_NAME") if args.cluster else None)
    problem = node_name_problem(name) if name else None
    if problem:
        # The name goes into pin paths and a compiler define: refuse it before anything happens.
        print(f"vipfarm-agent: node name {name!r}: {problem}\nNothing was changed on this node.", file=sys.stderr)
        return 2
    lacking = capabilities.missing(capabilities.effective())
    if lacking:
        print(capabilities.refusal(lacking), file=sys.stderr)
        return 1
    if args.cluster:
        from .cluster import run_cluster_agent
        try:
            return run_cluster_agent(args)
        except ObserveError as e:
            print(f"vipfarm-agent: {e}\nNothing was changed on this node.", file=sys.stderr)
            return 1
    if not args.farm_file or not args.node:
        p.error("standalone mode needs --farm-file FILE and --node NAME (or use --cluster)")
    try:
        return StandaloneAgent(args.farm_file, args.node, args.pin_root, args.state_root, args.observe).run()
    except FarmSpecError as e:
        print(f"vipfarm-agent: {e}\nNothing was changed on this node.", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"vipfarm-agent: {e.args[0]}\nNothing was changed on this node.", file=sys.stderr)
        return 2
    except ObserveError as e:
        print(f"vipfarm-agent: {e}\nNothing was changed on this node.", file=sys.stderr)
        return 1
    except (DataplaneError, InterfaceError) as e:
        print(f"vipfarm-agent: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
