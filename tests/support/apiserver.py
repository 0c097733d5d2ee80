"""A real, throw-away Kubernetes control plane for the cluster test tier.

    with ApiServer() as api:                       # etcd + kube-apiserver, RBAC, SA tokens
        api.kubectl("get", "ns")                   # as the admin (system:masters)
        tok = api.mint_token("default", "agent")   # a real ServiceAccount token (TokenRequest)
        cfg = api.kubeconfig_for_token(tok, "/tmp/agent.kubeconfig")
        url = api.forward_into("vf1234-n1")        # https://127.0.0.1:6443 inside that netns
        api.stop_apiserver(); api.start_apiserver()  # same port, certs and etcd data

    with ApiServer(audit_policy=policy) as api:    # + an audit log (a kube-apiserver audit Policy)
        api.audit_events()                         # every event so far, oldest first
        token_id(tok)                              # the token's credential id, as audit events name it

Only kube-apiserver and etcd run: there is no controller-manager and no scheduler, so
namespaces never finish terminating, ServiceAccounts are not created automatically, no
garbage collection happens and pods stay Pending. Everything listens on 127.0.0.1 only, on
ports picked at run time; the root network namespace is otherwise untouched.

Binaries come from ${VIPFARM_CACHE:-/var/cache/vipfarm}/bin (scripts/build-k8s-binaries.sh);
kubectl from the running venv, the repo venv or PATH. Set VIPFARM_KEEP_APISERVER=1 to keep the
work directory (logs, certs, etcd data) after close().
"""
from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import json
import os
import secrets
import selectors
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from nodeagent.lab.processes import CleanupOnExit, pdeathsig_prefix, spawn_logged, terminate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.path.join(os.environ.get("VIPFARM_CACHE", "/var/cache/vipfarm"), "bin")
CLONE_NEWNET = 0x40000000
LOCALHOST = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"


class HarnessError(RuntimeError):
    pass


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip() if isinstance(self.stdout, str) else ""
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"


def _log(msg: str) -> None:
    print(f"[apiserver-harness] {msg}", file=sys.stderr, flush=True)


def binary(name: str) -> str:
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{path} missing: run scripts/build-k8s-binaries.sh (or `make install`)")
    return path


def binary_version(name: str) -> str | None:
    try:
        with open(os.path.join(BIN_DIR, name + ".version")) as f:
            return f.read().strip()
    except OSError:
        return None


