"""`vipfarm`: the command line.

  vipfarm validate FILE...           check Farm files, print every problem
  vipfarm stats --node N [--iface I] counters and ownership of a running node's filter
  vipfarm lab demo [--json]          the lab demo: a farm in namespaces, traffic, a crash, a drain
  vipfarm demo [--json]              the same
  vipfarm keygen [--out FILE] [--force]  a new heartbeat key (printed, or written to FILE, mode 0600)
  vipfarm drain NODE [--kubeconfig F]    cluster mode: annotate Node NODE vipfarm.io/drain=true
  vipfarm undrain NODE [--kubeconfig F]  cluster mode: remove that annotation
  vipfarm status [FARM] [-o wide|json|yaml]  each farm's members, buckets, packets, last failover
                                     (standalone: --agent/--farm-file; cluster: --cluster; nodeagent/status_cli.py)
  vipfarm console [--listen H:P] [--allow-actions]  the live web console, same modes (nodeagent/console_cli.py)

`kubectl-vipfarm` (kubectl_main) is the same command as a kubectl plugin: `kubectl vipfarm status`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from vipfarm.spec import FarmSpecError, load_farm_file

from . import status_cli
from .kubectl_style import api_error_text


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


def cmd_console(args) -> int:
    from .console_cli import run
    return run(args, drain_action=console_drain_action(timeout=10.0))


def console_drain_action(timeout: float = 10.0):
    """The console's drain/undrain for a cluster source (ConsoleSource.set_drain): cmd_drain
    itself, so the page's button does exactly what `vipfarm drain|undrain NODE` does, and what
    it prints (to stdout and stderr, captured here) is the page's message. One at a time: the
    capture swaps sys.stdout/sys.stderr, which nothing else in the console writes to meanwhile
    (its one log line is printed after)."""
    import contextlib
    import io
    import threading

    from .console import ActionResult
    lock = threading.Lock()

    def set_drain(node: str, drain: bool) -> ActionResult:
        text = io.StringIO()
        with lock, contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            rc = cmd_drain(argparse.Namespace(cmd="drain" if drain else "undrain", node=node, kubeconfig=None,
                                              timeout=timeout))
        return ActionResult(rc == 0, text.getvalue().strip())
    return set_drain


def cmd_demo(args) -> int:
    from .lab.demo import run_demo
    return run_demo(json_out=args.json)


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


def cmd_drain(args) -> int:
    """Set (drain) or remove (undrain) the annotation vipfarm.io/drain=true on a Node. The agent
    on that Node reads it with cordon (vipfarm.membership.node_drain_requested). Needs get and
    patch on nodes (README: "Drain")."""
    from vipfarm import kubeconfig
    from vipfarm.membership import DRAIN_KEY, drain_annotation_set
    drain = args.cmd == "drain"
    prog = f"vipfarm {args.cmd}"
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        core = client.CoreV1Api(client.ApiClient(kubeconfig.client_configuration()))
    except kubeconfig.NoCredentials as e:
        print(f"error: {prog} {args.node}: {e}", file=sys.stderr)
        return 1
    try:
        node = core.read_node(args.node, _request_timeout=args.timeout).to_dict()
        meta, spec = node.get("metadata") or {}, node.get("spec") or {}
        was = drain_annotation_set((meta.get("annotations") or {}).get(DRAIN_KEY))
        if drain and was:
            print(f"node/{args.node} already draining ({DRAIN_KEY}=true)")
            return 0
        if not drain and DRAIN_KEY not in (meta.get("annotations") or {}):
            print(f"node/{args.node} has no {DRAIN_KEY} annotation; nothing to remove")
        else:
            body = {"metadata": {"annotations": {DRAIN_KEY: "true" if drain else None}}}
            node = core.patch_node(args.node, body, _content_type="application/merge-patch+json",
                                   _request_timeout=args.timeout).to_dict()
            spec = node.get("spec") or {}
            print(f"node/{args.node} {'draining' if drain else 'undrained'} "
                  f"({DRAIN_KEY}={'true' if drain else 'removed'})")
    except ApiException as e:
        print(api_error_text(e), file=sys.stderr)
        if e.status == 404:
            print(f"error: {prog}: there is no Node {args.node!r}; check the name with `kubectl get nodes`",
                  file=sys.stderr)
        elif e.status in (401, 403):
            print(f"error: {prog}: your credentials may not change Node {args.node}; {prog} needs the verbs get "
                  f"and patch on the resource nodes (a ClusterRole; see Drain in the README)", file=sys.stderr)
        return 1
    except Exception as e:      # connection refused, TLS, timeouts: the client raises urllib3 errors
        print(f"error: {prog} {args.node}: cannot reach the Kubernetes API ({type(e).__name__}: {e}); check "
              f"KUBECONFIG or --kubeconfig and that the API server is up", file=sys.stderr)
        return 1
    if not drain and spec.get("unschedulable"):
        print(f"warning: node/{args.node} is still cordoned, so it stays drained; "
              f"run `kubectl uncordon {args.node}` to undrain it", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None, prog: str = "vipfarm") -> int:
    p = argparse.ArgumentParser(prog=prog, description="vipfarm command line")
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
    demo_text = ("the lab demo (root): 3 nodes in network namespaces with real agents; traffic and its "
                 "distribution, a node crash and the failover time the clients saw, a rejoin and a drain "
                 "under long-lived connections, then everything removed")
    lab = sub.add_parser("lab", help="the namespace lab", description="the namespace lab")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True)
    for d in (lab_sub.add_parser("demo", help=demo_text, description=demo_text),
              sub.add_parser("demo", help="the same as `vipfarm lab demo`", description=demo_text)):
        d.add_argument("--json", action="store_true",
                       help="print one JSON summary on stdout at the end (the progress goes to stderr)")
    k = sub.add_parser("keygen", help="make a new heartbeat key")
    k.add_argument("--out", metavar="FILE", help="write the key to FILE (mode 0600) instead of printing it")
    k.add_argument("--force", action="store_true", help="replace FILE if it exists")
    from . import console_cli
    console_cli.add_parser(sub)
    for name, text in (("drain", "cluster mode: drain a Node (annotate it vipfarm.io/drain=true)"),
                       ("undrain", "cluster mode: undrain a Node (remove its vipfarm.io/drain annotation)")):
        dr = sub.add_parser(name, help=text, description=text)
        dr.add_argument("node", metavar="NODE", help="the Kubernetes Node name")
        dr.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster credentials, then $KUBECONFIG "
                                             "or ~/.kube/config)")
        dr.add_argument("--timeout", type=float, default=10.0, help="seconds per API request (default 10)")
    status_cli.add_parser(sub)
    args, extra = p.parse_known_args(argv)
    if extra:       # said by the sub-command's parser, so its usage line is the one shown
        sub.choices[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "status":
        return status_cli.run(args, prog)
    return {"validate": cmd_validate, "stats": cmd_stats, "demo": cmd_demo, "lab": cmd_demo, "keygen": cmd_keygen,
            "drain": cmd_drain, "undrain": cmd_drain, "console": cmd_console}[args.cmd](args)


def kubectl_main() -> int:
    """The kubectl plugin `kubectl-vipfarm`: kubectl runs it for `kubectl vipfarm ...` with the
    words after `vipfarm`, so it is the same command under kubectl's name."""
    return main(prog="kubectl vipfarm")


if __name__ == "__main__":
    sys.exit(main())
