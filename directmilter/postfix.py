"""What the Postfix beside us will do with an address after the milter has let a message through.

The milter sees the recipients of RCPT TO; Postfix's cleanup(8) then applies virtual_alias_maps, always_bcc,
recipient_bcc_maps and sender_bcc_maps, and local(8) applies alias_maps. A hosted Direct address aliased to a remote
one (or Bcc'd to a remote archive) would carry the decrypted message off the host in clear, and an unhosted
address aliased to a Direct mailbox would put unverified mail into it. So the milter asks Postfix's own tables,
through ``postconf`` and ``postmap`` with Postfix's configuration directory, where each address really goes, and
refuses what would break "nothing in clear leaves, nothing untrusted is delivered".

Postfix's lookup order is followed for the forms that matter here (virtual(5)): ``user+ext@domain``, then
``user@domain`` (the extension carried over to the result, as propagate_unmatched_extensions does by default), then
``@domain``; results are expanded again, an address that maps to itself is kept, and the depth and breadth are
bounded. A table that cannot be read fails closed (a temporary failure), never open.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from directmilter.addresses import base_mailbox
from directmilter.errors import ConfigError, TemporaryFailure
from directmilter.witness import DOMAIN

#: The main.cf parameters read (``postconf -x -h``), in this order.
PARAMETERS = ("recipient_delimiter", "canonical_maps", "recipient_canonical_maps", "virtual_alias_maps",
              "recipient_bcc_maps", "sender_bcc_maps", "always_bcc", "alias_maps", "mydestination",
              "local_login_sender_maps", "receive_override_options", "internal_mail_filter_classes",
              "non_smtpd_milters", "milter_default_action", "allow_percent_hack", "swap_bangpath", "smtpd_milters",
              "transport_maps")
#: Past these, an expansion is refused rather than followed (Postfix's own limits are 1000 and 1000).
MAX_DEPTH = 20
MAX_ADDRESSES = 1000
_TIMEOUT = 10.0


@dataclass(frozen=True)
class PostfixSettings:
    """The Postfix parameters directmilter depends on, as ``postconf -x`` reports them for one configuration."""

    config_directory: Path
    values: dict[str, str]
    #: master.cf service overrides, ``postconf -P``: "service/type/parameter" -> value.
    overrides: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    def tables(self, name: str) -> tuple[str, ...]:
        """A table-list parameter split as Postfix splits it: at blanks and commas outside ``{...}``."""
        parts: list[str] = []
        current: list[str] = []
        depth = 0
        for char in self.get(name):
            if char == "{":
                depth += 1
            elif char == "}":
                depth = max(0, depth - 1)
            if depth == 0 and (char.isspace() or char == ","):
                if current:
                    parts.append("".join(current))
                current = []
            else:
                current.append(char)
        if current:
            parts.append("".join(current))
        return tuple(parts)

    @property
    def recipient_delimiter(self) -> str:
        return self.get("recipient_delimiter")


class _CannotRun(Exception):
    """A Postfix command could not be started or did not finish in time."""


def _run(program: str, config_directory: Path, *args: str,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """One Postfix command (postconf, postmap, postqueue) against the configuration in ``config_directory``."""
    command = [shutil.which(program) or f"/usr/sbin/{program}", "-c", str(config_directory), *args]
    try:
        if stdin is None:
            return subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL)
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _CannotRun(f"cannot run {program} ({type(exc).__name__})") from exc


def read_settings(config_directory: Path) -> PostfixSettings:
    """``postconf -c DIR -x -h`` for :data:`PARAMETERS`; a ConfigError naming the directory when Postfix cannot."""
    try:
        done = _run("postconf", config_directory, "-x", "-h", *PARAMETERS)
    except _CannotRun as exc:
        raise ConfigError(f"[milter] postfix_config {config_directory}: {exc}") from exc
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < len(PARAMETERS):
        error = next((line for line in done.stderr.splitlines() if "fatal" in line), done.stderr.strip())
        raise ConfigError(f"[milter] postfix_config {config_directory}: postconf failed ({error})")
    values = dict(zip(PARAMETERS, (line.strip() for line in lines), strict=False))
    try:
        services = _run("postconf", config_directory, "-P").stdout  # master.cf overrides: for check-config only
    except _CannotRun:
        services = ""
    overrides = {}
    for line in services.splitlines():
        name, eq, value = line.partition("=")
        if eq:
            overrides[name.strip()] = value.strip()
    return PostfixSettings(config_directory, values, overrides)


def queued(settings: PostfixSettings) -> set[str]:
    """The queue ids of every message still in Postfix's queue (``postqueue -j``): one that is gone was delivered
    or bounced, and a bounce passes the milter before qmgr removes the queue file."""
    try:
        done = _run("postqueue", settings.config_directory, "-j")
    except _CannotRun as exc:
        raise TemporaryFailure(f"postqueue -j: {exc}") from exc
    if done.returncode != 0:
        raise TemporaryFailure(f"postqueue -j failed: {done.stderr.strip()[:200]}")
    ids: set[str] = set()
    for line in done.stdout.splitlines():
        try:
            ids.add(str(json.loads(line)["queue_id"]))
        except (ValueError, KeyError, TypeError):
            raise TemporaryFailure("postqueue -j: an entry that is no queue record") from None
    return ids


def warnings(settings: PostfixSettings, hosted: Iterable[str], *, local_submission: bool,
             witness: tuple[str, int] | None = None) -> list[str]:
    """What in Postfix's configuration walks around directmilter: for ``check-config``. ``witness``: the
    re-injection listener the commit witness must be sent to ([notify] commit_witness), or None when it is off."""
    hosted = {d.lower() for d in hosted}
    found: list[str] = []
    where = f"Postfix {settings.config_directory}"
    found += _witness_warnings(settings, where, witness)
    destinations = {d.lower() for d in settings.tables("mydestination")}
    for domain in sorted(hosted & destinations):
        found.append(f"warning: {where}: hosted domain {domain} is in mydestination: local(8) applies aliases(5) "
                     "and ~/.forward after the milter; host it in virtual_mailbox_domains instead")
    if not settings.get("non_smtpd_milters"):
        found.append(f"warning: {where}: non_smtpd_milters is empty: local submissions and Postfix's own bounces "
                     "bypass directmilter (set it to $smtpd_milters)")
    if "bounce" not in settings.get("internal_mail_filter_classes"):
        found.append(f"warning: {where}: internal_mail_filter_classes lacks bounce: a bounce about accepted "
                     "Direct mail would carry the decrypted message to the remote sender in clear")
    if settings.get("milter_default_action") not in ("tempfail", "reject"):
        found.append(f"warning: {where}: milter_default_action = {settings.get('milter_default_action')}: with "
                     "directmilter down, mail would pass unprocessed (use tempfail)")
    if "no_milters" in settings.get("receive_override_options"):
        found.append(f"warning: {where}: receive_override_options has no_milters: mail skips directmilter")
    for name, value in sorted(settings.overrides.items()):
        service, _, parameter = name.rpartition("/")
        if (parameter == "smtpd_milters" and not value) or (parameter == "receive_override_options"
                                                             and "no_milters" in value):
            found.append(f"warning: {where}: master.cf service {service} sets {parameter} = {value}: mail "
                         "received there skips directmilter (the re-injection listener too needs the milter)")
    for service in ("bounce", "defer", "trace"):
        cleanup = settings.overrides.get(f"{service}/unix/cleanup_service_name")
        if cleanup is None or settings.overrides.get(f"{cleanup}/unix/milter_macro_daemon_name") != "POSTFIX-REPORT":
            found.append(f"warning: {where}: master.cf service {service} does not use a cleanup with "
                         "-o milter_macro_daemon_name=POSTFIX-REPORT: its reports are refused (they cannot be told "
                         "from a local account's mail), and stay queued")
            break
    always = settings.get("always_bcc")
    if always and always.rpartition("@")[2].lower() not in hosted:
        found.append(f"warning: {where}: always_bcc = {always}: every message to a hosted recipient is refused "
                     "(its decrypted copy would leave the Direct domains)")
    if local_submission and settings.get("local_login_sender_maps") in ("", "static:*"):
        found.append(f"warning: {where}: [milter] local_submission is on and local_login_sender_maps lets every "
                     "Unix user submit as any sender: any local account could sign as any hosted user")
    return found


def _witness_warnings(settings: PostfixSettings, where: str, witness: tuple[str, int] | None) -> list[str]:
    """The commit witness (directmilter.witness) must reach the re-injection listener: elsewhere it
    would bounce to the sender of every message. Without it, a milter after directmilter can refuse a message
    directmilter accepted, and the sender has a processed MDN for it."""
    if witness is None:
        if len(settings.tables("smtpd_milters")) > 1:
            return [f"warning: {where}: smtpd_milters lists more than one milter: one after directmilter may refuse "
                    "a message directmilter accepted (its sender would have a processed MDN, its retry taken for "
                    "a replay): set [notify] commit_witness = true"]
        return []
    host, port = witness
    routes = []
    try:
        for table in settings.tables("transport_maps"):
            routes.append(_lookup(settings.config_directory, table, [DOMAIN]).get(DOMAIN))
    except PostmapError as exc:
        return [f"warning: {where}: transport_maps cannot be read to check the commit witness ({exc.reason})"]
    route = next((r for r in routes if r), None)
    if route is None or not route.endswith((f"[{host}]:{port}", f"{host}:{port}")):
        return [f"warning: {where}: [notify] commit_witness is on, but transport_maps sends {DOMAIN} to "
                f"{route or 'nowhere'}, not to the re-injection listener: add '{DOMAIN} smtp:[{host}]:{port}' "
                "(every witness would bounce to the message's sender)"]
    return []


def describe(settings: PostfixSettings) -> str:
    tables = [name for name in ("canonical_maps", "recipient_canonical_maps", "virtual_alias_maps",
                                "recipient_bcc_maps", "sender_bcc_maps") if settings.get(name)]
    return (f"postfix: {settings.config_directory}, recipient_delimiter {settings.recipient_delimiter or 'none'}, "
            f"checked after-milter rewriting: {', '.join(tables) or 'none'}"
            f"{', always_bcc' if settings.get('always_bcc') else ''}")


class PostmapError(TemporaryFailure):
    """A Postfix lookup table could not be read: what Postfix will do with the address is unknown."""


def _lookup(config_directory: Path, table: str, keys: Sequence[str]) -> dict[str, str]:
    """``postmap -q -``: the keys found in one table, with their values (one process for all keys)."""
    try:
        done = _run("postmap", config_directory, "-q", "-", table, stdin="".join(f"{key}\n" for key in keys))
    except _CannotRun as exc:
        raise PostmapError(f"Postfix table {table}: cannot be read ({exc})") from exc
    problem = next((line for line in done.stderr.splitlines() if "fatal" in line or "error" in line), None)
    if problem is not None or done.returncode not in (0, 1):
        raise PostmapError(f"Postfix table {table}: cannot be read ({problem or f'postmap exit {done.returncode}'})")
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, tab, value = line.partition("\t")
        if tab:
            found[key] = value
    return found


def _addresses(value: str) -> list[str]:
    """A table's result: addresses separated by commas or blanks."""
    return [part.strip().lower() for part in value.replace(",", " ").split() if part.strip()]


