"""Test harness: a private authoritative DNS server (Knot DNS) on 127.0.0.1, with a query log, and a blackhole.

A :class:`Knot` lives in its own directory ``R`` (give it a :func:`mta.scratch_dir` subdirectory)::

    R/knot.conf        generated configuration
    R/zones/<z>.zone   one zone file per zone (SOA and NS added here)
    R/db/              knot's databases (timers, journal, KASP; created lazily)
    R/knot.sock        the control socket, used by ``knotc`` for reloads
    R/knot.log         knotd's own log (info level; also what it printed on stdout/stderr)

Typical use::

    with scratch_dir("directmilter-dns-") as tmp, Knot(tmp / "dns", {
            "direct.b.test": [cert_record("bob.direct.b.test", bob.der),
                              srv_record("_ldap._tcp.direct.b.test", 0, 0, slapd.port, "ldap.direct.b.test"),
                              a_record("ldap.direct.b.test", "127.0.0.1")]}) as server:
        resolver = server.resolver()                 # a dnspython Resolver aimed at server.port
        ...
        assert ("bob.direct.b.test", "CERT") in server.queries()
        server.set_zone("direct.b.test", [...])     # rewrite, reload, wait for the new serial

Query log. Knot 3.2 cannot log queries: its ``log`` section has no query category (``any: debug`` logs zone events,
never a query), the dnstap module is a separate Debian package (``knot-module-dnstap``, not installed, and dnstap is
a protobuf/frame-stream format) and ``mod-probe`` emits a version-specific C struct over a UNIX datagram socket.
So :attr:`Knot.port` is a small forwarding proxy in Python (asyncio, UDP and TCP on the same port number) that parses
each query's question, records it, and passes the bytes through untouched (TC bits, EDNS, everything), while knotd
itself listens on :attr:`Knot.knot_port`. Probes sent to knotd directly (readiness, reload checks) stay out of
:meth:`Knot.queries`.

Facts this relies on (knot 3.2.6, Debian 12):

* knotd stays in the foreground unless given ``-d``; it does not drop privileges unless ``server.user`` is set (it
  is not: it runs as whoever starts it, so the tree needs no special permissions), and SIGTERM stops it in ~10 ms.
* Without EDNS a UDP answer is cut at 512 bytes (TC=1, answer section emptied); with EDNS at the client's buffer
  size (knot caps at 1232). A CERT record with a 2048-bit RSA certificate (~800 bytes) never fits 512.
* ``knotc -b zone-reload Z`` re-reads the zone file whatever its mtime (forced) and blocks until done; adding or
  removing a zone needs ``knotc reload`` (configuration). Either way :meth:`Knot.set_zone` then waits until knotd
  serves the new SOA serial.
* knot accepts the CERT type mnemonics of RFC 4398 in zone files (``PKIX``, ``IPKIX`` ...), with key tag 0 and
  algorithm 0 as Direct uses them.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ipaddress
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
from mta import LOOPBACK, _free_ports, _poll, _stop_child

__all__ = [
    "Blackhole",
    "Knot",
    "Query",
    "a_record",
    "cert_record",
    "free_udp_tcp_port",
    "ipkix_record",
    "srv_record",
    "txt_record",
]

DEFAULT_TTL = 300


# ------------------------------------------------------------------------------------------------------- records

def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def cert_record(owner: str, der: bytes, ttl: int = DEFAULT_TTL) -> str:
    """A CERT record of type PKIX (1), key tag 0, algorithm 0 holding the DER certificate ``der`` (RFC 4398), as
    Direct publishes address and domain certificates. ``owner`` is a DNS name (``bob.direct.b.test``: the address
    bob@direct.b.test with '@' replaced by '.')."""
    return f"{_fqdn(owner)} {ttl} IN CERT PKIX 0 0 {base64.b64encode(der).decode()}"


def ipkix_record(owner: str, url: str, ttl: int = DEFAULT_TTL) -> str:
    """A CERT record of type IPKIX (4): the certificate's URL (its octets, base64 in the zone file)."""
    return f"{_fqdn(owner)} {ttl} IN CERT IPKIX 0 0 {base64.b64encode(url.encode()).decode()}"


