"""`vipfarm`: the command line.

  vipfarm validate FILE...           check Farm files, print every problem
  vipfarm stats --node N [--iface I] counters and ownership of a running node's filter
  vipfarm demo                       the lab demo (namespaces, agents, traffic)
  vipfarm keygen [--out FILE] [--force]  a new heartbeat key (printed, or written to FILE, mode 0600)
  vipfarm drain NODE [--kubeconfig F]    cluster mode: annotate Node NODE vipfarm.io/drain=true
  vipfarm undrain NODE [--kubeconfig F]  cluster mode: remove that annotation
  vipfarm console [--listen H:P] [--agent H:P]... [--farm-file F]... [--allow-actions]
                                     the web console (read-only unless --allow-actions)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from vipfarm.spec import FarmSpecError, load_farm_file


def cmd_validate(args) -> int:
    rc = 0
    for path in args.files:
        try:
            farm = load_farm_file(path, require_nodes=args.standalone)
            print(f"{path}: Farm {farm.name} OK ({len(farm.virtual_ips)} VIPs, {farm.buckets} buckets, "
                  f"{len(farm.rules)} rules, {len(farm.nodes)} nodes)")
        except FarmSpecError as e:
            print(f"{path}: {e}", file=sys.stderr)
            rc = 1
    return rc


def cmd_stats(args) -> int:
    from nodeagent.dataplane import PIN_ROOT, STATE_ROOT, InterfaceState
    from nodeagent.pinned_maps import read_counters, read_owned
    pin_root = args.pin_root or PIN_ROOT
    state_root = args.state_root or STATE_ROOT
    pin_dir = os.path.join(pin_root, args.node, args.iface)
    state = InterfaceState.load(os.path.join(state_root, args.node, f"{args.iface}.json"), args.node, args.iface)
    if not os.path.isdir(pin_dir):
        print(f"no filter pinned at {pin_dir}: is vipfarm-agent running for node {args.node} "
              f"on {args.iface}? (--pin-root changes where to look)", file=sys.stderr)
        return 1
    out = {"node": args.node, "iface": args.iface, "mode": state.mode, "farms": {}}
    for farm, slot in sorted(state.slots.items()):
        out["farms"][farm] = {"slot": slot, "owned_buckets": len(read_owned(pin_dir, slot)),
                              "counters": read_counters(pin_dir, slot)}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def cmd_demo(args) -> int:
    from .lab.demo import run_demo
    return run_demo(nodes=args.nodes, connections=args.connections)


def cmd_keygen(args) -> int:
    from vipfarm.heartbeat_keys import generate_key_text, parse_key_text
    text = generate_key_text()
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        _write_key_file(args.out, text, replace=args.force)
    except FileExistsError:
        print(f"vipfarm keygen: {args.out} exists and may hold the key your farm uses now; not overwritten. "
              f"Pass --force to replace it (then give every member the new key: see key rotation in the README)",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"vipfarm keygen: cannot write {args.out}: {e.strerror}; choose a path in a directory you can "
              f"write (--out FILE)", file=sys.stderr)
        return 1
    key_id = parse_key_text(text, args.out).signing.key_id.hex()
    print(f"event=heartbeat_key_written path={args.out} mode=0600 key_id={key_id}", file=sys.stderr)
    return 0


def _write_key_file(path: str, text: str, *, replace: bool) -> None:
    """Create `path` with mode 0600. Without `replace`, O_EXCL: an existing file is never
    touched. With it, the key goes to a new file beside `path` that then replaces it in one
    rename, so a reader sees the old key or the new one, never a part."""
    target = path
    if replace:
        path = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.new")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)                    # whatever the umask
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    if replace:
        try:
            os.replace(path, target)
        except BaseException:
            os.unlink(path)
            raise


def _api_error(e) -> str:
    """An ApiException as kubectl prints it: Error from server (Reason): message."""
    try:
        status = json.loads(e.body or "")
    except (TypeError, ValueError):
        status = None
    if isinstance(status, dict) and status.get("message"):
        return f"Error from server ({status.get('reason') or e.reason}): {status['message']}"
    return f"Error from server ({e.reason}): HTTP {e.status} {(e.body or '').strip()[:200]}"


def cmd_drain(args) -> int:
    """Set (drain) or remove (undrain) the annotation vipfarm.io/drain=true on a Node. The agent
    on that Node reads it with cordon (vipfarm.membership.node_drain_requested). Needs get and
    patch on nodes (README: "Drain")."""
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    return set_node_drain(args.node, args.cmd == "drain", timeout=args.timeout)


def set_node_drain(node_name: str, drain: bool, *, timeout: float = 10.0, out=None, err=None) -> int:
    """`vipfarm drain|undrain NODE` with its credentials from the environment (KUBECONFIG or
    in-cluster); what it says goes to `out` and `err` (stdout and stderr by default), the exit
    code is returned. The console's cluster-mode actions run this too (console_drain_action)."""
    from vipfarm import kubeconfig
    from vipfarm.membership import DRAIN_KEY, drain_annotation_set
    out = out or sys.stdout
    err = err or sys.stderr
    prog = f"vipfarm {'drain' if drain else 'undrain'}"
    try:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        core = client.CoreV1Api(client.ApiClient(kubeconfig.client_configuration()))
    except kubeconfig.NoCredentials as e:
        print(f"error: {prog} {node_name}: {e}", file=err)
        return 1
    try:
        node = core.read_node(node_name, _request_timeout=timeout).to_dict()
        meta, spec = node.get("metadata") or {}, node.get("spec") or {}
        was = drain_annotation_set((meta.get("annotations") or {}).get(DRAIN_KEY))
        if drain and was:
            print(f"node/{node_name} already draining ({DRAIN_KEY}=true)", file=out)
            return 0
        if not drain and DRAIN_KEY not in (meta.get("annotations") or {}):
            print(f"node/{node_name} has no {DRAIN_KEY} annotation; nothing to remove", file=out)
        else:
            body = {"metadata": {"annotations": {DRAIN_KEY: "true" if drain else None}}}
            node = core.patch_node(node_name, body, _content_type="application/merge-patch+json",
                                   _request_timeout=timeout).to_dict()
            spec = node.get("spec") or {}
            print(f"node/{node_name} {'draining' if drain else 'undrained'} "
                  f"({DRAIN_KEY}={'true' if drain else 'removed'})", file=out)
    except ApiException as e:
        print(_api_error(e), file=err)
        if e.status == 404:
            print(f"error: {prog}: there is no Node {node_name!r}; check the name with `kubectl get nodes`",
                  file=err)
        elif e.status in (401, 403):
            print(f"error: {prog}: your credentials may not change Node {node_name}; {prog} needs the verbs get "
                  f"and patch on the resource nodes (a ClusterRole; see Drain in the README)", file=err)
        return 1
    except Exception as e:      # connection refused, TLS, timeouts: the client raises urllib3 errors
        print(f"error: {prog} {node_name}: cannot reach the Kubernetes API ({type(e).__name__}: {e}); check "
              f"KUBECONFIG or --kubeconfig and that the API server is up", file=err)
        return 1
    if not drain and spec.get("unschedulable"):
        print(f"warning: node/{node_name} is still cordoned, so it stays drained; "
              f"run `kubectl uncordon {node_name}` to undrain it", file=err)
    return 0