class AddressMaps:
    """Where Postfix sends an address after the milter: virtual aliases, recipient/sender bcc maps, always_bcc.

    Answers are kept for ``ttl`` seconds (the tables rarely change, and a reload builds a new instance), so a busy
    HISP pays for ``postmap`` once per address and minute.
    """

    def __init__(self, settings: PostfixSettings, *, ttl: float = 60.0, size: int = 10000) -> None:
        self.settings = settings
        self._virtual = settings.tables("virtual_alias_maps")
        self._recipient_bcc = settings.tables("recipient_bcc_maps")
        self._sender_bcc = settings.tables("sender_bcc_maps")
        self._always_bcc = tuple(_addresses(settings.get("always_bcc")))
        self._aliases = settings.tables("alias_maps")
        self._canonical = (*settings.tables("recipient_canonical_maps"), *settings.tables("canonical_maps"))
        self._ttl = ttl
        self._size = size
        self._kept: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    @property
    def always_bcc(self) -> tuple[str, ...]:
        return self._always_bcc

    def _keys(self, address: str) -> list[str]:
        base, _ = base_mailbox(address, self.settings.recipient_delimiter)
        domain = address.rpartition("@")[2]
        return list(dict.fromkeys([address, base, f"@{domain}"]))

    def _first_match(self, tables: Iterable[str], address: str) -> list[str] | None:
        """The result of the first table and key that match, in Postfix's order; None when nothing matches."""
        keys = self._keys(address)
        _, extension = base_mailbox(address, self.settings.recipient_delimiter)
        for table in tables:
            found = _lookup(self.settings.config_directory, table, keys)
            for key in keys:
                if key in found:
                    results = _addresses(found[key])
                    if key != address and extension:  # propagate_unmatched_extensions (virtual, canonical)
                        results = [self._extend(r, extension) for r in results]
                    return results
        return None

    @staticmethod
    def _extend(address: str, extension: str) -> str:
        local, at, domain = address.rpartition("@")
        return f"{local}{extension}@{domain}" if at else address

    def _cached(self, kind: str, address: str, compute: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get((kind, address))
            if kept is not None and kept[0] > now:
                return kept[1]
        value = compute()
        with self._lock:
            if len(self._kept) >= self._size:
                self._kept.clear()
            self._kept[(kind, address)] = (now + self._ttl, value)
        return value

    def virtual(self, address: str) -> tuple[str, ...]:
        """The addresses cleanup turns a recipient into: canonical maps (recipient_canonical_maps, then
        canonical_maps, one address each), then virtual_alias_maps; itself when none applies."""
        if not self._virtual and not self._canonical:
            return (address,)
        return self._cached("virtual", address, lambda: self._expand(self._rewritten(address)))

    def _rewritten(self, address: str) -> str:
        for table in self._canonical:
            results = self._first_match((table,), address)
            if results:
                result = results[0]
                address = f"{address.rpartition('@')[0]}{result}" if result.startswith("@") else result
        return address

    def _expand(self, address: str) -> tuple[str, ...]:
        final: list[str] = []
        todo = [(address, 0)]
        seen: set[str] = set()
        while todo:
            current, depth = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if len(seen) > MAX_ADDRESSES or depth > MAX_DEPTH:
                raise PostmapError(f"address {address}: virtual_alias_maps expands it past {MAX_ADDRESSES} addresses "
                                   f"or {MAX_DEPTH} levels")
            results = self._first_match(self._virtual, current) if self._virtual else None
            if results is None or results == [current]:
                final.append(current)
                continue
            for result in results:
                if result == current:
                    final.append(current)  # "a -> a, b": a is delivered and b added
                else:
                    todo.append((result, depth + 1))
        return tuple(dict.fromkeys(final))

    def local_aliases(self, address: str) -> tuple[str, ...]:
        """What local(8)'s alias_maps make of a locally delivered address (looked up by local part, with and
        without its extension): the targets, or () when it is not aliased. ~/.forward is not visible here."""
        if not self._aliases:
            return ()
        local = address.rpartition("@")[0]
        base = base_mailbox(address, self.settings.recipient_delimiter)[0].rpartition("@")[0]

        def look() -> tuple[str, ...]:
            for table in self._aliases:
                found = _lookup(self.settings.config_directory, table, list(dict.fromkeys([local, base])))
                for key in (local, base):
                    if key in found:
                        return tuple(part.strip() for part in found[key].split(",") if part.strip())
            return ()

        return self._cached("alias", address, look)

    def recipient_copies(self, address: str) -> tuple[str, ...]:
        """Extra recipients cleanup adds for a recipient: recipient_bcc_maps (and always_bcc)."""
        if not self._recipient_bcc:
            return self._always_bcc
        extra = self._cached("rbcc", address, lambda: tuple(self._first_match(self._recipient_bcc, address) or ()))
        return (*extra, *self._always_bcc)

    def sender_copies(self, sender: str) -> tuple[str, ...]:
        """Extra recipients cleanup adds for a sender: sender_bcc_maps."""
        if not self._sender_bcc or not sender:
            return ()
        return self._cached("sbcc", sender, lambda: tuple(self._first_match(self._sender_bcc, sender) or ()))
