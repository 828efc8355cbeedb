"""Test harness: a private OpenLDAP slapd on 127.0.0.1 holding Direct address certificates.

A :class:`Slapd` lives in its own directory ``R`` (give it a :func:`mta.scratch_dir` subdirectory)::

    R/slapd.conf   generated (slapd.conf style, no cn=config): core, cosine and inetorgperson schemas from
                   /etc/ldap/schema, ``moduleload back_mdb`` from /usr/lib/ldap, one ``database mdb``
    R/db/          the mdb database; the suffix entry and ``ou=people`` are loaded with slapadd on first start
    R/slapd.log    slapd's stderr: ``-d 256`` (stats) writes one line per connection and operation, see
                   :meth:`Slapd.binds` and :meth:`Slapd.searches`

People go to ``uid=<uid>,ou=people,<suffix>`` as inetOrgPerson entries, so a client has to search the subtree
under the naming context, as Direct's LDAP certificate discovery does (root DSE ``namingContexts``, then
``(mail=<address>)`` with ``userSMIMECertificate`` / ``userCertificate;binary``). Anonymous binds and reads are
allowed everywhere; the rootdn (``cn=admin,<suffix>``, password :attr:`Slapd.rootpw`) writes.

Typical use::

    with scratch_dir("directmilter-ldap-") as tmp, Slapd(tmp / "ldap") as ldap:
        ldap.add_person("bob", "bob@direct.b.test", [bob.der()])
        ... # point the agent at ldap.url
        assert any(s.filter == "(mail=bob@direct.b.test)" for s in ldap.searches())
        assert any(b.anonymous for b in ldap.binds())

Facts this relies on (slapd 2.5.13, Debian 12):

* Backends are modules in /usr/lib/ldap (``back_mdb.so``); ``modulepath`` must name the directory.
* With ``-d LEVEL`` slapd stays in the foreground and writes debug output at LEVEL to stderr, each line prefixed
  with a hex timestamp and thread id; ``loglevel`` only feeds syslog (absent here). SIGTERM stops it in ~10 ms.
* Without ``-u``/``-g`` slapd keeps the starting user's privileges, so the tree needs no special permissions.
* The ``SRCH`` lines are logged before the search runs, but ``RESULT`` / ``SEARCH RESULT`` lines after the
  response was sent: a client can see its answer before the result line is in the log (use :meth:`Slapd.wait_log`).
* ``userCertificate`` has Certificate syntax: slapd requires the ``;binary`` option (plain ``userCertificate`` is
  refused: "requires ;binary transfer") and parses the value (random bytes are refused). ``userSMIMECertificate``
  is Binary syntax: anything goes, but *without* ``;binary`` ("option "binary" not supported with type").
* ldap-utils read /etc/ldap/ldap.conf and ~/.ldaprc: every command here runs with ``LDAPNOINIT=1``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mta import LOOPBACK, _poll, _stop_child, free_port

__all__ = ["LdapBind", "LdapSearch", "Slapd", "ldif"]

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
DEFAULT_SCHEMAS = ("core", "cosine", "inetorgperson")

_ENV = {**os.environ, "LDAPNOINIT": "1"}
_SAFE_STRING = re.compile(r"^[\x01-\x09\x0b-\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b-\x0c\x0e-\x7f]*$")
_OP_LINE = re.compile(r"\bconn=(\d+) op=(\d+) (.*)$")


# ---------------------------------------------------------------------------------------------------------- LDIF

def _ldif_line(attribute: str, value: str | bytes) -> str:
    if isinstance(value, str) and _SAFE_STRING.match(value) and not value.endswith(" "):
        return f"{attribute}: {value}"
    raw = value.encode() if isinstance(value, str) else value
    return f"{attribute}:: {base64.b64encode(raw).decode()}"


def ldif(dn: str, attributes: Mapping[str, Sequence[str | bytes]]) -> str:
    """One LDIF entry (for ldapadd/slapadd). Byte values and unsafe strings are base64 (``attr:: ...``)."""
    lines = [_ldif_line("dn", dn)]
    for attribute, values in attributes.items():
        lines.extend(_ldif_line(attribute, value) for value in values)
    return "\n".join(lines) + "\n"


def _base_entries(suffix: str, people: str) -> str:
    """The suffix entry (dc=, o= or ou= as its first RDN says) and the people container."""
    attribute, _, value = suffix.split(",")[0].partition("=")
    attribute = attribute.strip().lower()
    value = value.strip()
    top: dict[str, list[str | bytes]]
    if attribute == "dc":
        top = {"objectClass": ["dcObject", "organization"], "dc": [value], "o": [value]}
    elif attribute == "o":
        top = {"objectClass": ["organization"], "o": [value]}
    elif attribute == "ou":
        top = {"objectClass": ["organizationalUnit"], "ou": [value]}
    else:
        raise ValueError(f"suffix {suffix!r}: the first RDN must be dc=, o= or ou=")
    ou = {"objectClass": ["organizationalUnit"], "ou": [people.split(",")[0].partition("=")[2]]}
    return ldif(suffix, top) + "\n" + ldif(people, ou)


# ---------------------------------------------------------------------------------------------------- operations

@dataclass
class LdapBind:
    """A BIND seen in the stats log. ``method`` 128 is simple; ``err`` is None until its RESULT line is logged."""

    conn: int
    op: int
    dn: str
    method: int
    err: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.dn == "" and self.method == 128


@dataclass
class LdapSearch:
    """A SRCH seen in the stats log: base, scope (0 base, 1 one level, 2 subtree), filter as slapd normalised it
    (``(mail=bob@direct.b.test)``), requested attributes; ``err`` and ``nentries`` once its result is logged."""

    conn: int
    op: int
    base: str
    scope: int
    filter: str
    attrs: list[str]
    err: int | None = None
    nentries: int | None = None


def _field(text: str, name: str) -> str | None:
    match = re.search(rf'\b{name}=("(?:[^"\\]|\\.)*"|\S*)', text)
    if match is None:
        return None
    value = match.group(1)
    return value[1:-1] if value.startswith('"') else value


def _int_field(text: str, name: str) -> int | None:
    value = _field(text, name)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


# ---------------------------------------------------------------------------------------------------------- slapd

_RUNNING: dict[int, Slapd] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            server.stop()


class Slapd:
    """A private slapd on 127.0.0.1 (see the module docstring). The port is chosen on construction."""

    def __init__(self, root: Path, suffix: str = "dc=direct,dc=b,dc=test", *, port: int | None = None,
                 rootpw: str = "secret", schemas: Iterable[str] = DEFAULT_SCHEMAS, people: str = "ou=people",
                 debug_level: int = 256) -> None:
        """
        :param root: the server's directory (created).
        :param suffix: the database suffix, advertised as the root DSE's ``namingContexts``.
        :param schemas: schema names (files ``/etc/ldap/schema/<name>.schema``) or paths, in order.
        :param people: the container for :meth:`add_person` entries, relative to the suffix.
        :param debug_level: slapd ``-d`` level; 256 (stats) is what :meth:`binds` and :meth:`searches` read.
        """
        self.root = Path(root).absolute()
        self.suffix = suffix
        self.rootdn = f"cn=admin,{suffix}"
        self.rootpw = rootpw
        self.people_dn = f"{people},{suffix}"
        self.schemas = [Path(s) if "/" in s else SCHEMA_DIR / f"{s}.schema" for s in schemas]
        self.debug_level = debug_level
        self.port = port or free_port()
        self.url = f"ldap://{LOOPBACK}:{self.port}"
        self.conf_path = self.root / "slapd.conf"
        self.db_dir = self.root / "db"
        self.log_path = self.root / "slapd.log"
        self._log_offset = 0
        self._child: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_dir.mkdir(exist_ok=True)
        self.write_config()

    def write_config(self) -> None:
        includes = "".join(f"include {path}\n" for path in self.schemas)
        self.conf_path.write_text(f"""\
{includes}
pidfile {self.root / "slapd.pid"}
argsfile {self.root / "slapd.args"}
modulepath {MODULE_DIR}
moduleload back_mdb

