"""`vipfarm status [FARM]` (also `kubectl vipfarm status`): one picture of each farm, in
either mode (README "Status").

  standalone  ask agents' GET /status (nodeagent/status_client.py): --agent HOST:PORT
              (repeatable), or every member of --farm-file F at its address and
              --observe-port (9478); merged by vipfarm.status_view.merge_agent_statuses
  cluster     read the Farms and FarmNodes from the API server (the credentials
              vipfarm.kubeconfig loads, as `vipfarm drain` does); one view per Farm by
              vipfarm.status_view.farm_view_from_resource

Mode (`choose_mode`): --agent/--farm-file mean standalone; --cluster or --kubeconfig mean
cluster; otherwise cluster when credentials exist (in-cluster, $KUBECONFIG, ~/.kube/config),
as kubectl would use them, else the local agent 127.0.0.1:9478.

Exit codes: 0 everything asked answered; 1 an error (the FARM is not found, the API refused,
or an agent did not answer: each is named on stderr and what did answer is still printed);
2 a usage error.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from typing import Mapping

from vipfarm.status_printer import OUTPUTS, render
from vipfarm.status_view import farm_view_from_resource, merge_agent_statuses

from .kubectl_style import api_error_text
from .status_client import DEFAULT_AGENT, fetch_all

DEFAULT_OBSERVE_PORT = 9478
GROUP, VERSION = "vipfarm.io", "v1alpha1"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
STANDALONE, CLUSTER = "standalone", "cluster"


class UsageError(ValueError):
    """A command line this command cannot run (exit 2)."""


def add_parser(sub) -> None:
    text = "one picture of each farm: members, state, buckets, packets, last failover"
    p = sub.add_parser("status", help=text, description=text + ". Standalone: asks the agents' /status; "
                       "cluster: reads the Farms and FarmNodes (README: Status).")
    p.add_argument("farm", nargs="?", metavar="FARM", help="only this farm")
    p.add_argument("--agent", action="append", default=[], metavar="HOST:PORT",
                   help="standalone: ask this agent's observe address (repeatable; default 127.0.0.1:9478)")
    p.add_argument("--farm-file", action="append", default=[], metavar="FILE",
                   help="standalone: ask every member listed in this farm file (repeatable)")
    p.add_argument("--observe-port", type=int, default=DEFAULT_OBSERVE_PORT, metavar="PORT",
                   help=f"the agents' observe port for --farm-file members (default {DEFAULT_OBSERVE_PORT})")
    p.add_argument("--cluster", action="store_true", help="read the Farms and FarmNodes from the API server")
    p.add_argument("--kubeconfig", metavar="FILE", help="cluster: kubeconfig file (implies --cluster; default: "
                                                        "in-cluster credentials, then $KUBECONFIG or ~/.kube/config)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="accepted as kubectl does and ignored: Farms are cluster-scoped")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="accepted and ignored, as -n")
    p.add_argument("-o", "--output", default="table", choices=[o for o in OUTPUTS if o != "table"],
                   help="wide: more columns; json/yaml: the farm views (a list; one object when FARM is given)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")


def choose_mode(args, env: Mapping[str, str], exists=os.path.exists) -> str:
    """standalone or cluster, from the flags and what credentials this process has."""
    standalone_flags = bool(args.agent or args.farm_file)
    cluster_flags = bool(args.cluster or args.kubeconfig)
    if standalone_flags and cluster_flags:
        raise UsageError("--agent/--farm-file (standalone) and --cluster/--kubeconfig (cluster) exclude each other; "
                         "pick one mode")
    if standalone_flags:
        return STANDALONE
    if cluster_flags:
        return CLUSTER
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST")) and exists(IN_CLUSTER_TOKEN)
    kubeconfigs = [p for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p] or \
        [os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")]
    return CLUSTER if in_cluster or any(exists(p) for p in kubeconfigs) else STANDALONE


def agent_addresses(args) -> list[str]:
    """Whom to ask in standalone mode, in order, each once."""
    from vipfarm.spec import FarmSpecError, load_farm_file
    out = []
    for a in args.agent:
        if "://" not in a and not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\s]+):\d{1,5}", a):
            raise UsageError(f"--agent {a!r}: expected HOST:PORT (e.g. 198.51.100.1:9478, [2001:db8::1]:9478) or a URL")
        out.append(a)
    if not 1 <= args.observe_port <= 65535:
        raise UsageError(f"--observe-port {args.observe_port}: a port is 1-65535")
    for path in args.farm_file:
        try:
            farm = load_farm_file(path, require_nodes=True)
        except FarmSpecError as e:
            raise UsageError(f"--farm-file {path}: {e}") from None
        except OSError as e:
            raise UsageError(f"--farm-file {path}: {e.strerror}") from None
        for n in farm.nodes:
            host = str(n.address)
            out.append(f"[{host}]:{args.observe_port}" if ":" in host else f"{host}:{args.observe_port}")
    return list(dict.fromkeys(out)) or [DEFAULT_AGENT]


def run(args, prog: str = "vipfarm") -> int:
    try:
        mode = choose_mode(args, os.environ)
        agents = agent_addresses(args) if mode == STANDALONE else []
    except UsageError as e:
        print(f"{prog} status: {e}", file=sys.stderr)
        return 2
    if mode == CLUSTER:
        views, rc = _cluster_views(args, prog)
        if views is None:
            return rc
    else:
        views, rc = _standalone_views(args, agents)
    if not views and rc == 0 and args.farm is None:
        print("No farms found." if mode == CLUSTER else "No farms found: the agents that answered serve none.",
              file=sys.stderr)
    if views or args.output in ("json", "yaml") and args.farm is None:
        sys.stdout.write(render(views, args.output, datetime.datetime.now(datetime.timezone.utc),
                                single=args.farm is not None))
    return rc


def _standalone_views(args, agents: list[str]) -> tuple[list[dict], int]:
    answers = fetch_all(agents, args.timeout)
    for line in answers.errors:
        print(f"error: {line}", file=sys.stderr)
    rc = 1 if answers.errors else 0
    if not answers.statuses:
        print(f"error: no agent answered (asked {', '.join(agents)})", file=sys.stderr)
        return [], 1
    views = merge_agent_statuses(answers.statuses, only_farm=args.farm)
    if args.farm is not None and not views:
        nodes = ", ".join(s["node"] for s in answers.statuses)
        print(f'error: farm "{args.farm}" not found: no agent that answered serves it (answered: {nodes})',
              file=sys.stderr)
        return [], 1
    return views, rc


def cluster_views(kubeconfig_file: str | None, farm: str | None, timeout: float,
                  prog: str = "vipfarm status") -> tuple[list[dict] | None, list[str]]:
    """The farm views from the API server: (views, []) or (None, the error lines to print).
    The status command and the console's cluster source both read them this way."""
    from vipfarm import kubeconfig
    if kubeconfig_file:
        os.environ["KUBECONFIG"] = kubeconfig_file
    try:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        api = client.CustomObjectsApi(client.ApiClient(kubeconfig.client_configuration()))
    except kubeconfig.NoCredentials as e:
        return None, [f"error: {prog}: {e}"]
    try:
        if farm is not None:
            farms = [api.get_cluster_custom_object(GROUP, VERSION, "farms", farm, _request_timeout=timeout)]
        else:
            farms = api.list_cluster_custom_object(GROUP, VERSION, "farms", _request_timeout=timeout)["items"]
        farmnodes = api.list_cluster_custom_object(GROUP, VERSION, "farmnodes",
                                                   _request_timeout=timeout)["items"] if farms else []
    except ApiException as e:
        lines = [api_error_text(e)]
        if e.status == 404 and farm is not None and _not_found_name(e) == farm:
            lines.append(f"error: {prog}: there is no Farm {farm!r}; list them with `kubectl get farms`")
        elif e.status == 404:
            lines.append(f"error: {prog}: the API server has no {GROUP} resources; are vipfarm's CRDs installed "
                         f"(helm install vipfarm charts/vipfarm)?")
        elif e.status in (401, 403):
            lines.append(f"error: {prog}: your credentials may not read Farms or FarmNodes; it needs get and list "
                         f"on farms.{GROUP} and farmnodes.{GROUP} (README: Status)")
        return None, lines
    except Exception as e:      # connection refused, TLS, timeouts: the client raises urllib3 errors
        return None, [f"error: {prog}: cannot reach the Kubernetes API ({type(e).__name__}: {e}); check KUBECONFIG "
                      f"or --kubeconfig and that the API server is up, or ask the agents with --agent"]
    farms.sort(key=lambda f: (f.get("metadata") or {}).get("name") or "")
    return [farm_view_from_resource(f, farmnodes) for f in farms], []


def _cluster_views(args, prog: str) -> tuple[list[dict] | None, int]:
    """The views from the API server; (None, 1) after printing the error."""
    views, errors = cluster_views(args.kubeconfig, args.farm, args.timeout, f"{prog} status")
    for line in errors:
        print(line, file=sys.stderr)
    return (views, 0) if views is not None else (None, 1)


def _not_found_name(e) -> str | None:
    """The object a 404 names (Status details.name); None when the resource type itself is
    missing (no CRD)."""
    try:
        body = json.loads(e.body or "")
    except (TypeError, ValueError):
        return None
    return ((body.get("details") or {}).get("name")) if isinstance(body, dict) else None


def parse(argv: list[str], prog: str = "vipfarm") -> argparse.Namespace:
    """Only for tests of the flags: the status sub-command's arguments."""
    p = argparse.ArgumentParser(prog=prog)
    add_parser(p.add_subparsers(dest="cmd", required=True))
    return p.parse_args(["status", *argv])
