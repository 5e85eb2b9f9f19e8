"""Which ``--host`` values listen only on this machine. The web UI and the API server warn, and
the web UI turns off every field that takes a path on the server's disk, when one does not
(robustness item 23)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` (a --host value: an address, ``[::1]``, or ``localhost``) only listens on this
    machine. Any other name may resolve to an outside address, so it counts as not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
