"""HOST:PORT listen addresses of the observability endpoints (the agent's --observe-address,
the operator's --metrics-address), or `off`. Pure: parse_listen_address raises ValueError
with a message that names the flag, the value and the fix."""
from __future__ import annotations

import ipaddress

OFF = "off"


def parse_listen_address(text: str, flag: str, lowest_port: int = 1) -> tuple[str, int] | None:
    """(host, port) for `text` ("127.0.0.1:9478", "[::1]:9478", "0.0.0.0:9479"), None for off.
    The host must be an IP address (the endpoint binds exactly there); port lowest_port-65535
    (0 lets the kernel pick one: tests)."""
    value = (text or "").strip()
    if value.lower() == OFF:
        return None
    fix = f"give {flag} HOST:PORT with an IP address, e.g. 127.0.0.1:9478 or [::1]:9478, or {flag} off"
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{flag} {text!r}: not HOST:PORT; {fix}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{flag} {text!r}: an IPv6 host needs brackets ([{host}]:{port_text}); {fix}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: {host!r} is not an IP address; {fix}") from None
    if not port_text.isdigit() or not lowest_port <= int(port_text) <= 65535:
        raise ValueError(f"{flag} {text!r}: port {port_text!r} is not a number from {lowest_port} to 65535; "
                         f"{fix}") from None
    return str(ip), int(port_text)
