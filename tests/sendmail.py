"""A private Sendmail 8.17 for tests, beside Postfix and without installing it (issues 20 and 23).

Debian's sendmail packages conflict with postfix, so :func:`unpacked` downloads sendmail-bin, -cf and -base
(``apt-get download``) and unpacks them (``dpkg -x``) into a cache shared by parallel runs (a file lock). A
:class:`Sendmail` lives in its own tree ``T``::

    T/sendmail.mc, T/sendmail.cf   built with m4 from sendmail-cf's macros and etc/sendmail/directmilter.m4,
                                   the snippet the project ships (the rig tests what an admin includes)
    T/queue/                       its queue
    T/mail/<user>/new/             local delivery (T/deliver, a Maildir writer)
    T/etc/                         hosts, resolv.conf, nsswitch.conf, service.switch bound over /etc inside
                                   the daemon's mount namespace: it never looks beyond loopback
    T/maillog                      what it logs: Sendmail logs only through syslog(3), so /dev/log inside its
                                   namespace is our datagram socket

Listeners (all 127.0.0.1): ``smtp_port`` (daemon name MTA), ``submission_port`` (MSA) and ``reinject_port``
(DIRECTMILTER-REINJECT, from the snippet). ``milters`` are the milter specs after directmilter's (each with F=T).
Needs root (namespaces, mounts), as CI has.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mta import LOOPBACK, free_port, make_traversable, wait_until

CACHE = Path(os.environ.get("DIRECTMILTER_SENDMAIL_CACHE", "/var/cache/directmilter-tests/sendmail"))
PACKAGES = ("sendmail-bin", "sendmail-cf", "sendmail-base")
SNIPPET = Path(__file__).resolve().parent.parent / "etc" / "sendmail" / "directmilter.m4"


def unpacked() -> Path:
    """The unpacked packages (downloaded once per machine): the root under which usr/libexec/sendmail/sendmail
    and usr/share/sendmail/cf are."""
    root = CACHE / "root"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr/libexec/sendmail/sendmail").exists():
            return root
        debs = CACHE / "debs"
        debs.mkdir(exist_ok=True)
        debs.chmod(0o777)  # apt-get download runs its fetch as _apt
        done = subprocess.run(["apt-get", "download", "-q", *PACKAGES], cwd=debs, capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(PACKAGES)} failed: {done.stdout}{done.stderr}")
        partial = CACHE / "root.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True, timeout=120)
        partial.rename(root)
        return root


class _Syslog:
    """A /dev/log stand-in: a datagram socket whose messages are appended to a file."""

    def __init__(self, path: Path, log: Path) -> None:
        self.path, self.log = path, log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.log.open("ab", buffering=0) as out:
            while self.running:
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                out.write(data.rstrip(b"\0\n") + b"\n")

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


class Sendmail:
    """One private Sendmail daemon (``sendmail -bD``, in its own mount and UTS namespace) in the tree ``root``."""

    def __init__(self, root: Path, *, name: str, milter: str, mailboxes: Mapping[str, str] | None = None,
                 relay: Mapping[str, str] | None = None, milters: Sequence[str] = ()) -> None:
        self.root, self.name, self.milter, self.milters = root, name, milter, list(milters)
        self.mailboxes = dict(mailboxes or {})  # address -> local user (its Maildir is T/mail/<user>)
        self.relay = dict(relay or {})  # domain -> "host:port"
        self.smtp_port, self.submission_port, self.reinject_port = free_port(), free_port(), free_port()
        self.queue_dir, self.mail_dir, self.etc = root / "queue", root / "mail", root / "etc"
        self._child: subprocess.Popen[bytes] | None = None
        self._session: int | None = None  # the daemon's session id, kept after stop() to check for leftovers
        self._syslog: _Syslog | None = None

    # ------------------------------------------------------------------------------------------------ configuration

    def _mc(self) -> str:
        r = self.root
        domains = sorted({address.rpartition("@")[2] for address in self.mailboxes})
        relays = "".join(
            f"Mrelay{i},\tP=[IPC], F=mDFMuXa8k, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\\r\\n, L=2040, "
            f"T=DNS/RFC822/SMTP,\n\t\tA=TCP $h {hostport.rpartition(':')[2]}\n"
            for i, hostport in enumerate(self.relay.values()))
        rules = "".join(f"R$* < @ {domain} $* > $*\t$#relay{i} $@ [{hostport.rpartition(':')[0]}] $: $1 < @ "
                        f"{domain} $2 > $3\n" for i, (domain, hostport) in enumerate(self.relay.items()))
        filters = "".join(f"INPUT_MAIL_FILTER(`after{i}', `S={spec}, F=T, T=S:30s;R:60s;E:5m')dnl\n"
                          for i, spec in enumerate(self.milters))
        return f"""divert(-1)