def kubectl_binary() -> str:
    for cand in (os.path.join(os.path.dirname(sys.executable), "kubectl"),
                 os.path.join(REPO, ".venv", "bin", "kubectl")):
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which("kubectl")
    if not found:
        raise HarnessError("kubectl not found (venv or PATH)")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that were free a moment ago (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, host: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def token_id(token: str) -> str:
    """A ServiceAccount token's credential id as the API server records it in each audit
    event (user.extra["authentication.kubernetes.io/credential-id"]): "JTI=<the token's jti>"."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"


def audit_credential(event: dict) -> str:
    """The credential id of the caller of one audit event ("" if none, e.g. a static token)."""
    return ((event.get("user") or {}).get("extra") or {}).get("authentication.kubernetes.io/credential-id", [""])[0]


def _kubeconfig(server: str, ca_pem: bytes, token: str, user: str = "user",
                namespace: str | None = None) -> str:
    """JSON is valid YAML: kubectl, helm, client-go and the Python client all read it."""
    ctx = {"cluster": "vipfarm", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "vipfarm", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "vipfarm", "context": ctx}],
        "current-context": "vipfarm",
    }, indent=2) + "\n"


def _write_private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def wait_until_allowed(apiserver, cfg: str, verb: str, what: str, timeout: float = 15.0) -> None:
    """Until the API server's RBAC cache has the new binding (`kubectl auth can-i` says yes)."""
    deadline = time.monotonic() + timeout
    while True:
        res = apiserver.kubectl("auth", "can-i", verb, what, kubeconfig=cfg, check=False)
        if res.stdout.strip() == "yes":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"RBAC still refuses {verb} {what} {timeout} s after the binding: {res.stdout}{res.stderr}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
class ApiServer:
    """etcd + kube-apiserver in a temp dir. Context manager; close() is idempotent, runs at exit
    and only in the creating process (pyroute2 forks helpers that inherit atexit handlers)."""

    def __init__(self, *, tls: str = "auto", ready_timeout: float = 120.0, start: bool = True,
                 extra_args: list[str] | None = None, audit_policy: dict | None = None):
        if tls not in ("auto", "self-signed", "openssl"):
            raise ValueError("tls must be auto, self-signed or openssl")
        self.tls = tls
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args or [])
        self.audit_policy = audit_policy
        self.audit_log = ""
        self.workdir = ""
        self.port = 0
        self.url = ""
        self.etcd_port = 0
        self.admin_token = secrets.token_hex(24)
        self.admin_kubeconfig = ""
        self.ca_file = ""
        self.startup_seconds = 0.0
        self.etcd_proc: subprocess.Popen | None = None
        self.apiserver_proc: subprocess.Popen | None = None
        self.forwarders: list[NetnsForwarder] = []
        self._tls_args: list[str] = []
        self._cleanup: CleanupOnExit | None = None
        self._lock = threading.Lock()
        if start:
            self.start()

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "ApiServer":
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "ApiServer":
        t0 = time.monotonic()
        self.workdir = tempfile.mkdtemp(prefix=f"vipfarm-apiserver-{os.getpid()}-")
        self._cleanup = CleanupOnExit(self._teardown, signals=False)
        try:
            self._prepare_files()
            self._start_etcd()
            self._start_first_apiserver()
            self._choose_ca()
            self.admin_kubeconfig = _write_private(
                os.path.join(self.workdir, "admin.kubeconfig"),
                _kubeconfig(self.url, self._ca_pem(), self.admin_token, user="admin"))
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        _log(f"ready at {self.url} in {self.startup_seconds:.1f}s (workdir {self.workdir})")
        return self

    def _path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def _prepare_files(self) -> None:
        os.makedirs(self._path("certs"), mode=0o700)
        subprocess.run(["openssl", "genrsa", "-out", self._path("sa.key"), "2048"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", self._path("sa.key"), "-pubout",
                        "-out", self._path("sa.pub")], check=True, capture_output=True)
        _write_private(self._path("tokens.csv"), f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        for d in ("helm/cache", "helm/config", "helm/data"):
            os.makedirs(self._path(d), exist_ok=True)
        if self.audit_policy is not None:
            with open(self._path("audit-policy.json"), "w") as f:   # JSON is YAML
                json.dump(self.audit_policy, f)
            self.audit_log = self._path("audit.log")

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        return spawn_logged(pdeathsig_prefix() + argv, self._path(log), stdin=subprocess.DEVNULL, cwd=self.workdir)

    def _start_etcd(self) -> None:
        etcd = binary("etcd")
        for attempt in range(5):
            client, peer = free_ports(2)
            argv = [etcd, "--name=vipfarm", f"--data-dir={self._path('etcd')}",
                    f"--listen-client-urls=http://{LOCALHOST}:{client}",
                    f"--advertise-client-urls=http://{LOCALHOST}:{client}",
                    f"--listen-peer-urls=http://{LOCALHOST}:{peer}",
                    f"--initial-advertise-peer-urls=http://{LOCALHOST}:{peer}",
                    f"--initial-cluster=vipfarm=http://{LOCALHOST}:{peer}",
                    "--log-level=warn", "--unsafe-no-fsync"]
            self.etcd_proc = self._spawn(argv, "etcd.log")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.etcd_proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"http://{LOCALHOST}:{client}/health", timeout=2) as r:
                        if json.load(r).get("health") == "true":
                            self.etcd_port = client
                            return
                except (OSError, ValueError):
                    pass
                time.sleep(0.1)
            log = _tail(self._path("etcd.log"))
            terminate(self.etcd_proc)
            shutil.rmtree(self._path("etcd"), ignore_errors=True)
            if "address already in use" not in log:
                raise HarnessError(f"etcd did not become healthy:\n{log}")
            _log(f"etcd port race (attempt {attempt + 1}), retrying with new ports")
        raise HarnessError("etcd: could not find free ports")

    def _apiserver_argv(self) -> list[str]:
        return [binary("kube-apiserver"),
                f"--etcd-servers=http://{LOCALHOST}:{self.etcd_port}",
                f"--bind-address={LOCALHOST}", f"--secure-port={self.port}",
                f"--advertise-address={LOCALHOST}", "--endpoint-reconciler-type=none",
                f"--cert-dir={self._path('certs')}", "--authorization-mode=Node,RBAC",
                f"--token-auth-file={self._path('tokens.csv')}",
                f"--service-account-key-file={self._path('sa.pub')}",
                f"--service-account-signing-key-file={self._path('sa.key')}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--disable-admission-plugins=ServiceAccount",
                # As on kubeadm clusters: the node agent DaemonSet is privileged (XDP, netlink).
                "--allow-privileged=true",
                *self._audit_args(), *self._tls_args, *self.extra_args]

    def _audit_args(self) -> list[str]:
        if not self.audit_log:
            return []
        # The log backend in blocking mode: an event is in the file before its response is sent.
        return [f"--audit-policy-file={self._path('audit-policy.json')}", f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json", "--audit-log-mode=blocking"]

    def audit_events(self) -> list[dict]:
        """The audit log so far, oldest first (one JSON object per line, across restarts)."""
        if not self.audit_log:
            raise HarnessError("this ApiServer was started without an audit_policy")
        try:
            with open(self.audit_log) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def _start_first_apiserver(self) -> None:
        if self.tls == "openssl":
            self._make_openssl_certs()
        for attempt in range(5):
            self.port = free_ports(1)[0]
            self.url = f"https://{LOCALHOST}:{self.port}"
            try:
                self.start_apiserver()
                return
            except HarnessError as e:
                if "address already in use" not in str(e):
                    raise
                _log(f"apiserver port race (attempt {attempt + 1}), retrying with a new port")
        raise HarnessError("kube-apiserver: could not find a free port")

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver on the same port, certs and etcd; returns once /readyz is ok."""
        with self._lock:
            if self.apiserver_proc is not None and self.apiserver_proc.poll() is None:
                raise HarnessError("kube-apiserver is already running")
            self.apiserver_proc = self._spawn(self._apiserver_argv(), "kube-apiserver.log")
        self._wait_ready()

    def stop_apiserver(self, grace: float = 15.0) -> None:
        """Stop kube-apiserver only (SIGTERM, then SIGKILL); etcd and the data stay."""
        with self._lock:
            terminate(self.apiserver_proc, grace)
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.apiserver_proc is not None and self.apiserver_proc.poll() is None

    def _ssl_context(self, verify: bool) -> ssl.SSLContext:
        if verify and self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def readyz(self, verbose: bool = False, timeout: float = 5.0) -> tuple[int, str]:
        req = urllib.request.Request(f"{self.url}/readyz" + ("?verbose" if verbose else ""),
                                     headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context(True)) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def _wait_ready(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.ready_timeout
        next_report = t0 + 5
        last = "no answer yet"
        while True:
            proc = self.apiserver_proc
            if proc is None or proc.poll() is not None:
                raise HarnessError(f"kube-apiserver exited ({proc and proc.returncode}):\n"
                                   f"{_tail(self._path('kube-apiserver.log'))}")
            try:
                code, body = self.readyz(verbose=True, timeout=3)
                if code == 200:
                    _log(f"kube-apiserver ready on :{self.port} after {time.monotonic() - t0:.1f}s")
                    return
                failing = [ln.strip() for ln in body.splitlines() if ln.startswith("[-]")]
                last = f"HTTP {code}: " + (", ".join(failing) or body.strip()[:200])
            except (OSError, ssl.SSLError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            now = time.monotonic()
            if now > deadline:
                raise HarnessError(f"kube-apiserver not ready after {self.ready_timeout:.0f}s ({last}):\n"
                                   f"{_tail(self._path('kube-apiserver.log'))}")
            if now >= next_report:
                _log(f"waiting for /readyz ({now - t0:.0f}s): {last}")
                next_report = now + 5
            time.sleep(0.2)

    # -- TLS ------------------------------------------------------------------------------------
    def _verifies(self, ca_file: str) -> bool:
        ctx = ssl.create_default_context(cafile=ca_file)
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=5) as s, \
                    ctx.wrap_socket(s, server_hostname=LOCALHOST):
                return True
        except (OSError, ssl.SSLError) as e:
            _log(f"{ca_file} does not verify {LOCALHOST}:{self.port}: {e}")
            return False

    def _choose_ca(self) -> None:
        if not self._tls_args:
            generated = self._path("certs", "apiserver.crt")   # serving cert + its "localhost-ca"
            if self.tls != "openssl" and os.path.exists(generated) and self._verifies(generated):
                self.ca_file = generated
                return
            if self.tls == "self-signed":
                raise HarnessError("the apiserver's self-signed certificate does not verify for 127.0.0.1")
            _log("falling back to an openssl CA and serving certificate")
            self.stop_apiserver()
            self._make_openssl_certs()
            self.start_apiserver()
        self.ca_file = self._path("pki", "ca.crt")
        if not self._verifies(self.ca_file):
            raise HarnessError("the openssl-generated serving certificate does not verify")

    def _make_openssl_certs(self) -> None:
        pki = self._path("pki")
        os.makedirs(pki, exist_ok=True)
        p = lambda n: os.path.join(pki, n)  # noqa: E731
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("ca.key"), "-out", p("ca.crt"),
            "-days", "3650", "-subj", "/CN=vipfarm-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("apiserver.key"), "-out", p("apiserver.csr"),
            "-subj", "/CN=kube-apiserver")
        with open(p("ext.cnf"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,"
                    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                    "DNS:kubernetes.default.svc.cluster.local\n")
        run("x509", "-req", "-in", p("apiserver.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-out", p("apiserver.crt"), "-days", "3650", "-extfile", p("ext.cnf"))
        self._tls_args = [f"--tls-cert-file={p('apiserver.crt')}", f"--tls-private-key-file={p('apiserver.key')}"]

    def _ca_pem(self) -> bytes:
        with open(self.ca_file, "rb") as f:
            return f.read()

    # -- clients --------------------------------------------------------------------------------
    def kubectl(self, *args: str, kubeconfig: str | None = None, input: str | None = None,
                check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [kubectl_binary(), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, KUBECONFIG=kubeconfig or self.admin_kubeconfig))
        if check and res.returncode != 0:
            raise CommandError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def helm_env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=self.admin_kubeconfig,
                    HELM_CACHE_HOME=self._path("helm", "cache"),
                    HELM_CONFIG_HOME=self._path("helm", "config"),
                    HELM_DATA_HOME=self._path("helm", "data"))

    def helm(self, *args: str, input: str | None = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [binary("helm"), *args]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                             env=self.helm_env(), cwd=REPO)
        if check and res.returncode != 0:
            raise CommandError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def api_client(self, kubeconfig: str | None = None):
        """A kubernetes.client.ApiClient for the admin (or the given kubeconfig)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=kubeconfig or self.admin_kubeconfig)

    def mint_token(self, namespace: str, serviceaccount: str, duration: str = "2h",
                   node: str | None = None) -> str:
        """A real ServiceAccount token (TokenRequest). The SA must exist: nothing creates
        ServiceAccounts automatically here (no controller-manager).

        node: bind the token to that Node object (it must exist), so the API server adds the
        user extra authentication.kubernetes.io/node-name, as it does for a DaemonSet pod's
        pod-bound token. Deleting the Node revokes the token (after ~10 s of auth caching).
        """
        extra: list[str] = []
        if node:
            uid = self.kubectl("get", "node", node, "-o", "jsonpath={.metadata.uid}").stdout.strip()
            extra = ["--bound-object-kind=Node", f"--bound-object-name={node}", f"--bound-object-uid={uid}"]
        return self.kubectl("-n", namespace, "create", "token", serviceaccount,
                            f"--duration={duration}", *extra).stdout.strip()

    def kubeconfig_for_token(self, token: str, path: str, server: str | None = None,
                             namespace: str | None = None) -> str:
        return _write_private(path, _kubeconfig(server or self.url, self._ca_pem(), token,
                                                namespace=namespace))

    def forward_into(self, netns_name: str, port: int = 6443) -> str:
        """Serve this API server on 127.0.0.1:<port> inside network namespace `netns_name`."""
        fwd = NetnsForwarder(netns_name, self.port, port=port)
        self.forwarders.append(fwd)
        return fwd.url

    def stop_forward(self, netns_name: str, port: int | None = None) -> None:
        """Close the forwarders into `netns_name` (do this before deleting the namespace: the
        listening socket otherwise keeps the namespace alive)."""
        for fwd in [f for f in self.forwarders if f.netns == netns_name and port in (None, f.port)]:
            fwd.close()
            self.forwarders.remove(fwd)

    def pids(self) -> list[int]:
        return [p.pid for p in (self.etcd_proc, self.apiserver_proc) if p is not None and p.poll() is None]

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.run()

    def _teardown(self) -> None:
        for fwd in self.forwarders:
            fwd.close()
        terminate(self.apiserver_proc, 15)
        terminate(self.etcd_proc, 10)
        if self.workdir and not os.environ.get("VIPFARM_KEEP_APISERVER"):
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _setns_net(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns(/run/netns/{name}): {os.strerror(e)}")
    finally:
        os.close(fd)


def _loopback_up() -> None:
    """ifconfig lo up in the calling thread's network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), 0x8913, ifr))[1]
        if not flags & 0x1:                                             # IFF_UP
            fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1))


class NetnsForwarder:
    """A TCP listener on <listen_host>:<port> inside network namespace `netns_name` whose
    connections are relayed byte for byte to <target_host>:<target_port> in the caller's
    namespace. The listening socket is made in a short-lived thread that setns()es into the
    namespace (a socket stays in the namespace it was created in); accepting and relaying
    happen in threads that never leave the caller's namespace."""

    def __init__(self, netns_name: str, target_port: int, port: int = 6443, *,
                 target_host: str = LOCALHOST, listen_host: str = LOCALHOST, ensure_lo: bool = True):
        self.netns = netns_name
        self.target = (target_host, target_port)
        self._closed = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.listener = self._listen_in_netns(listen_host, port, ensure_lo)
        self.port = self.listener.getsockname()[1]
        self.url = f"https://{listen_host}:{self.port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"netns-fwd-{netns_name}:{self.port}")
        self._acceptor.start()

    def __enter__(self) -> "NetnsForwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _listen_in_netns(self, host: str, port: int, ensure_lo: bool) -> socket.socket:
        result: dict = {}

        def make() -> None:   # this thread ends inside the netns and is then gone
            try:
                _setns_net(self.netns)
                if ensure_lo:
                    _loopback_up()
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, port))
                    s.listen(128)
                except BaseException:
                    s.close()
                    raise
                result["sock"] = s
            except BaseException as e:  # re-raised in the caller
                result["err"] = e

        t = threading.Thread(target=make, name=f"netns-listen-{self.netns}")
        t.start()
        t.join()
        if "err" in result:
            raise result["err"]
        return result["sock"]

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._closed:
                        return
                    try:
                        client, _addr = self.listener.accept()
                    except OSError as e:
                        if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
                            continue
                        return
                    t = threading.Thread(target=self._relay, args=(client,), daemon=True)
                    t.start()
                    self._threads = [x for x in self._threads if x.is_alive()] + [t]
        finally:
            sel.close()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()   # the peer sees a reset/EOF, like connection refused
            return
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._conns.update((client, upstream))
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._conns.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        self.listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()
