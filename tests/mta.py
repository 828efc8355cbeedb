"""Test harness: private Postfix instances, an smtp-sink wrapper and an SMTP client that never raises.

Everything listens on 127.0.0.1 only. A :class:`Postfix` lives in its own tree ``T``::

    T/etc     root-owned: main.cf, master.cf, vmailbox, transport (texthash: no postmap needed)
    T/spool   queue_directory (``postfix check`` creates the queue tree)
    T/data    data_directory, postfix:postfix
    T/mail    virtual(8) Maildirs, nobody:nogroup (virtual refuses uid 0)
    T/maillog the instance's log (postlogd), see :meth:`Postfix.maillog`

The master runs in the foreground (``postfix -c T/etc start-fg``) as a child of the test process in a session of its
own, because on SIGTERM the master signals its whole process group. Three smtpd listeners:

* ``smtp_port``: the MX, with ``smtpd_milters``; the milter sees ``{daemon_name}`` = myhostname.
* ``submission_port``: the same smtpd with ``milter_macro_daemon_name=ORIGINATING`` so a milter can tell outbound
  (submission) from inbound mail by the ``{daemon_name}`` macro.
* Postfix's own reports (bounce, defer, trace) go through ``cleanup-report``, whose milter ``{daemon_name}`` is
  POSTFIX-REPORT: a milter tells them from local submissions (pickup's cleanup) that way.
* ``reinject_port``: the re-injection listener; the same milter sees ``{daemon_name}`` = DIRECTMILTER-REINJECT and
  (directmilter) takes only what it sealed itself.

Typical use (trees go under :func:`scratch_dir`, not pytest's ``tmp_path``: see :func:`make_traversable`)::

    with scratch_dir() as tmp, Sink(tmp / "sink") as sink, \
            Postfix(root=tmp / "a", name="mx.a.test", mailboxes={"alice@a.test": "alice"},
                    relay={"b.test": f"127.0.0.1:{sink.port}"}) as a:
        result = submit(a.smtp_port, "bob@x.test", ["alice@a.test"], message)
        assert result.ok, result
        [delivered] = a.wait_for_delivery("alice@a.test")

Postfix facts this relies on (3.7.11, Debian 12):

* Postfix programs re-read a main.cf whose mtime is under ~2 s old, in 300 ms naps, until it looks stable: a fresh
  main.cf makes ``postfix check`` take 2-3 s and a reload 2 s. :meth:`Postfix.write_config` backdates the files.
* ``postfix stop`` checks once, then sleeps a full second: :meth:`Postfix.stop` sends the SIGTERM itself (20 ms).
* The daemons' command lines never name T (the configuration travels in ``MAIL_CONFIG``), so ``pgrep -f T`` finds
  nothing even while the instance runs: :func:`processes_under` also looks at the environment.
* Maildir files (and queue files) have LF line ends: Postfix stores lines, not CRLF. Only the SMTP wire (e.g. the
  smtp-sink dump, re-CRLF'd in :attr:`SinkMessage.data`) has CRLF again.
* A milter that is down with ``milter_default_action = tempfail``: the banner and EHLO still say 2xx, MAIL FROM gets
  ``451 4.7.1 Service unavailable - try again later``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "MilterSession",
    "Postfix",
    "RecordingMilter",
    "Reply",
    "Sink",
    "SinkMessage",
    "SmtpResult",
    "free_port",
    "make_traversable",
    "parse_sink_dump",
    "processes_under",
    "running",
    "scratch_dir",
    "submit",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
NOBODY_UID = 65534
NOGROUP_GID = 65534

Reply = tuple[int, str]
"""An SMTP reply: (code, text). Multi-line texts are joined with newlines, as smtplib does."""

T = TypeVar("T")


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (clients' source ports, binds to port 0)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def _own_range() -> range:
    """Ports the kernel never hands out by itself, so a port we chose cannot be taken, between our check and the
    server's bind, by a client's source port or another server's bind to port 0 (which is how a Postfix start once
    failed: "bind 127.0.0.1 port 40163: Address already in use")."""
    low, high = _ephemeral_range()
    if low - 10000 >= 4096:
        return range(10000, low)
    return range(high + 1, 65536)


_HANDED_OUT: set[int] = set()
_PORT_LOCK = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _free_ports(count: int, bindable: Callable[[int], bool] = _bindable) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that are free now (``bindable``), outside the kernel's ephemeral range,
    and never handed out before by this process (a port given to a server that has since stopped may still be in
    TIME_WAIT)."""
    own = _own_range()
    ports: list[int] = []
    with _PORT_LOCK:
        for _ in range(len(own)):
            port = own[int.from_bytes(os.urandom(4), "big") % len(own)]
            if port in _HANDED_OUT:
                continue
            _HANDED_OUT.add(port)
            if bindable(port):
                ports.append(port)
                if len(ports) == count:
                    return ports
    raise RuntimeError(f"no {count} free ports left in {own.start}-{own.stop - 1}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a test server: see :func:`_free_ports`."""
    return _free_ports(1)[0]


def _poll(probe: Callable[[], T | None], timeout: float, what: Callable[[], str], interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None; TimeoutError (with ``what()``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(what())
        time.sleep(interval)


def make_traversable(path: Path) -> None:
    """Give "others" search (x) permission on ``path`` and its ancestors where missing (never read or write).

    Postfix daemons run as ``postfix``, virtual(8) as ``nobody`` and smtp-sink drops to ``nobody``; they all open
    absolute paths under the tree. Refuses paths under pytest's ``/tmp/pytest-of-<user>``: every pytest that starts
    chmods that directory back to 0700, so a concurrent test run would break a running instance. Use
    :func:`scratch_dir` instead of ``tmp_path``."""
    if any(part.startswith("pytest-of-") for part in path.parts):
        raise ValueError(f"{path}: an MTA tree cannot live under pytest's basetemp (any pytest starting meanwhile "
                         "resets /tmp/pytest-of-<user> to 0700, locking out the postfix and nobody users); "
                         "use mta.scratch_dir()")
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@contextlib.contextmanager
def scratch_dir(prefix: str = "directmilter-mta-", *, keep: bool | None = None) -> Iterator[Path]:
    """A fresh 0755 directory under /tmp for MTA trees, removed on exit (kept when ``keep`` or the environment
    variable ``MTA_KEEP=1`` says so, for post-mortems). Stop the services inside before it is removed."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if not (keep if keep is not None else os.environ.get("MTA_KEEP") == "1"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (created), so a full disk is a real one (needs root, as CI has)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full; remove the file to make room again."""
    filler = folder / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:  # gone, or a kernel thread we may not read
        return b""


def processes_under(root: Path) -> list[int]:
    """Live processes that belong to the tree ``root``: its path is in their command line, or (Postfix daemons,
    whose command lines never name the config directory) their environment has ``MAIL_CONFIG`` inside ``root``.
    Zombies are ignored."""
    needle = os.fsencode(root)
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        status = _read_proc(pid, "stat")
        # Skip zombies: the third field of /proc/PID/stat (after "(comm)") is the state.
        if not status or status[status.rfind(b")") + 2:][:1] == b"Z":
            continue
        cmdline = _read_proc(pid, "cmdline").split(b"\0")
        environ = _read_proc(pid, "environ").split(b"\0")
        mail_config = [var[len(b"MAIL_CONFIG="):] for var in environ if var.startswith(b"MAIL_CONFIG=")]
        if any(arg.endswith(needle) or needle + b"/" in arg for arg in cmdline) or any(
                cfg == needle or cfg.startswith(needle + b"/") for cfg in mail_config):
            found.append(pid)
    return sorted(found)


def _stop_child(child: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for ``child``; if it is not gone after ``timeout`` seconds, SIGKILL its whole session/process group."""
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(5)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (its parent has not reaped it yet)."""
    status = _read_proc(pid, "stat")
    close = status.rfind(b")")
    return close > 0 and status[close + 2:close + 3] != b"Z"


def _children(parent: int) -> dict[int, str]:
    """Live (non-zombie) child processes of ``parent``: pid -> command name."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        status = _read_proc(int(entry.name), "stat")
        close = status.rfind(b")")
        fields = status[close + 2:].split()
        if len(fields) > 1 and fields[0] != b"Z" and int(fields[1]) == parent:
            children[int(entry.name)] = status[status.find(b"(") + 1:close].decode(errors="replace")
    return children


_RUNNING: dict[int, Postfix | Sink] = {}


@atexit.register
def _stop_leftovers() -> None:
    """Stop instances a test forgot (or could not) stop, so no Postfix outlives the test process."""
    for service in list(_RUNNING.values()):
        with contextlib.suppress(Exception):
            service.stop()


def _maildir_messages(directory: Path) -> list[bytes]:
    """Messages in a Maildir's new/ and cur/, oldest first (Maildir names start with the delivery time)."""
    files = [f for sub in ("new", "cur") if (directory / sub).is_dir() for f in (directory / sub).iterdir()]
    files.sort(key=lambda f: (f.stat().st_mtime_ns, f.name))
    return [f.read_bytes() for f in files]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Postfix:
    """A private Postfix instance under ``root`` (see the module docstring). Configured on construction; the ports
    are chosen then, so peers can be told about each other before anything starts."""

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        mailboxes: Mapping[str, str] | None = None,
        relay: Mapping[str, str] | None = None,
        milter: str | None = None,
        milter_default_action: str = "tempfail",
        mynetworks: str = "127.0.0.0/8 [::1]/128",
        main_cf: Mapping[str, str] | None = None,
        local_users: bool = False,
    ) -> None:
        """
        :param root: the instance's directory (created; ancestors get o+x, see :func:`make_traversable`).
        :param name: myhostname, e.g. ``mx.a.test`` (also the MX's ``{daemon_name}`` milter macro).
        :param mailboxes: address -> Maildir name under T/mail, delivered by virtual(8); their domains become
            ``virtual_mailbox_domains``.
        :param relay: domain -> "host:port"; these become ``relay_domains`` and transport entries
            ``smtp:[host]:port``.
        :param milter: ``smtpd_milters`` for the MX and submission listeners (e.g. ``inet:127.0.0.1:PORT`` or
            ``unix:/path``); None for no milter.
        :param main_cf: extra main.cf settings, applied last (they override the defaults here).
        :param local_users: let unprivileged Unix users submit with ``sendmail`` (see :meth:`sendmail`). Postfix's
            postdrop is set-gid postdrop and refuses a private configuration directory to anyone but root; this
            instance gets a command directory T/bin whose postdrop is a plain copy, and a maildrop (1733) and
            public folder (0711) that copy can use, so the submission path is the one a local account takes.
        """
        self.root = Path(root).absolute()
        self.name = name
        self.mailboxes = dict(mailboxes or {})
        self.relay = dict(relay or {})
        self.milter = milter
        self.milter_default_action = milter_default_action
        self.mynetworks = mynetworks
        self.extra_main_cf = dict(main_cf or {})
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.data = self.root / "data"
        self.mail = self.root / "mail"
        self.maillog_path = self.root / "maillog"
        self.local_users = local_users
        self.bin = self.root / "bin"
        self.smtp_port, self.submission_port, self.reinject_port = _free_ports(3)
        self._child: subprocess.Popen[bytes] | None = None
        self._checked = False
        self._build_tree()
        self.write_config()

    # ----------------------------------------------------------------------------------------------- configuration

    def _build_tree(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.local_users:
            self.bin.mkdir(exist_ok=True)
            self.bin.chmod(0o755)
            for name in os.listdir("/usr/sbin"):
                target = self.bin / name
                if not (name.startswith("post") or name == "sendmail") or target.exists():
                    continue
                if name == "postdrop":
                    shutil.copyfile("/usr/sbin/postdrop", target)
                    target.chmod(0o755)
                else:
                    target.symlink_to(f"/usr/sbin/{name}")
        make_traversable(self.root)
        self.root.chmod(0o755)
        for directory in (self.etc, self.spool, self.data, self.mail):
            directory.mkdir(exist_ok=True)
        self.etc.chmod(0o755)
        self.spool.chmod(0o755)
        os.chown(self.etc, 0, 0)
        os.chown(self.spool, 0, 0)
        shutil.chown(self.data, "postfix", "postfix")
        self.data.chmod(0o700)
        os.chown(self.mail, NOBODY_UID, NOGROUP_GID)
        self.mail.chmod(0o755)

    def main_cf_settings(self) -> dict[str, str]:
        """The main.cf parameters this instance is configured with."""
        mailbox_domains = sorted({_domain(a) for a in self.mailboxes})
        relay_domains = sorted(d.lower() for d in self.relay)
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.etc),
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "myhostname": self.name,
            "mydomain": self.name.partition(".")[2] or "localdomain",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": self.mynetworks,
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_error_sleep_time": "0s",  # default 1s: every rejection would cost a second
            "in_flow_delay": "0s",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.root),
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "smtp_connect_timeout": "5s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": "",
            "milter_default_action": self.milter_default_action,
            "milter_protocol": "6",
            "milter_connect_timeout": "5s",
            "milter_command_timeout": "30s",
            "milter_content_timeout": "30s",
            "smtputf8_enable": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "virtual_mailbox_domains": " ".join(mailbox_domains),
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": f"texthash:{self.etc / 'vmailbox'}",
            "virtual_uid_maps": f"static:{NOBODY_UID}",
            "virtual_gid_maps": f"static:{NOGROUP_GID}",
            "relay_domains": " ".join(relay_domains),
            "transport_maps": f"texthash:{self.etc / 'transport'}",
        }
        if self.local_users:
            settings["command_directory"] = str(self.bin)
        settings.update(self.extra_main_cf)
        return settings

    def master_cf(self) -> str:
        """master.cf: the three smtpd listeners and the usual unix services, nothing chrooted, no :25."""
        listeners = [
            f"{LOOPBACK}:{self.smtp_port} inet n - n - - smtpd",
            f"{LOOPBACK}:{self.submission_port} inet n - n - - smtpd",
            "  -o syslog_name=postfix/submission",
            "  -o milter_macro_daemon_name=ORIGINATING",
            f"{LOOPBACK}:{self.reinject_port} inet n - n - - smtpd",
            "  -o syslog_name=postfix/reinject",
            "  -o milter_macro_daemon_name=DIRECTMILTER-REINJECT",
        ]
        services = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
  -o cleanup_service_name=cleanup-report
defer     unix  - - n -  0 bounce
  -o cleanup_service_name=cleanup-report
trace     unix  - - n -  0 bounce
  -o cleanup_service_name=cleanup-report
cleanup-report unix n - n - 0 cleanup
  -o milter_macro_daemon_name=POSTFIX-REPORT
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
  -o syslog_name=postfix/$service_name
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
lmtp      unix  - - n -  - lmtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
        return "\n".join(listeners) + "\n" + services

    def write_config(self) -> None:
        """(Re)write main.cf, master.cf and the texthash tables from the attributes. Running instances need
        :meth:`reload` afterwards."""
        self._checked = False
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf_settings().items())
        vmailbox = "".join(f"{address} {box.rstrip('/')}/\n" for address, box in self.mailboxes.items())
        transport = "".join(f"{domain} smtp:[{host}]:{port}\n"
                            for domain, (host, _, port) in ((d, hp.rpartition(":")) for d, hp in self.relay.items()))
        # directmilter's commit witness (directmilter.witness) comes back through the re-injection listener
        transport += f"directmilter.invalid smtp:[{LOOPBACK}]:{self.reinject_port}\n"
        for filename, text in (("main.cf", main), ("master.cf", self.master_cf()), ("vmailbox", vmailbox),
                               ("transport", transport)):
            path = self.etc / filename
            path.write_text(text)
            path.chmod(0o644)
            # Postfix re-reads a main.cf modified in the last ~2 s until it looks stable (300 ms naps, seen in
            # master on reload and in every program at start-up): backdate, we wrote the file in one go.
            stamp = time.time() - 60
            os.utime(path, (stamp, stamp))

    # ---------------------------------------------------------------------------------------------------- lifecycle

    def _postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def check(self) -> None:
        """``postfix check``: validates the configuration and creates the queue tree. Raises RuntimeError (with the
        maillog, where postfix writes when there is no tty) on failure."""
        done = self._postfix("check")
        if done.returncode != 0:
            raise RuntimeError(f"postfix check failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                               f"maillog:\n{self.maillog()}")
        self._checked = True

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def start(self, timeout: float = 10) -> Postfix:
        """``postfix check`` (unless done since the configuration was last written), start the master in the
        foreground as our child, wait for the 220 banner."""
        if self.running:
            return self
        if not self._checked:
            self.check()
        # We just ran "postfix check"; quick-start makes start-fg skip its own (slower) check-fatal + check-warn.
        (self.spool / "quick-start").touch()
        out = (self.root / "postfix.out").open("ab")
        try:
            # A new session: on SIGTERM the master signals its whole process group, which must not include us.
            self._child = subprocess.Popen(["postfix", "-c", str(self.etc), "start-fg"], stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            _RUNNING[id(self)] = self
        finally:
            out.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if self.local_users:
            (self.spool / "maildrop").chmod(0o1733)
            (self.spool / "public").chmod(0o711)
        return self

    def sendmail(self, sender: str, recipients: Sequence[str], message: bytes, *,
                 uid: int | None = NOBODY_UID) -> subprocess.CompletedProcess[bytes]:
        """``sendmail -f sender recipients`` on this instance, as the Unix user ``uid`` (None: as ourselves, root);
        an unprivileged uid needs ``local_users``."""
        _count_mta_exchange("Postfix")
        command = ["/usr/sbin/sendmail", "-f", sender, *recipients]
        if uid is not None:
            command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
        return subprocess.run(command, input=message, capture_output=True, timeout=30,
                              env={**os.environ, "MAIL_CONFIG": str(self.etc)})

    def wait_ready(self, timeout: float = 10) -> None:
        """Poll until the milter-free listener says 220. The master binds every listener before it starts any
        daemon, so the others are up too; probing only this one keeps probe sessions away from the milter."""
        def probe() -> bool | None:
            if self._child is not None and self._child.poll() is not None:
                raise RuntimeError(f"postfix exited with {self._child.returncode}:\n{self._startup_output()}")
            try:
                with socket.create_connection((LOOPBACK, self.reinject_port), timeout=2) as sock:
                    banner = sock.recv(512)
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                        sock.recv(512)
                return True if banner.startswith(b"220") else None
            except OSError:
                return None

        _poll(probe, timeout, lambda: f"postfix {self.name} not ready after {timeout}s\n{self._startup_output()}")

    def _startup_output(self) -> str:
        out = self.root / "postfix.out"
        text = out.read_text(errors="replace") if out.exists() else ""
        return f"output:\n{text}\nmaillog:\n{self.maillog()[-4000:]}"

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 5) -> None:
        """Stop the instance and wait for the foreground child; SIGKILL whatever lingers after ``timeout``.

        Does what ``postfix stop`` does (SIGTERM to the master in pid/master.pid; the master then signals its process
        group), without postfix-script's polling, which checks once and then sleeps a whole second before looking
        again, which the master almost always needs a few ms more than: ``postfix stop`` takes 1.1 s, this 20 ms."""
        child, self._child = self._child, None
        _RUNNING.pop(id(self), None)
        if child is None:
            return
        if child.poll() is None:
            pid = self.master_pid()
            if pid is not None and pid in _children(child.pid):
                os.kill(pid, signal.SIGTERM)
            else:  # no master of ours (yet, or any more): let postfix decide
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._postfix("stop", timeout=timeout)
        _stop_child(child, timeout)
        for pid in processes_under(self.root):  # daemons that escaped the process group (should never happen)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def reload(self, timeout: float = 10) -> None:
        """Make the running master re-read its configuration, and wait until it has and until every daemon started
        before is gone (idle ones exit at once; busy ones finish their client first), so the next connection is
        served with the new configuration.

        This is ``postfix reload`` minus the ``postsuper`` runs it adds (one is left running in the background, an
        orphan nobody reaps here): SIGHUP to the master, then wait for its "reload" log line."""
        pid = self.master_pid()
        if not self.running or pid is None:
            raise RuntimeError(f"postfix {self.name} is not running")
        old = set(_children(pid))
        marker = re.compile(r"master\[\d+\]: reload ")
        seen = len(marker.findall(self.maillog()))
        os.kill(pid, signal.SIGHUP)

        def reloaded() -> bool | None:
            """The "reload" line, or (should postlogd lose it: once seen in CI, with the lines around it) every
            daemon of before replaced by new ones, which only a reload does to qmgr and pickup."""
            if len(marker.findall(self.maillog())) > seen:
                return True
            now = set(_children(pid))
            return True if old and now and not old & now else None

        _poll(reloaded, timeout, lambda: f"postfix {self.name} did not reload\n{self.maillog()[-2000:]}")
        _poll(lambda: True if not old & set(_children(pid)) else None, timeout,
              lambda: f"postfix {self.name}: daemons {sorted(old & set(_children(pid)))} outlived the reload")

    def use_milter(self, spec: str) -> None:
        """Have every listener and the non-SMTP paths (sendmail, pickup, Postfix's own reports) use the milter
        ``spec``: smtpd_milters and non_smtpd_milters. Configures only; start (or reload) afterwards."""
        self.milter = spec
        self.extra_main_cf["non_smtpd_milters"] = spec
        self.write_config()

    def set_milter(self, spec: str | None) -> None:
        """Change ``smtpd_milters`` (None: no milter) and reload if running."""
        self.milter = spec
        self.write_config()
        if self.running:
            self.reload()

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Postfix({self.name!r}, smtp={self.smtp_port}, submission={self.submission_port}, "
                f"reinject={self.reinject_port}, root={str(self.root)!r})")

    # ---------------------------------------------------------------------------------------------------- inspection

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue(self) -> list[str]:
        """Queue ids of the messages in the queue (``postqueue -j``)."""
        done = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"postqueue -j failed: {done.stderr}")
        return [json.loads(line)["queue_id"] for line in done.stdout.splitlines() if line.strip()]

    def queue_details(self) -> list[dict[str, object]]:
        """The ``postqueue -j`` records (queue_name, queue_id, sender, recipients with delay_reason, ...)."""
        done = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"postqueue -j failed: {done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        """``postqueue -f``: retry all deferred mail now."""
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], capture_output=True, timeout=30, check=True,
                       stdin=subprocess.DEVNULL)

    def maildir_path(self, address: str) -> Path:
        try:
            return self.mail / self.mailboxes[address].rstrip("/")
        except KeyError:
            raise KeyError(f"{address} is not a mailbox of {self.name}") from None

    def maildir(self, address: str) -> list[bytes]:
        """The messages delivered to ``address`` (Maildir new/ and cur/), oldest first, exactly as stored."""
        return _maildir_messages(self.maildir_path(address))

    def wait_for_delivery(self, address: str, count: int = 1, timeout: float = 20) -> list[bytes]:
        """Wait until ``address`` has at least ``count`` messages and return them all."""
        def probe() -> list[bytes] | None:
            messages = self.maildir(address)
            return messages if len(messages) >= count else None

        return _poll(probe, timeout, lambda: (f"{address}: {len(self.maildir(address))} of {count} message(s) after "
                                              f"{timeout}s; queue {self.queue() if self.running else '-'}\n"
                                              f"maillog:\n{self.maillog()[-4000:]}"))

    def processes(self) -> list[int]:
        """Live processes of this instance (see :func:`processes_under`)."""
        return processes_under(self.root)


@dataclass(frozen=True)
class SinkMessage:
    """One transaction captured by smtp-sink.

    smtp-sink writes the message with LF line ends and drops every CR (even a lone one inside a line); dot-stuffing
    is undone. ``data`` is the message with CRLF line ends, as a Postfix SMTP client sends it; ``raw`` the stored
    text after the smtp-sink headers."""

    path: Path
    mail_from: str
    mail_args: str
    rcpts: list[str]
    rcpt_args: list[str]
    helo: str | None
    client_addr: str
    raw: bytes
    data: bytes


def _address(args: str) -> str:
    """The address in MAIL/RCPT arguments ``<a@b> SIZE=..`` (no brackets; '' for the null sender)."""
    match = re.match(r"\s*(?:(?:FROM|TO):)?\s*<([^>]*)>", args, re.IGNORECASE)
    return match.group(1) if match else args.split()[0] if args.split() else ""


def parse_sink_dump(path: Path) -> SinkMessage:
    """Parse an smtp-sink ``-d`` dump: X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args, X-Rcpt-Args...,
    a three-line Received header, the message, then one empty line."""
    blob = path.read_bytes()
    headers: dict[str, list[str]] = {}
    pos = 0
    while pos < len(blob):  # an interrupted transaction may leave a dump without Received line or message
        end = blob.find(b"\n", pos)
        end = len(blob) if end < 0 else end
        line = blob[pos:end].decode("utf-8", "replace")
        pos = end + 1
        name, _, value = line.partition(": ")
        if name == "Received":
            while blob[pos:pos + 1] in (b"\t", b" "):  # its continuation lines
                pos = (blob.find(b"\n", pos) + 1) or len(blob)
            break
        headers.setdefault(name, []).append(value)
    raw = blob[pos:]
    if raw.endswith(b"\n"):  # the empty line smtp-sink appends
        raw = raw[:-1]
    mail_args = headers.get("X-Mail-Args", [""])[0]
    rcpt_args = headers.get("X-Rcpt-Args", [])
    return SinkMessage(
        path=path,
        mail_from=_address(mail_args),
        mail_args=mail_args,
        rcpts=[_address(args) for args in rcpt_args],
        rcpt_args=rcpt_args,
        helo=headers.get("X-Helo-Args", [None])[0],
        client_addr=headers.get("X-Client-Addr", [""])[0],
        raw=raw,
        data=raw.replace(b"\n", b"\r\n"),
    )


class Sink:
    """``smtp-sink`` on 127.0.0.1: accepts everything and dumps each transaction to a file of its own in ``root``.

    Dump files are written while the message arrives and closed at the final "."; :meth:`messages` only returns
    the ones smtp-sink no longer holds open (checked through /proc/PID/fd)."""

    def __init__(self, root: Path, *, port: int | None = None, hostname: str = "smtp-sink",
                 extra_args: Sequence[str] = ()) -> None:
        """:param extra_args: more smtp-sink options, e.g. ``["-r", "rcpt"]`` (soft-reject RCPT) or ``["-f", "data"]``
        (hard-reject DATA) — see smtp-sink(1)."""
        self.root = Path(root).absolute()
        self.port = port or free_port()
        self.hostname = hostname
        self.extra_args = list(extra_args)
        self._child: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        make_traversable(self.root)
        os.chown(self.root, NOBODY_UID, NOGROUP_GID)  # smtp-sink writes the dumps after dropping to nobody
        self.root.chmod(0o755)

    def start(self, timeout: float = 10) -> Sink:
        if self._child is not None and self._child.poll() is None:
            return self
        argv = ["smtp-sink", "-h", self.hostname, "-d", f"{self.root}/%M.", "-u", "nobody", *self.extra_args,
                f"{LOOPBACK}:{self.port}", "10"]
        self._child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        _RUNNING[id(self)] = self

        def probe() -> bool | None:
            assert self._child is not None
            if self._child.poll() is not None:
                raise RuntimeError(f"smtp-sink exited with {self._child.returncode}: {argv}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return True
            except OSError:
                return None

        try:
            _poll(probe, timeout, lambda: f"smtp-sink not listening on {self.port} after {timeout}s")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5) -> None:
        child, self._child = self._child, None
        _RUNNING.pop(id(self), None)
        if child is None:
            return
        if child.poll() is None:
            child.terminate()
        _stop_child(child, timeout)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _open_files(self) -> set[str]:
        if self._child is None or self._child.poll() is not None:
            return set()
        fd_dir = Path("/proc") / str(self._child.pid) / "fd"
        opened: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    opened.add(os.readlink(fd))
        return opened

    def messages(self) -> list[SinkMessage]:
        """Completely received messages, oldest first."""
        busy = self._open_files()
        dumps = [p for p in self.root.iterdir() if p.is_file() and str(p) not in busy]
        dumps.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        # A dump smtp-sink has created but not yet written (between our /proc check and its first write) parses
        # with no recipients: it is not a received message yet.
        return [m for m in map(parse_sink_dump, dumps) if m.rcpts and m.raw]

    def wait(self, count: int = 1, timeout: float = 20) -> list[SinkMessage]:
        """Wait until at least ``count`` messages have arrived and return them all."""
        def probe() -> list[SinkMessage] | None:
            messages = self.messages()
            return messages if len(messages) >= count else None

        return _poll(probe, timeout, lambda: f"sink {self.port}: {len(self.messages())} of {count} message(s) "
                                             f"after {timeout}s")

    def clear(self) -> None:
        """Forget the messages received so far."""
        busy = self._open_files()
        for path in self.root.iterdir():
            if path.is_file() and str(path) not in busy:
                path.unlink()


@dataclass
class SmtpResult:
    """What an SMTP client saw, stage by stage. ``None`` for a stage that was never reached.

    ``error`` is set when the connection failed or the server hung up (e.g. after a 421)."""

    banner: Reply | None = None
    ehlo: Reply | None = None
    mail: Reply | None = None
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The message was accepted (250 after the final "."), for the ``accepted`` recipients."""
        return self.data is not None and self.data[0] == 250

    @property
    def stage(self) -> str:
        """Where the transaction ended: "CONNECT", "EHLO", "MAIL", "RCPT", "DATA" (DATA command or final dot), or
        "DONE" when the message was accepted."""
        if self.ok:
            return "DONE"
        if self.data is not None:
            return "DATA"
        if self.accepted:
            return "DATA"  # recipients accepted, then the DATA stage failed (see error)
        if self.refused:
            return "RCPT"
        if self.mail is not None:
            return "MAIL"
        if self.ehlo is not None:
            return "EHLO"
        return "CONNECT"

    @property
    def reply(self) -> Reply | None:
        """The reply that decided the outcome: the DATA reply, else the first refused recipient's, else MAIL's..."""
        if self.data is not None:
            return self.data
        if self.refused and not self.accepted:
            return next(iter(self.refused.values()))
        for reply in (self.mail, self.ehlo, self.banner):
            if reply is not None and reply[0] >= 400:
                return reply
        return self.mail or self.ehlo or self.banner

    @property
    def code(self) -> int | None:
        return self.reply[0] if self.reply else None

    @property
    def status(self) -> str | None:
        """The enhanced status code of :attr:`reply` ("4.7.1"), if it has one."""
        if self.reply is None:
            return None
        match = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.reply[1])
        return match.group(1) if match else None

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from "250 2.0.0 Ok: queued as ABC123"."""
        if not self.ok or self.data is None:
            return None
        match = re.search(r"queued as (\S+)", self.data[1])
        return match.group(1) if match else None


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


#: Messages handed to a real MTA (an SMTP session with a Postfix or Sendmail, or Postfix's sendmail command) so far
#: in this process: the conformance summary tells the rows proven through an MTA from those proven at unit level.
MTA_EXCHANGES = 0


def _count_mta_exchange(banner: str) -> None:
    global MTA_EXCHANGES
    if "Postfix" in banner or "Sendmail" in banner:
        MTA_EXCHANGES += 1


def submit(port: int, sender: str, recipients: Sequence[str] | str, message: bytes, *, helo: str = "client.test",
           host: str = LOOPBACK, mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = (),
           timeout: float = 30, source: str | None = None) -> SmtpResult:
    """Send ``message`` over SMTP to ``host:port`` and report every stage's reply; never raises for SMTP outcomes.

    ``message`` is sent byte for byte (smtplib only dot-stuffs and adds the final CRLF if missing); use CRLF line
    ends. DATA is attempted when at least one recipient was accepted."""
    if isinstance(recipients, str):
        recipients = [recipients]
    result = SmtpResult()
    client = smtplib.SMTP(local_hostname=helo, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        code, text = client.connect(host, port)
        result.banner = (code, _text(text))
        if code != 220:
            return result
        _count_mta_exchange(result.banner[1])
        code, text = client.ehlo(helo)
        if code != 250:
            code, text = client.helo(helo)
        result.ehlo = (code, _text(text))
        if code != 250:
            return result
        code, text = client.mail(sender, list(mail_options))
        result.mail = (code, _text(text))
        if code != 250:
            return result
        for rcpt in recipients:
            code, text = client.rcpt(rcpt, list(rcpt_options))
            if code in (250, 251):
                result.accepted.append(rcpt)
            else:
                result.refused[rcpt] = (code, _text(text))
        if not result.accepted:
            return result
        try:
            code, reply = client.data(message)
            result.data = (code, _text(reply))
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            result.data = (exc.smtp_code, _text(exc.smtp_error))
        return result
    except (OSError, smtplib.SMTPException) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()


def wait_until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 30) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; TimeoutError after ``timeout`` s."""
    return _poll(lambda: predicate() or None, timeout, lambda: f"{what} not met after {timeout}s")