def srv_record(owner: str, priority: int, weight: int, port: int, target: str, ttl: int = DEFAULT_TTL) -> str:
    """An SRV record, e.g. ``srv_record("_ldap._tcp.direct.b.test", 0, 0, 3890, "ldap.direct.b.test")``."""
    return f"{_fqdn(owner)} {ttl} IN SRV {priority} {weight} {port} {_fqdn(target)}"


def a_record(owner: str, ip: str, ttl: int = DEFAULT_TTL) -> str:
    """An A record (or AAAA for an IPv6 address)."""
    kind = "AAAA" if ipaddress.ip_address(ip).version == 6 else "A"
    return f"{_fqdn(owner)} {ttl} IN {kind} {ip}"


def txt_record(owner: str, text: str, ttl: int = DEFAULT_TTL) -> str:
    """A TXT record with one string (quotes and backslashes escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'{_fqdn(owner)} {ttl} IN TXT "{escaped}"'


# ---------------------------------------------------------------------------------------------------------- ports

def free_udp_tcp_port() -> int:
    """A port number on 127.0.0.1 free for both TCP and UDP, chosen as :func:`mta.free_port` chooses."""
    def bindable(port: int) -> bool:
        try:
            tcp, udp = _bind_udp_tcp(port)
        except OSError:
            return False
        tcp.close()
        udp.close()
        return True

    return _free_ports(1, bindable)[0]


def _bind_udp_tcp(port: int = 0) -> tuple[socket.socket, socket.socket]:
    """A listening TCP socket and a bound UDP socket on 127.0.0.1 with the same port number (``port``, or a free
    one: the kernel picks the TCP port, retried until the same UDP port is free too)."""
    for _ in range(100):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((LOOPBACK, port))
            udp.bind((LOOPBACK, tcp.getsockname()[1]))
            tcp.listen(64)
            return tcp, udp
        except OSError:
            tcp.close()
            udp.close()
            if port:
                raise
    raise OSError("no port free for both TCP and UDP on 127.0.0.1")


# ------------------------------------------------------------------------------------------------------ query log

@dataclass(frozen=True)
class Query:
    """One query seen by the proxy in front of knotd. ``qname`` is lower case without the final dot, in master-file
    text (a dot inside a label is ``\\.``); ``qtype`` the mnemonic (``CERT``, ``SRV``, ``TYPE65000``)."""

    qname: str
    qtype: str
    transport: str  # "udp" or "tcp"
    edns: bool
    at: float  # time.monotonic()


def _parse_query(wire: bytes, transport: str) -> Query | None:
    """The question of a DNS query (None when there is none or it does not parse)."""
    try:
        if len(wire) < 12 or struct.unpack("!H", wire[4:6])[0] < 1:
            return None
        name, used = dns.name.from_wire(wire, 12)
        (qtype,) = struct.unpack("!H", wire[12 + used:12 + used + 2])
    except (dns.exception.DNSException, struct.error, ValueError):
        return None
    try:
        edns = dns.message.from_wire(wire).edns >= 0
    except dns.exception.DNSException:
        edns = False
    return Query(qname=name.to_text(omit_final_dot=True).lower(), qtype=dns.rdatatype.to_text(qtype),
                 transport=transport, edns=edns, at=time.monotonic())


class _UdpFront(asyncio.DatagramProtocol):
    def __init__(self, proxy: _DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not isinstance-checkable: Python 3.11's selector datagram transport does not derive from DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | None, int]) -> None:
        assert self.transport is not None
        self.proxy.record(data, "udp")
        self.proxy.spawn(self.proxy.forward_udp(data, addr, self.transport))


class _DnsProxy:
    """Forwards DNS over UDP and TCP from one 127.0.0.1 port to another, recording every question on the way."""

    UPSTREAM_TIMEOUT = 10.0

    def __init__(self, upstream_port: int, sockets: tuple[socket.socket, socket.socket], log: list[Query],
                 lock: threading.Lock) -> None:
        """Forward to knotd on ``upstream_port`` from ``sockets`` (a listening TCP and a bound UDP socket on one
        port, see :func:`_bind_udp_tcp`; closed by :meth:`stop`), appending to ``log`` under ``lock``."""
        self.upstream_port = upstream_port
        self._tcp, self._udp = sockets
        self.port: int = self._tcp.getsockname()[1]
        self._log = log
        self._lock = lock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def record(self, wire: bytes, transport: str) -> None:
        query = _parse_query(wire, transport)
        if query is not None:
            with self._lock:
                self._log.append(query)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"dns-proxy-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"DNS proxy on port {self.port} failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = loop.create_future()
        udp_transport, _ = await loop.create_datagram_endpoint(lambda: _UdpFront(self), sock=self._udp)
        server = await asyncio.start_server(self._tcp_client, sock=self._tcp)
        self._ready.set()
        try:
            await self._stopping
        finally:
            server.close()
            udp_transport.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            def finish() -> None:
                if not stopping.done():
                    stopping.set_result(None)

            with contextlib.suppress(RuntimeError):  # the loop just finished
                loop.call_soon_threadsafe(finish)
        if self._thread is not None:
            self._thread.join(10)
        self._tcp.close()
        self._udp.close()

    # ------------------------------------------------------------------------------------------------- forwarding

    async def forward_udp(self, data: bytes, addr: tuple[str | None, int], front: asyncio.DatagramTransport) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.setblocking(False)
            upstream.connect((LOOPBACK, self.upstream_port))
            try:
                await loop.sock_sendall(upstream, data)
                reply = await asyncio.wait_for(loop.sock_recv(upstream, 65535), self.UPSTREAM_TIMEOUT)
            except (TimeoutError, OSError):
                return  # like a server that does not answer
        if not front.is_closing():
            front.sendto(reply, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            except OSError:
                return
            self._writers.add(up_writer)

            async def client_to_upstream() -> None:
                try:
                    while True:
                        head = await reader.readexactly(2)
                        message = await reader.readexactly(struct.unpack("!H", head)[0])
                        self.record(message, "tcp")
                        up_writer.write(head + message)
                        await up_writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                finally:
                    with contextlib.suppress(OSError, RuntimeError):
                        up_writer.write_eof()  # the client is done: let knotd finish and close

            async def upstream_to_client() -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await up_reader.read(65536):
                        writer.write(data)
                        await writer.drain()

            outbound = asyncio.ensure_future(client_to_upstream())
            try:
                await upstream_to_client()  # ends when knotd closes (idle timeout, or after the client's EOF)
            finally:
                outbound.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await outbound
                up_writer.close()
                self._writers.discard(up_writer)
        finally:
            writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)


# ----------------------------------------------------------------------------------------------------------- knot

_RUNNING: dict[int, Knot] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            server.stop()


class Knot:
    """A private knotd on 127.0.0.1 behind a query-logging proxy (see the module docstring).

    :param root: the server's directory (created).
    :param zones: zone name -> record lines in zone-file syntax (absolute names, or relative to the zone); the SOA
        (serial bumped on every change) and an NS record are added here. See :func:`cert_record` and friends.

    Ports are chosen on construction: :attr:`port` (the proxy: point clients here) and :attr:`knot_port`."""

    def __init__(self, root: Path, zones: Mapping[str, Sequence[str]] | None = None) -> None:
        self.root = Path(root).absolute()
        self.zone_dir = self.root / "zones"
        self.conf_path = self.root / "knot.conf"
        self.socket_path = self.root / "knot.sock"
        self.log_path = self.root / "knot.log"
        self.zone_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "db").mkdir(exist_ok=True)
        self.knot_port = free_udp_tcp_port()
        # The proxy's sockets are bound now (so peers can be told the port before start) and held until start.
        self._reserved: tuple[socket.socket, socket.socket] | None = _bind_udp_tcp()
        self.port: int = self._reserved[0].getsockname()[1]
        self._proxy: _DnsProxy | None = None
        self._log: list[Query] = []
        self._log_lock = threading.Lock()
        self._zones: dict[str, list[str]] = {}
        self._serials: dict[str, int] = {}
        self._child: subprocess.Popen[bytes] | None = None
        for name, records in (zones or {}).items():
            self._write_zone(name, records)
        self._write_config()

    # ----------------------------------------------------------------------------------------------- configuration

    @staticmethod
    def _zone_key(name: str) -> str:
        return name.rstrip(".").lower()

    def _zone_file(self, key: str) -> Path:
        return self.zone_dir / f"{key}.zone"

    def _write_zone(self, name: str, records: Sequence[str]) -> None:
        key = self._zone_key(name)
        self._zones[key] = list(records)
        serial = self._serials.get(key, 0) + 1
        self._serials[key] = serial
        lines = [
            f"$ORIGIN {key}.",
            f"$TTL {DEFAULT_TTL}",
            f"@ {DEFAULT_TTL} IN SOA ns.{key}. hostmaster.{key}. {serial} 3600 600 86400 60",
            f"@ {DEFAULT_TTL} IN NS ns.{key}.",
            *self._zones[key],
        ]
        if not any(line.split()[:1] in (["ns"], [f"ns.{key}."]) for line in self._zones[key]):
            lines.append(f"ns {DEFAULT_TTL} IN A {LOOPBACK}")
        path = self._zone_file(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)

    def _write_config(self) -> None:
        zones = "".join(f"  - domain: {key}.\n    file: {self._zone_file(key)}\n" for key in sorted(self._zones))
        self.conf_path.write_text(f"""\