def console_drain_action(timeout: float = 10.0):
    """The console's drain/undrain in cluster mode (a ConsoleSource's set_drain): exactly
    `vipfarm drain|undrain NODE`, its output as the page's message."""
    import io

    from .console import ActionResult

    def set_drain(node_name: str, drain: bool) -> ActionResult:
        text = io.StringIO()
        rc = set_node_drain(node_name, drain, timeout=timeout, out=text, err=text)
        return ActionResult(rc == 0, text.getvalue().strip())
    return set_drain


def cmd_console(args) -> int:
    """Serve the web console until SIGINT/SIGTERM (README "The web console")."""
    import signal

    from vipfarm.spec import FarmSpecError
    from .console import ActionsUnavailable, Console, is_loopback, make_server, parse_listen, standalone_source
    from .status_client import DEFAULT_AGENT, agents_of_farm_files
    try:
        host, _ = parse_listen(args.listen)
        agents = list(args.agent) + agents_of_farm_files(args.farm_file)
    except (ValueError, FarmSpecError) as e:
        print(f"vipfarm console: {e}", file=sys.stderr)
        return 2
    # The cluster source (the Farm status, with console_drain_action as set_drain) plugs in here.
    source = standalone_source(agents or [DEFAULT_AGENT], timeout=args.timeout)
    try:
        console = Console(source, allow_actions=args.allow_actions)
    except ActionsUnavailable as e:
        print(f"vipfarm console: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(console, args.listen)
    except OSError as e:
        print(f"vipfarm console: cannot listen on {args.listen}: {e.strerror or e}; choose another "
              f"--listen HOST:PORT (default 127.0.0.1:9480)", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vipfarm", description="vipfarm command line")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check Farm files")
    v.add_argument("files", nargs="+")
    v.add_argument("--standalone", action="store_true", help="require spec.nodes (standalone mode)")
    s = sub.add_parser("stats", help="counters of a running node's filter")
    s.add_argument("--node", required=True)
    s.add_argument("--iface", default="eth0")
    s.add_argument("--pin-root")
    s.add_argument("--state-root")
    s.add_argument("--json", action="store_true", help="one line of JSON")
    d = sub.add_parser("demo", help="run the namespace lab demo")
    d.add_argument("--nodes", type=int, default=3)
    d.add_argument("--connections", type=int, default=600)
    k = sub.add_parser("keygen", help="make a new heartbeat key")
    k.add_argument("--out", metavar="FILE", help="write the key to FILE (mode 0600) instead of printing it")
    k.add_argument("--force", action="store_true", help="replace FILE if it exists")
    for name, text in (("drain", "cluster mode: drain a Node (annotate it vipfarm.io/drain=true)"),
                       ("undrain", "cluster mode: undrain a Node (remove its vipfarm.io/drain annotation)")):
        dr = sub.add_parser(name, help=text, description=text)
        dr.add_argument("node", metavar="NODE", help="the Kubernetes Node name")
        dr.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster credentials, then $KUBECONFIG "
                                             "or ~/.kube/config)")
        dr.add_argument("--timeout", type=float, default=10.0, help="seconds per API request (default 10)")
    c = sub.add_parser("console", help="serve the web console (read-only unless --allow-actions)",
                       description="A small web page showing every Farm live: members, the bucket map, packet rates, "
                                   "failovers, drains and rejoins. Standalone mode asks the agents' /status.")
    c.add_argument("--listen", default="127.0.0.1:9480", metavar="HOST:PORT",
                   help="where to serve the page (default 127.0.0.1:9480: this machine only)")
    c.add_argument("--agent", action="append", default=[], metavar="HOST:PORT",
                   help="an agent's --observe-address to ask for /status; repeat for each member "
                        "(default 127.0.0.1:9478 when neither --agent nor --farm-file is given)")
    c.add_argument("--farm-file", action="append", default=[], metavar="FILE",
                   help="a standalone Farm file: ask every member in spec.nodes at its address, port 9478")
    c.add_argument("--allow-actions", action="store_true",
                   help="show drain/undrain buttons and accept them (cluster mode only; refused in standalone mode)")
    c.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each agent (default 1)")
    args = p.parse_args(argv)
    return {"validate": cmd_validate, "stats": cmd_stats, "demo": cmd_demo, "keygen": cmd_keygen,
            "drain": cmd_drain, "undrain": cmd_drain, "console": cmd_console}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
