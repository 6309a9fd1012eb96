"""TCP keepalive on the worker's sockets, so that the kernel gives up on a peer that went silent.

A partition, a dropped conntrack entry or a frozen VM closes nothing: without keepalive, an idle
connection looks healthy for hours (and one with unacknowledged data for ~15 minutes, the
kernel's retransmission limit). Both service connections get the same policy, from one setting
(`WORKER_TCP_KEEPALIVE`, the idle seconds before the first probe):

- probes every `idle / 2` seconds (at least 1), three unanswered ones end the connection;
- `TCP_USER_TIMEOUT` (Linux) ends it when sent data stays unacknowledged as long.

Application-level bounds (the AMQP heartbeat, the statement timeouts) detect the same within
seconds and do most of the work; keepalive covers the pooled database connections that sit idle
and the moments between statements. A peer whose kernel still answers (a hung process, a proxy
that stopped forwarding) is not detected by it, only by those bounds.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

PROBES = 3


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    idle: int  # seconds without traffic before the first probe; 0: keepalive off

    @property
    def interval(self) -> int:
        return max(1, self.idle // 2)

    @property
    def gives_up_after(self) -> int:
        """Seconds of silence after which the kernel ends an idle connection."""
        return self.idle + PROBES * self.interval

    def apply(self, sock: Any) -> None:
        """Set the options on a TCP socket (or asyncio's TransportSocket); a no-op for other
        families (a Unix socket) and when off. Options the platform lacks are skipped."""
        if self.idle <= 0 or sock is None:
            return
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", self.idle),
            ("TCP_KEEPINTVL", self.interval),
            ("TCP_KEEPCNT", PROBES),
            ("TCP_USER_TIMEOUT", self.gives_up_after * 1000),  # milliseconds
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)

    def postgres_server_settings(self) -> dict[str, str]:
        """The same policy for the server's end of a PostgreSQL connection, so that a backend
        whose client vanished mid-transaction (holding row locks on a hot coupon) is ended
        rather than left waiting. Plain keepalive GUCs: every supported PostgreSQL has them."""
        if self.idle <= 0:
            return {}
        return {
            "tcp_keepalives_idle": str(self.idle),
            "tcp_keepalives_interval": str(self.interval),
            "tcp_keepalives_count": str(PROBES),
        }