server:
    rundir: {self.root}
    listen: {LOOPBACK}@{self.knot_port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: {self.socket_path}
log:
  - target: {self.log_path}
    any: info
database:
    storage: {self.root / "db"}
template:
  - id: default
    storage: {self.zone_dir}
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
""" + (f"zone:\n{zones}" if zones else ""))

    def zones(self) -> dict[str, list[str]]:
        """The zones as given (without the SOA/NS lines added here)."""
        return {key: list(records) for key, records in self._zones.items()}

    def serial(self, zone: str) -> int:
        return self._serials[self._zone_key(zone)]

    def set_zone(self, name: str, records: Sequence[str], timeout: float = 10) -> None:
        """Replace (or add) a zone; if running, reload and wait until knotd serves the new serial."""
        key = self._zone_key(name)
        new = key not in self._zones
        self._write_zone(key, records)
        if new:
            self._write_config()
        if self.running:
            mark = len(self.log())
            if new:
                self._knotc("reload")
            else:
                self._knotc("-b", "zone-reload", f"{key}.")
            self._wait_serial(key, timeout, mark)

    def remove_zone(self, name: str) -> None:
        """Stop serving a zone (knotd then answers REFUSED for names in it)."""
        key = self._zone_key(name)
        del self._zones[key]
        self._write_config()
        if self.running:
            self._knotc("reload")
            _poll(lambda: True if self._probe_serial(key) is None else None, 10,
                  lambda: f"knotd still serves {key} after a reload")

    def _knotc(self, *args: str, timeout: float = 20) -> str:
        done = subprocess.run(["knotc", "-c", str(self.conf_path), "-s", str(self.socket_path), "-t", "10", *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"knotc {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                               f"log:\n{self.log()[-3000:]}")
        return done.stdout

    # --------------------------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def start(self, timeout: float = 10) -> Knot:
        """Start knotd in the foreground as our child and the proxy; wait until every zone is served."""
        if self.running:
            return self
        check = subprocess.run(["knotc", "-c", str(self.conf_path), "conf-check"], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise RuntimeError(f"knot configuration invalid: {check.stdout}{check.stderr}")
        mark = len(self.log())
        out = self.log_path.open("ab")
        try:
            self._child = subprocess.Popen(["knotd", "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        _RUNNING[id(self)] = self
        try:
            if self._proxy is None:
                sockets, self._reserved = self._reserved or _bind_udp_tcp(self.port), None
                self._proxy = _DnsProxy(self.knot_port, sockets, self._log, self._log_lock)
                self._proxy.start()
            for key in self._zones:
                self._wait_serial(key, timeout, mark)
        except BaseException:
            self.stop()
            raise
        return self

    def _probe_serial(self, key: str) -> int | None:
        """The SOA serial knotd serves for zone ``key`` (asked directly, not through the proxy), None if none."""
        query = dns.message.make_query(f"{key}.", "SOA")
        # A connected socket: while knotd is not up yet, the ICMP "port unreachable" fails recv() at once (dnspython's
        # unconnected dns.query.udp would sit out its whole timeout instead).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect((LOOPBACK, self.knot_port))
                sock.send(query.to_wire())
                reply = dns.message.from_wire(sock.recv(65535))
            except (dns.exception.DNSException, OSError):
                return None
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                serial: int = rrset[0].serial
                return serial
        return None

    def _wait_serial(self, key: str, timeout: float, log_from: int = 0) -> None:
        """Wait until knotd serves zone ``key`` with its current serial; fail at once when knotd exits or logs (after
        offset ``log_from``) that loading the zone failed."""
        want = self._serials[key]
        failure = f"[{key}.] zone event 'load' failed"

        def probe() -> bool | None:
            if self._child is None or self._child.poll() is not None:
                code = None if self._child is None else self._child.returncode
                raise RuntimeError(f"knotd exited ({code}):\n{self.log()[-3000:]}")
            if self._probe_serial(key) == want:
                return True
            recent = self.log()[log_from:]
            if failure in recent:
                errors = [line for line in recent.splitlines() if f"[{key}.]" in line and "error" in line]
                raise RuntimeError(f"knotd cannot load zone {key}:\n" + "\n".join(errors))
            return None

        _poll(probe, timeout, lambda: f"knotd does not serve {key} serial {want} after {timeout}s "
                                      f"(serves {self._probe_serial(key)}):\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM knotd and wait for it (SIGKILL after ``timeout``); stop the proxy. The query log is kept; a
        later :meth:`start` binds the same ports again."""
        child, self._child = self._child, None
        _RUNNING.pop(id(self), None)
        if child is not None:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
            _stop_child(child, timeout)
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop()  # closes its sockets: clients now get "connection refused" / ICMP port unreachable
        if self._reserved is not None:
            for sock in self._reserved:
                sock.close()
            self._reserved = None

    def restart(self) -> None:
        """Stop and start again, on the same ports."""
        self.stop()
        self.start()

    def __enter__(self) -> Knot:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Knot(port={self.port}, knot_port={self.knot_port}, zones={sorted(self._zones)}, "
                f"root={str(self.root)!r})")

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    # -------------------------------------------------------------------------------------------------- inspection

    def queries(self) -> list[tuple[str, str]]:
        """(qname, qtype) of every query received on :attr:`port` so far, oldest first: ``("bob.direct.b.test",
        "CERT")``. Names are lower case without the final dot."""
        return [(q.qname, q.qtype) for q in self.query_log()]

    def query_log(self) -> list[Query]:
        """The queries with their transport, EDNS presence and time."""
        with self._log_lock:
            return list(self._log)

    def clear_queries(self) -> None:
        with self._log_lock:
            self._log.clear()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def resolver(self, timeout: float = 2) -> dns.resolver.Resolver:
        """A dnspython resolver that asks this server only (through the proxy)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [LOOPBACK]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        return resolver


# ------------------------------------------------------------------------------------------------------ blackhole

class Blackhole:
    """UDP and TCP on one 127.0.0.1 port that never answer: datagrams are read and dropped, TCP connections are
    accepted and held open in silence until :meth:`stop`. For timeout tests (DNS, LDAP, HTTP alike).
    ``received`` counts the datagrams and ``connections`` the TCP connections seen."""

    def __init__(self, port: int = 0) -> None:
        self._tcp, self._udp = _bind_udp_tcp(port)
        self.port: int = self._tcp.getsockname()[1]
        self.received = 0
        self.connections = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Blackhole:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"blackhole-{self.port}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._tcp, selectors.EVENT_READ)
            selector.register(self._udp, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in selector.select(0.1):
                    with contextlib.suppress(OSError):
                        if key.fileobj is self._udp:
                            self._udp.recv(65535)
                            self.received += 1
                        else:
                            conn, _ = self._tcp.accept()
                            self._held.append(conn)
                            self.connections += 1

    def stop(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._tcp.close()
        self._udp.close()

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