@contextlib.contextmanager
def running(*services: Postfix | Sink) -> Iterator[None]:
    """Start services in order and stop them all (in reverse) on exit, also when a start fails."""
    with contextlib.ExitStack() as stack:
        for service in services:
            stack.enter_context(service)
        yield


_MILTER_STAGES = {b"C": "connect", b"H": "helo", b"M": "mail", b"R": "rcpt", b"T": "data", b"L": "header",
                  b"N": "eoh", b"B": "body", b"E": "eom", b"U": "unknown"}


@dataclass
class MilterSession:
    """What :class:`RecordingMilter` saw on one MTA connection: the macros (all stages merged) and the commands."""

    macros: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def daemon_name(self) -> str | None:
        return self.macros.get("{daemon_name}")


class RecordingMilter:
    """A minimal milter (protocol 6, no libmilter) on 127.0.0.1 that records every session and answers "continue",
    or the reply given in ``replies`` for a stage: ``{"rcpt": "550 5.7.1 not you"}``, stages being connect, helo,
    mail, rcpt, data, header, eoh, body, eom. For testing the MTA plumbing only; the real milter is
    directmilter's."""

    def __init__(self, replies: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.replies = dict(replies or {})
        self.sessions: list[MilterSession] = []
        self._server = socket.create_server((LOOPBACK, port or 0))
        self.port: int = self._server.getsockname()[1]
        self.spec = f"inet:{LOOPBACK}:{self.port}"
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()

    def start(self) -> RecordingMilter:
        thread = threading.Thread(target=self._accept_loop, name=f"milter-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> RecordingMilter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _recv(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        session = MilterSession()
        self.sessions.append(session)
        conn.settimeout(30)
        with conn, contextlib.suppress(EOFError, OSError):
            while True:
                (length,) = struct.unpack(">I", self._recv(conn, 4))
                packet = self._recv(conn, length)
                command, payload = packet[:1], packet[1:]
                session.events.append((command.decode(), payload))
                if command == b"O":  # option negotiation: version 6, no actions, all protocol steps
                    conn.sendall(struct.pack(">IcIII", 13, b"O", 6, 0, 0))
                elif command == b"D":  # macros for the next command: its code, then name\0value\0 pairs
                    items = payload[1:].split(b"\0")
                    for name, value in zip(items[0::2], items[1::2], strict=False):
                        if name:
                            session.macros[name.decode(errors="replace")] = value.decode(errors="replace")
                elif command == b"Q":
                    return
                elif command in (b"A", b"K"):  # abort / new connection on the same socket: no reply
                    continue
                else:
                    reply = self.replies.get(_MILTER_STAGES.get(command, ""))
                    if reply is None:
                        conn.sendall(struct.pack(">Ic", 1, b"c"))
                    else:
                        text = reply.encode() + b"\0"
                        conn.sendall(struct.pack(">Ic", len(text) + 1, b"y") + text)
