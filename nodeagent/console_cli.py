"""`vipfarm console`: its flags, its source, and serving until SIGINT/SIGTERM (README "The web
console"; the server is nodeagent/console.py).

  standalone  the agents' /status: --agent HOST:PORT (repeatable), or every member of
              --farm-file F at its address and --observe-port (9478); no actions (the farm
              file is the truth), so --allow-actions is refused
  cluster     (to plug in) a ConsoleSource reading the Farm status, whose set_drain is the
              `vipfarm drain|undrain` code that nodeagent/cli.py passes in as `drain_action`

Exit codes: 0 stopped by a signal; 1 cannot listen; 2 a usage error (a bad flag, a farm file
that does not parse, --allow-actions where the source cannot act).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable

from vipfarm.spec import FarmSpecError, load_farm_file

from vipfarm.listen_address import parse_listen_address

from .console import (DEFAULT_LISTEN, ActionResult, ActionsUnavailable, Console, cluster_source, is_loopback,
                      make_server, standalone_source)
from .status_cli import CLUSTER, STANDALONE, agent_addresses, choose_mode

DEFAULT_OBSERVE_PORT = 9478


def add_parser(sub) -> None:
    text = "serve the web console: every farm live (read-only unless --allow-actions)"
    c = sub.add_parser("console", help=text, description=text + ". Members, the bucket map, packet rates, "
                       "failovers, drains and rejoins; standalone mode asks the agents' /status.")
    c.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to serve the page (default {DEFAULT_LISTEN}: this machine only)")
    c.add_argument("--agent", action="append", default=[], metavar="HOST:PORT",
                   help="an agent's observe address to ask for /status (repeatable; default 127.0.0.1:9478 "
                        "when neither --agent nor --farm-file is given)")
    c.add_argument("--farm-file", action="append", default=[], metavar="FILE",
                   help="a standalone Farm file: ask every member in spec.nodes at its address (repeatable)")
    c.add_argument("--observe-port", type=int, default=DEFAULT_OBSERVE_PORT, metavar="PORT",
                   help=f"the agents' observe port for --farm-file members (default {DEFAULT_OBSERVE_PORT})")
    c.add_argument("--cluster", action="store_true",
                   help="read the Farms and FarmNodes from the API server (as `vipfarm status --cluster`)")
    c.add_argument("--kubeconfig", metavar="FILE", help="cluster: kubeconfig file (implies --cluster; default: "
                                                        "in-cluster credentials, then $KUBECONFIG or ~/.kube/config)")
    c.add_argument("--allow-actions", action="store_true",
                   help="show drain/undrain buttons and accept them (cluster mode only; refused in standalone mode)")
    c.add_argument("--timeout", type=float, default=1.0,
                   help="seconds to wait for each agent (default 1; they are asked at once)")


def run(args, drain_action: Callable[[str, bool], ActionResult] | None = None) -> int:
    """Serve until SIGINT/SIGTERM. `drain_action` is what a cluster source acts with (the
    standalone source takes none)."""
    try:
        listen = parse_listen_address(args.listen, "--listen", lowest_port=0)
        if listen is None:
            raise ValueError(f"--listen {args.listen!r}: the console needs an address to serve on, e.g. {DEFAULT_LISTEN}")
        host = listen[0]
        mode = choose_mode(args, os.environ)
        agents = agent_addresses(args) if mode == STANDALONE else []
    except (ValueError, FarmSpecError) as e:
        print(f"vipfarm console: {e}", file=sys.stderr)
        return 2
    if mode == CLUSTER:
        source = cluster_source(args.kubeconfig, timeout=args.timeout, set_drain=drain_action)
    else:
        source = standalone_source(agents, timeout=args.timeout)
    try:
        console = Console(source, allow_actions=args.allow_actions)
    except ActionsUnavailable as e:
        print(f"vipfarm console: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(console, args.listen)
    except OSError as e:
        print(f"vipfarm console: cannot listen on {args.listen}: {e.strerror or e}; choose another "
              f"--listen HOST:PORT (default {DEFAULT_LISTEN})", file=sys.stderr)
        return 1
    if not is_loopback(host):
        print(f"warning: vipfarm console listens on {args.listen}, beyond this machine, with no authentication: "
              f"anyone who reaches it sees every farm" + (" and may drain nodes" if args.allow_actions else ""),
              file=sys.stderr)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    print(f"event=console_listening url={server.url} mode={source.mode} "
          f"actions={'on' if args.allow_actions else 'off'} " + f'source="{source.description}"',
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
