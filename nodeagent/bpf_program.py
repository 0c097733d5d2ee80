"""Compiling and loading the XDP filter with bcc (the imperative shell around bpf/)."""
from __future__ import annotations

import os
import platform

from vipfarm_bpf import SOURCE_DIR as BPF_DIR

PROGRAM_SOURCE = os.path.join(BPF_DIR, "vipfarm_xdp.c")
PROGRAM_FUNCTION = "vipfarm_xdp"


class DataplaneError(RuntimeError):
    """The dataplane cannot be set up; the message says what to do."""


def headers_dir() -> str:
    return f"/lib/modules/{platform.release()}/build"


def check_kernel_headers() -> None:
    build = headers_dir()
    if not os.path.isdir(os.path.join(build, "include")):
        raise DataplaneError(
            f"kernel headers not found at {build}: bcc needs them to compile the XDP filter. "
            f"Run `scripts/install.sh` (installs Debian's linux-headers-amd64 and links it there), "
            f"or install linux-headers-{platform.release()}")


def import_bcc():
    try:
        import bcc  # noqa: F401  (Debian python3-bpfcc, visible through --system-site-packages)
    except ImportError as e:
        raise DataplaneError(
            "the bcc Python bindings are missing: install Debian's python3-bpfcc and run the agent "
            "with a Python that sees it (scripts/install.sh builds such a venv)") from e
    return bcc


def mac_defines(mac: bytes) -> list[str]:
    return [f"-DVF_IFACE_MAC{i}=0x{b:02x}" for i, b in enumerate(mac)]


def compile_filter(own_mac: bytes, answer_neigh: bool, pin_dir: str | None = None,
                   trace_bucket: bool = False, handover: bool = True):
    """Compile the filter; returns the bcc BPF object.

    pin_dir: pin the maps there, adopting maps a previous agent left (a map of another shape
    that holds nothing the agent cannot rebuild, pinned_layout.RECREATABLE: counters, lease,
    UDP flows and UDP config, is re-created; an ownership map from before handover is migrated;
    any other map of another shape is a DataplaneError).
    trace_bucket: test builds record each computed bucket in the vf_trace map.
    handover: False compiles the moving-bucket rules out (-DVF_NO_HANDOVER): benchmarks only,
    the baseline of the fast path's cost.
    """
    check_kernel_headers()
    bcc = import_bcc()
    cflags = [
        f"-I{BPF_DIR}",
        *mac_defines(own_mac),
        f"-DVF_ANSWER_NEIGH={1 if answer_neigh else 0}",
        "-Wno-unused-function",
    ]
    if trace_bucket:
        cflags.append("-DVF_TRACE_BUCKET")
    if not handover:
        cflags.append("-DVF_NO_HANDOVER")
    if pin_dir:
        cflags.append(f'-DVF_PIN_DIR="{pin_dir}"')
    adopted = set(os.listdir(pin_dir)) if pin_dir and os.path.isdir(pin_dir) else set()
    bpf = _compile(bcc, cflags)
    if adopted:
        # bcc adopts a pin of any shape: check each against the declaration (pinned_layout.py).
        from .pinned_layout import adopted_mismatches, migrate, open_migrations, remove_for_recreation, unusable
        found = adopted_mismatches(bpf, pin_dir, adopted)
        if found:
            bpf.cleanup()
            error = unusable(found)
            if error:
                raise DataplaneError(error)
            opened = open_migrations(found)
            remove_for_recreation(found)
            try:
                bpf = _compile(bcc, cflags)
            except BaseException:
                for _, fd in opened.values():
                    os.close(fd)
                raise
            migrate(bpf, opened)
    return bpf


def _compile(bcc, cflags: list[str]):
    try:
        return bcc.BPF(src_file=PROGRAM_SOURCE.encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception on compile/load failure
        raise DataplaneError(f"compiling {PROGRAM_SOURCE} failed: {e}") from e


def compile_host_fixup(own_mac: bytes):
    """The TC ingress helper for native XDP on a veth (bpf/vipfarm_tc.c)."""
    check_kernel_headers()
    bcc = import_bcc()
    src = os.path.join(BPF_DIR, "vipfarm_tc.c")
    try:
        b = bcc.BPF(src_file=src.encode(), cflags=[f"-I{BPF_DIR}", *mac_defines(own_mac)])
        return b, b.load_func(b"vipfarm_host", bcc.BPF.SCHED_CLS)
    except Exception as e:
        raise DataplaneError(f"compiling or loading {src} failed: {e}") from e


def load_filter(bpf):
    """Load (verify) the XDP function; returns bcc's function handle with .fd."""
    import bcc
    try:
        return bpf.load_func(PROGRAM_FUNCTION.encode(), bcc.BPF.XDP)
    except Exception as e:
        raise DataplaneError(f"the kernel rejected the XDP filter: {e}") from e