divert(0)dnl
VERSIONID(`directmilter test instance')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{self.name}')dnl
define(`QUEUE_DIR', `{r}/queue')dnl
define(`confPID_FILE', `{r}/sendmail.pid')dnl
define(`ALIAS_FILE', `{r}/aliases')dnl
define(`STATUS_FILE', `{r}/statistics')dnl
define(`HELP_FILE', `{r}/helpfile')dnl
define(`confSERVICE_SWITCH_FILE', `{r}/etc/service.switch')dnl
define(`confHOSTS_FILE', `{r}/etc/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confQUEUE_LA', `100')dnl
define(`confREFUSE_LA', `100')dnl
define(`confDELAY_LA', `0')dnl
define(`confTO_QUEUERETURN', `1h')dnl
define(`LOCAL_MAILER_PATH', `{r}/deliver')dnl
define(`LOCAL_MAILER_ARGS', `deliver $u')dnl
MODIFY_MAILER_FLAGS(`LOCAL', `+S')dnl
MODIFY_MAILER_FLAGS(`LOCAL', `-w')dnl
MODIFY_MAILER_FLAGS(`LOCAL', `-m')dnl
FEATURE(`nocanonify')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`accept_unresolvable_domains')dnl
LOCAL_DOMAIN(`{self.name} {" ".join(domains)}')dnl
DAEMON_OPTIONS(`Port={self.smtp_port}, Addr={LOOPBACK}, Name=MTA')dnl
DAEMON_OPTIONS(`Port={self.submission_port}, Addr={LOOPBACK}, Name=MSA, M=E')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
define(`DIRECTMILTER_SOCKET', `{self.milter}')dnl
define(`DIRECTMILTER_REINJECT_PORT', `{self.reinject_port}')dnl
define(`DIRECTMILTER_TIMEOUTS', `S:30s;R:60s;E:5m')dnl
include(`{SNIPPET}')dnl
{filters}MAILER_DEFINITIONS
{relays}LOCAL_RULE_0
{rules}"""

    def write_config(self) -> None:
        """(Re)write the mc, build sendmail.cf with m4, and write the files it names."""
        unpacked_root = unpacked()
        cf_dir = unpacked_root / "usr/share/sendmail/cf"
        for directory in (self.root, self.queue_dir, self.mail_dir, self.etc):
            directory.mkdir(parents=True, exist_ok=True)
        make_traversable(self.root)
        self.queue_dir.chmod(0o700)
        mc = self.root / "sendmail.mc"
        mc.write_text(self._mc())
        built = subprocess.run(["m4", f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4/cf.m4"), str(mc)],
                               capture_output=True, text=True, timeout=30)
        if built.returncode != 0 or built.stderr.strip():
            raise RuntimeError(f"m4 failed ({built.returncode}): {built.stderr}")
        (self.root / "sendmail.cf").write_text(built.stdout)
        (self.root / "aliases").write_text("postmaster: root\nMAILER-DAEMON: postmaster\n"
                                           + "".join(f"{a.partition('@')[0]}: {u}\n"
                                                     for a, u in self.mailboxes.items() if a.partition("@")[0] != u))
        (self.root / "statistics").touch()
        shutil.copy(unpacked_root / "etc/mail/helpfile", self.root / "helpfile")
        deliver = self.root / "deliver"
        deliver.write_text(f"""#!/bin/sh
# Sendmail's local mailer here (its flags from FEATURE(local_procmail) put "-f sender" first): the last argument
# is the user; the message (with Return-Path) on stdin goes into its Maildir.
set -e
for user; do :; done
box={shlex.quote(str(self.mail_dir))}/"$user"
mkdir -p "$box/tmp" "$box/new"
name="$(date +%s.%N).$$"
cat > "$box/tmp/$name"
mv "$box/tmp/$name" "$box/new/$name"
""")
        deliver.chmod(0o755)
        (self.etc / "hosts").write_text(f"127.0.0.1\t{self.name} localhost\n::1\tlocalhost\n")
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (self.etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
        (self.etc / "service.switch").write_text("hosts files\naliases files\n")

    # ----------------------------------------------------------------------------------------------------- lifecycle

    @property
    def binary(self) -> Path:
        return unpacked() / "usr/libexec/sendmail/sendmail"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _namespace_script(self, *command: str) -> str:
        """A shell script that, inside a new mount and UTS namespace, hides the machine's resolver and /dev/log
        behind ours, then runs ``command``."""
        r, q = self.root, shlex.quote
        nodes = " ".join(["null", "zero", "full", "random", "urandom", "tty"])
        return f"""set -e
mount --make-rprivate /
mkdir -p {q(str(r / "dev"))}
mount --bind /dev {q(str(r / "dev"))}
mount -t tmpfs -o mode=0755,size=1m tmpfs /dev
for node in {nodes}; do touch /dev/$node; mount --bind {q(str(r / "dev"))}/$node /dev/$node; done
touch /dev/log && mount --bind {q(str(r / "log.sock"))} /dev/log
for file in hosts resolv.conf nsswitch.conf; do mount --bind {q(str(self.etc))}/$file /etc/$file; done
hostname {q(self.name)}
{" ".join(q(c) for c in command)}
"""

    def run(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        """``sendmail -C T/sendmail.cf ARGS`` in the instance's namespace (queue runs, -bi, -bt, -bv...)."""
        script = self._namespace_script(str(self.binary), "-C", str(self.root / "sendmail.cf"), *args)
        return subprocess.run(["unshare", "-m", "-u", "sh", "-c", script], input=input, capture_output=True,
                              timeout=timeout)

    def start(self, timeout: float = 20) -> Sendmail:
        if self.running:
            return self
        if not (self.root / "sendmail.cf").exists():
            self.write_config()
        if self._syslog is None:
            (self.root / "log.sock").unlink(missing_ok=True)
            self._syslog = _Syslog(self.root / "log.sock", self.root / "maillog")
        aliases = self.run("-bi")
        if aliases.returncode != 0:
            raise RuntimeError(f"sendmail -bi failed: {aliases.stdout!r} {aliases.stderr!r}\n{self.maillog()}")
        script = self._namespace_script("exec", str(self.binary), "-C", str(self.root / "sendmail.cf"), "-bD",
                                        "-q5s")
        out = (self.root / "sendmail.out").open("ab")
        try:
            self._child = subprocess.Popen(["unshare", "-m", "-u", "sh", "-c", script], stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        self._session = self._child.pid
        try:
            wait_until(self._banner, f"Sendmail {self.name} to answer on {self.smtp_port}", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _banner(self) -> bool:
        if self._child is not None and self._child.poll() is not None:
            raise RuntimeError(f"sendmail exited with {self._child.returncode}: "
                               f"{(self.root / 'sendmail.out').read_text(errors='replace')}\n{self.maillog()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.smtp_port), timeout=2) as conn:
            conn.settimeout(5)
            return conn.recv(512).startswith(b"220")
        return False

    def stop(self, timeout: float = 10) -> None:
        """Stop the daemon and every process it started (they share its process group)."""
        if self._child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._child.pid, signal.SIGTERM)
            try:
                self._child.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._child.pid, signal.SIGKILL)
                self._child.wait(timeout)
            deadline = time.monotonic() + timeout
            while self.processes() and time.monotonic() < deadline:
                for pid in self.processes():  # children that left the process group (queue runners)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - timeout / 2 else signal.SIGTERM)
                time.sleep(0.05)
            self._child = None
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    def __enter__(self) -> Sendmail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------- observation

    def processes(self) -> list[int]:
        """The live processes of this instance: its session (Sendmail rewrites its command lines, so
        mta.processes_under cannot tell them). Zombies are ignored."""
        if self._session is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_bytes()
                    fields = stat[stat.rfind(b")") + 2:].split()
                    if fields[0] != b"Z" and int(fields[3]) == self._session:  # state, ppid, pgrp, session
                        found.append(int(entry.name))
        return sorted(found)

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def queue(self) -> list[str]:
        """The queue ids of the messages in the queue."""
        return sorted(p.name[2:] for p in self.queue_dir.glob("qf*"))

    def flush(self) -> None:
        """A queue run now (``sendmail -q``), rather than the daemon's next one."""
        self.run("-q", timeout=60)

    def maildir(self, address: str) -> list[bytes]:
        box = self.mail_dir / self.mailboxes[address] / "new"
        return [p.read_bytes() for p in sorted(box.iterdir())] if box.is_dir() else []

