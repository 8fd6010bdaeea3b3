"""Log in to an authenticated TLS broker with paho: the CA file, the password file, why a connection failed.

The field broker takes TLS with a user name and password. Secrets come from mounted files,
never from the environment: `PasswordFile` reads one once, at start, and refuses a file that
other users may read. `check_ca_file` and `tls_context` turn a CA certificate into a client
context that checks the broker's certificate and host name. paho 1.6 swallows the error of a
failed connection attempt (a TLS handshake refused for a certificate that does not verify
looks like "nothing listens"); `LoginClient` hands it to `on_connect_error` first, and
`describe_connect_error` says how to fix it. It also reads every packet waiting per wake-up:
paho 1.6 reads one per `select` for a QoS 1 subscriber, then wakes itself to send each PUBACK.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edgefleet.secret_files import PasswordFile, check_ca_file, read_secret_text, tls_context

__all__ = [
    "AUTH_REFUSALS",
    "LoginClient",
    "PasswordFile",
    "check_ca_file",
    "describe_connect_error",
    "read_secret_text",
    "tls_context",
]

# CONNACK return codes (MQTT 3.1.1) that mean "these credentials do not get in".
AUTH_REFUSALS = frozenset({mqtt.CONNACK_REFUSED_BAD_USERNAME_PASSWORD, mqtt.CONNACK_REFUSED_NOT_AUTHORIZED})
# Packets read per wake-up of the network thread at most, so that writing (PUBACKs, pings) still gets its turn.
READ_PACKETS_PER_WAKE = 100


def describe_connect_error(
    err: OSError, *, tls: bool, ca_setting: str, host_setting: str, port_setting: str
) -> str | None:
    """Return what a failed TLS connection means and how to fix it; None for a plain network error."""
    if isinstance(err, ssl.SSLCertVerificationError):
        detail = err.verify_message or str(err)
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            return (
                f"the broker's certificate does not name this host ({detail}): set {host_setting} "
                "to a name or address its certificate lists"
            )
        return f"the broker's certificate does not verify ({detail}): set {ca_setting} to the CA that signed it"
    # A plain MQTT listener resets a connection that opens with a TLS hello.
    if isinstance(err, ssl.SSLError) or (tls and isinstance(err, ConnectionResetError)):
        reason = getattr(err, "reason", None) or err.strerror or str(err)
        return (
            f"the TLS handshake failed ({reason}): check that {port_setting} is the broker's "
            "TLS listener (8883 by convention)"
        )
    return None


class LoginClient(mqtt.Client):  # type: ignore[misc,unused-ignore]  # paho 1.6 is untyped
    """A paho client that reports why a connection attempt failed (paho itself only retries)."""

    on_connect_error: Callable[[OSError], None] | None = None

    def loop_read(self, max_packets: int = 1) -> int:
        """Read the packets waiting, up to READ_PACKETS_PER_WAKE, and their PUBACKs go out in one write turn.

        paho 1.6 ignores `max_packets` and reads one packet per wake-up when it has nothing in flight
        itself (a subscriber): then a select, a wake-up byte and its read per reading received.
        """
        for _ in range(max(max_packets, READ_PACKETS_PER_WAKE)):
            if self._sock is None:
                return int(mqtt.MQTT_ERR_NO_CONN)
            rc = self._packet_read()
            if rc > 0:
                return int(self._loop_rc_handle(rc))
            if rc == mqtt.MQTT_ERR_AGAIN:
                break
        return int(mqtt.MQTT_ERR_SUCCESS)

    def reconnect(self) -> int:
        """Connect again; hand a failure to `on_connect_error` before paho retries."""
        try:
            return int(super().reconnect())
        except OSError as err:
            callback = self.on_connect_error
            if callback is not None:
                callback(err)
            raise
