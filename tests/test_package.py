"""The Debian package, built from this checkout, installed on this machine, and run against a private Postfix.

CI runs as root on a fresh machine, so the package really is installed (dpkg -i): the service user, the folders,
the conffile, the unit, the man pages. The installed program then checks the packaged configuration, and the
installed daemon, running as the service user, secures a message through a private Postfix. The unit itself
cannot run without systemd as PID 1; ``systemd-analyze verify`` checks it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY, World, _toml, plain_message
from milterd import Milterd
from mta import Postfix, Sink, scratch_dir, submit

REPO = Path(__file__).resolve().parent.parent
PROGRAM = "/usr/sbin/directmilter"
ALICE, BOB = "alice@direct.a.test", "bob@direct.b.test"


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("installing the .deb needs root (CI runs as root)")
    with scratch_dir("directmilter-deb-") as out:
        build = subprocess.run(["bash", str(REPO / "packaging" / "build-deb"), str(out)], capture_output=True,
                               text=True, timeout=900)
        assert build.returncode == 0, build.stdout + build.stderr
        [deb] = [p for p in out.glob("directmilter_*.deb")]
        install = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=300)
        assert install.returncode == 0, install.stdout + install.stderr
        yield deb


def test_package_creates_user_folders_conffile_and_man_pages(installed: Path) -> None:
    user = pwd.getpwnam("directmilter")
    assert user.pw_uid < 1000 and user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert "postfix" in grp.getgrnam("directmilter").gr_mem  # Postfix can reach the 0660 socket
    state = os.stat("/var/lib/directmilter")
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (user.pw_uid, 0o750)
    keys = os.stat("/etc/directmilter/keys")
    assert (keys.st_uid, stat.S_IMODE(keys.st_mode)) == (user.pw_uid, 0o700)
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "directmilter"], capture_output=True,
                               text=True, check=True).stdout
    assert "/etc/directmilter/directmilter.conf" in conffiles
    assert Path("/usr/share/man/man8/directmilter.8.gz").is_file()
    assert Path("/usr/share/man/man5/directmilter.conf.5.gz").is_file()
    assert Path("/lib/systemd/system/directmilter.service").is_file()
    examples = Path("/usr/share/doc/directmilter/examples")
    assert {"main.cf.directmilter", "master.cf.directmilter", "sendmail/directmilter.m4"} <= {
        str(p.relative_to(examples)) for p in examples.rglob("*") if p.is_file()}


def test_installed_program_checks_the_packaged_configuration(installed: Path) -> None:
    checked = subprocess.run([PROGRAM, "check-config"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert subprocess.run([PROGRAM, "--version"], capture_output=True, text=True).stdout.startswith("directmilter")


def test_unit_file_verifies(installed: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    verified = subprocess.run(["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/directmilter.service"],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    unit = Path("/lib/systemd/system/directmilter.service").read_text()
    for line in ("Type=notify", "User=directmilter", "RuntimeDirectory=directmilter", "UMask=0007",
                 "Before=postfix.service", "NoNewPrivileges=yes", "ProtectSystem=strict", "ExecReload="):
        assert line in unit


def test_installed_daemon_secures_mail_through_a_private_postfix(world: World, installed: Path) -> None:
    with scratch_dir("directmilter-deb-run-") as root, Sink(root / "wire") as sink:
        service = pwd.getpwnam("directmilter")
        files = root / "files"
        files.mkdir(mode=0o750)

        def copy(source: Path, private: bool = False) -> str:
            target = files / source.name
            shutil.copy(source, target)
            target.chmod(0o600 if private else 0o644)
            os.chown(target, service.pw_uid, service.pw_gid)
            return str(target)

        body: dict[str, Any] = {
            "discovery": {"dns": False, "ldap": False},
            "milter": {"internal_hosts": [], "submission_daemons": ["ORIGINATING"]},
            "notify": {"tracking": f"sqlite:{files}/tracking.db"},
            "domains": {"direct.a.test": {"anchors": [copy(world.r1.cert_path)]}},
            "addresses": {ALICE: {"keys": [{"cert": copy(world.alice.cert_path),
                                            "key": copy(world.alice.key_path, private=True)}]}},
            "certificates": {"files": [copy(world.bob.cert_path)]},
        }
        conf = files / "directmilter.conf"
        conf.write_text(_toml(body))
        os.chown(files, service.pw_uid, service.pw_gid)
        milter = Milterd(conf, root / "milter.log", command=["runuser", "-u", "directmilter", "--", PROGRAM])
        a = Postfix(root=root / "a", name="mx.a.test", mailboxes={ALICE: "alice"},
                    relay={"direct.b.test": f"127.0.0.1:{sink.port}"}, milter=milter.postfix_spec)
        with milter, a:
            sent = submit(a.submission_port, ALICE, [BOB], plain_message())
            assert sent.ok, sent
            [wire] = sink.wait(1)
        log = (root / "milter.log").read_text()
    assert b"application/pkcs7-mime" in wire.data and CANARY.encode() not in wire.data
    assert "event='processed'" in log and CANARY not in log


def test_rpm_builds_with_the_same_layout() -> None:
    """The RPM spec builds (on Debian without RPM dependency checks) with the .deb's files, modes and user."""
    with scratch_dir("directmilter-rpm-") as out:
        build = subprocess.run(["bash", str(REPO / "packaging" / "build-rpm"), str(out)], capture_output=True,
                               text=True, timeout=900)
        assert build.returncode == 0, build.stdout + build.stderr
        [rpm] = list(out.glob("directmilter-*.rpm"))
        listing = subprocess.run(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]",
                                  str(rpm)], capture_output=True, text=True, check=True).stdout
        scripts = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True,
                                 check=True).stdout
    for expected in ("-rwxr-xr-x root /usr/sbin/directmilter", "drwx------ directmilter /etc/directmilter/keys",
                     "-rw-r----- root /etc/directmilter/directmilter.conf",
                     "drwxr-x--- directmilter /var/lib/directmilter", "/usr/lib/systemd/system/directmilter.service",
                     "/usr/share/man/man8/directmilter.8", "/usr/lib/directmilter/directmilter/cli.py",
                     "/usr/share/doc/directmilter/examples/sendmail/directmilter.m4"):
        assert expected in listing, expected
    assert "useradd -r -g directmilter" in scripts and "usermod -a -G directmilter postfix" in scripts
