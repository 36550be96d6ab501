"""Who may submit jobs (security.md rule 11): clients on the local machine only.

Running a job is running someone's code. Every job route answers 403 to any client whose
address is not loopback, before reading the request body; nothing is spawned for it.
Other nodes submit through signed ``/federation/jobs`` requests instead, admitted only
under the grants this node signed (node.federation.executing).
"""

from __future__ import annotations

import ipaddress

from ...errors import NodeError


class Forbidden(NodeError):
    http_status = 403


def is_local(address: str | None) -> bool:
    """True for loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x.y.z)."""
    if not address:
        return False
    host = address.strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_local(address: str | None) -> None:
    if not is_local(address):
        raise Forbidden(
            f"jobs are accepted only from the local machine; {address or 'an unknown address'} is not "
            "(other nodes submit through signed peer links)"
        )
