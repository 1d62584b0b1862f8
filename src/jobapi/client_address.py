"""The client's address, for log lines: the peer's, or what a trusted proxy says in ``X-Forwarded-For``.

``X-Forwarded-For`` is anyone's to send, so it is believed only from the
addresses in ``TRUSTED_PROXIES`` (default: loopback, where nginx runs in the
production recipe). From such a peer, the header is read from its end: each
address a trusted proxy added is passed over, and the first one that is not
a trusted proxy is the client. An entry that is not an address ends the walk
at the proxy that passed it on, so no client text reaches a log line.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Loopback: nginx on the same machine.
DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1"


def proxy_networks(value: str) -> tuple[IPNetwork, ...]:
    """``TRUSTED_PROXIES``: comma-separated addresses or networks (``10.0.0.5, 10.1.0.0/16``); empty trusts none."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    """The address ``text`` writes, or None; an IPv6 zone (``fe80::1%eth0``) is any text, so none is taken."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        return address.ipv4_mapped or address
    return address


class ClientAddress:
    """Finds a request's client address from its WSGI environment."""

    def __init__(self, trusted: Iterable[IPNetwork]) -> None:
        self.trusted = tuple(trusted)
        # Behind a proxy the same (peer, header) pairs come again and again: each
        # is worked out once. Bounded, so varied headers cannot grow it.
        self._from_proxy = functools.lru_cache(maxsize=1024)(self._walk)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def __call__(self, environ: Mapping[str, Any]) -> str:
        peer = environ.get("REMOTE_ADDR") or "-"
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded or not self.trusted:
            return peer
        return self._from_proxy(peer, forwarded)

    def _walk(self, peer: str, forwarded: str) -> str:
        address = _address(peer)
        if address is None or not self._is_trusted(address):
            return peer
        client = str(address)
        for hop in reversed(forwarded.split(",")):
            address = _address(hop)
            if address is None:
                break
            client = str(address)
            if not self._is_trusted(address):
                break
        return client