database mdb
maxsize 16777216
suffix "{self.suffix}"
rootdn "{self.rootdn}"
rootpw {self.rootpw}
directory {self.db_dir}
index objectClass eq
index mail,uid eq

access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
access to * by * read
""")
        self.conf_path.chmod(0o600)  # holds rootpw

    # --------------------------------------------------------------------------------------------------- lifecycle

    def _run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 30) -> str:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, env=_ENV)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def start(self, timeout: float = 10) -> Slapd:
        """slaptest, slapadd the base entries into a new database, start slapd in the foreground, wait until it
        accepts connections."""
        if self.running:
            return self
        self._run(["slaptest", "-f", str(self.conf_path), "-u"])
        if not (self.db_dir / "data.mdb").exists():
            self._run(["slapadd", "-f", str(self.conf_path), "-q"], stdin=_base_entries(self.suffix, self.people_dn))
        out = self.log_path.open("ab")
        try:
            self._child = subprocess.Popen(
                ["slapd", "-f", str(self.conf_path), "-h", f"{self.url}/", "-d", str(self.debug_level)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=_ENV)
        finally:
            out.close()
        _RUNNING[id(self)] = self

        def probe() -> bool | None:
            assert self._child is not None
            if self._child.poll() is not None:
                raise RuntimeError(f"slapd exited with {self._child.returncode}:\n{self._tail()}")
            if "slapd starting" not in self._text():  # logged after the backends are up, before serving
                return None
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return True
            except OSError:
                return None

        try:
            _poll(probe, timeout, lambda: f"slapd not ready on {self.port} after {timeout}s:\n{self._tail()}", 0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM slapd and wait (SIGKILL after ``timeout``). The database stays for a later :meth:`start`."""
        child, self._child = self._child, None
        _RUNNING.pop(id(self), None)
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        _stop_child(child, timeout)

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Slapd({self.url!r}, suffix={self.suffix!r}, root={str(self.root)!r})"

    # ------------------------------------------------------------------------------------------------------ entries

    def person_dn(self, uid: str) -> str:
        return f"uid={uid},{self.people_dn}"

    def _admin(self, tool: str, text: str) -> None:
        if not self.running:
            raise RuntimeError("slapd is not running")
        self._run([tool, "-x", "-H", self.url, "-D", self.rootdn, "-w", self.rootpw], stdin=text)

    def add_entry(self, dn: str, attributes: Mapping[str, Sequence[str | bytes]]) -> None:
        """Add any entry (as the rootdn, with ldapadd)."""
        self._admin("ldapadd", ldif(dn, attributes))

    def add_person(self, uid: str, mail: str | Sequence[str], certs: Sequence[bytes] = (),
                   attribute: str = "userCertificate;binary", *,
                   extra: Mapping[str, Sequence[str | bytes]] | None = None) -> str:
        """Add ``uid=<uid>,ou=people,<suffix>`` (inetOrgPerson) with ``mail`` and the DER certificates ``certs`` in
        ``attribute``: ``userCertificate;binary`` (a parsable certificate) or ``userSMIMECertificate`` (any bytes;
        slapd refuses ``;binary`` on it). Any other name is passed on as is. Returns the DN."""
        mails = [mail] if isinstance(mail, str) else list(mail)
        attributes: dict[str, Sequence[str | bytes]] = {
            "objectClass": ["inetOrgPerson"], "uid": [uid], "cn": [uid], "sn": [uid], "mail": mails}
        if certs:
            attributes[attribute] = list(certs)
        attributes.update(extra or {})
        dn = self.person_dn(uid)
        self.add_entry(dn, attributes)
        return dn

    def set_certs(self, uid: str, certs: Sequence[bytes], attribute: str = "userCertificate;binary") -> None:
        """Replace the person's certificates in ``attribute`` (none: delete the attribute)."""
        change = ldif(self.person_dn(uid), {"changetype": ["modify"], "replace": [attribute],
                                            attribute: list(certs)}) + "-\n"
        self._admin("ldapmodify", change)

    def remove(self, uid: str) -> None:
        """Delete the person ``uid``."""
        if not self.running:
            raise RuntimeError("slapd is not running")
        self._run(["ldapdelete", "-x", "-H", self.url, "-D", self.rootdn, "-w", self.rootpw, self.person_dn(uid)])

    def ldapsearch(self, *args: str, base: str | None = None) -> str:
        """``ldapsearch -x -LLL`` (anonymous) against this server; ``args`` are the filter and attributes (and any
        option); ``base`` defaults to the suffix."""
        return self._run(["ldapsearch", "-x", "-LLL", "-H", self.url, "-b", self.suffix if base is None else base,
                          *args])

    # --------------------------------------------------------------------------------------------------- inspection

    def _text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self) -> str:
        return self._text()[-3000:]

    def log(self) -> str:
        """slapd's output since the start (or since :meth:`clear_log`)."""
        return self._text()[self._log_offset:]

    def clear_log(self) -> None:
        """Forget what was logged so far (for :meth:`log`, :meth:`binds`, :meth:`searches`)."""
        self._log_offset = len(self._text())

    def wait_log(self, pattern: str, timeout: float = 5) -> re.Match[str]:
        """Wait until ``pattern`` (a regular expression) matches a line of :meth:`log`."""
        regex = re.compile(pattern, re.MULTILINE)
        return _poll(lambda: regex.search(self.log()), timeout,
                     lambda: f"slapd log has no {pattern!r} after {timeout}s:\n{self.log()[-3000:]}")

    def _operations(self) -> list[tuple[int, int, str]]:
        ops: list[tuple[int, int, str]] = []
        for line in self.log().splitlines():
            match = _OP_LINE.search(line)
            if match:
                ops.append((int(match.group(1)), int(match.group(2)), match.group(3)))
        return ops

    def binds(self) -> list[LdapBind]:
        """Every BIND so far, oldest first (also the rootdn's, from :meth:`add_person` and friends)."""
        binds: dict[tuple[int, int], LdapBind] = {}
        for conn, op, text in self._operations():
            if text.startswith("BIND ") and " method=" in text:  # a second BIND line (mech=SIMPLE ...) follows
                binds[conn, op] = LdapBind(conn, op, _field(text, "dn") or "", _int_field(text, "method") or 0)
            elif text.startswith("RESULT ") and (conn, op) in binds and _field(text, "tag") == "97":
                binds[conn, op].err = _int_field(text, "err")
        return list(binds.values())

    def searches(self) -> list[LdapSearch]:
        """Every search so far, oldest first."""
        searches: dict[tuple[int, int], LdapSearch] = {}
        for conn, op, text in self._operations():
            if text.startswith("SRCH base="):
                searches[conn, op] = LdapSearch(conn, op, _field(text, "base") or "", _int_field(text, "scope") or 0,
                                                _field(text, "filter") or "", [])
            elif text.startswith("SRCH attr=") and (conn, op) in searches:
                searches[conn, op].attrs.extend(text[len("SRCH attr="):].split())
            elif text.startswith("SEARCH RESULT ") and (conn, op) in searches:
                searches[conn, op].err = _int_field(text, "err")
                searches[conn, op].nentries = _int_field(text, "nentries")
        return list(searches.values())
