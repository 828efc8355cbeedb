"""The operator's weekly tasks, done on the folders the configuration points at, never on the file itself.

The configuration names folders once, per hosted domain or address::

    [domains."direct.example.org"]
    keys = [{ dir = "/etc/directmilter/keys/direct.example.org" }]
    anchors = ["/etc/directmilter/anchors/direct.example.org"]

and these commands manage what is in them: PKCS#12 keys (``*.p12`` + ``*.p12.pass``, 0600, owned like the
folder, i.e. by the service user), anchor certificates (one PEM file each, named by fingerprint) and trust bundle
URLs (``*.url``). Nothing is half-written: a file appears by rename once it is complete and has been checked (a
key must open, match its certificate, be bound to the owner and be valid now). Changes take effect on the next
``systemctl reload directmilter``. The tracking listing reads the store the milter writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from directmilter import memo
from directmilter.certfacts import describe_certificate
from directmilter.config import Config, normalize_address
from directmilter.errors import ConfigError
from directmilter.keys.load import BUNDLE_URL_SUFFIX, load_certificates, load_identities
from directmilter.tracking.store import open_store
from directmilter.trust.binding import bound_to, bound_to_domain
from directmilter.trust.bundles import is_bundle_url, url_problem

Which = Literal["incoming", "outgoing", "both"]
_ANCHOR_KEYS = {"incoming": "incoming_anchors", "outgoing": "outgoing_anchors"}


def fingerprint(cert: x509.Certificate) -> str:
    return memo.fingerprint(cert).hex()


def _owner(config: Config, owner: str) -> tuple[str, str, dict[str, Any]]:
    """(table kind, normalised name, raw TOML table) of a hosted domain or address."""
    name = normalize_address(owner)
    raw = tomllib.loads(config.path.read_text())
    kind = "addresses" if "@" in name else "domains"
    for key, table in raw.get(kind, {}).items():
        if normalize_address(key) == name:
            return kind, name, table
    raise ConfigError(f"{config.path}: no [{kind}.\"{name}\"] table: {owner} is not configured here")


def _resolve(config: Config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config.path.parent / path


def _keys_folder(config: Config, owner: str) -> Path:
    kind, name, table = _owner(config, owner)
    for entry in table.get("keys", []):
        if isinstance(entry, dict) and isinstance(entry.get("dir"), str):
            return _resolve(config, entry["dir"])
    raise ConfigError(f'{config.path}: [{kind}."{name}"].keys has no {{ dir = "..." }} entry to import into; add '
                      f'one, e.g. keys = [{{ dir = "/etc/directmilter/keys/{name}" }}]')


def _anchor_folders(config: Config, owner: str, which: Which) -> list[Path]:
    kind, name, table = _owner(config, owner)
    directions = ("incoming", "outgoing") if which == "both" else (which,)
    folders: list[Path] = []
    for direction in directions:
        key = _ANCHOR_KEYS[direction] if _ANCHOR_KEYS[direction] in table else "anchors"
        found = [_resolve(config, e) for e in table.get(key, []) if isinstance(e, str) and not is_bundle_url(e)]
        found = [f for f in found if f.is_dir()]
        if not found:
            raise ConfigError(f'{config.path}: [{kind}."{name}"].{key} names no folder for {direction} anchors; '
                              f'add one, e.g. {key} = ["/etc/directmilter/anchors/{name}"]')
        if found[0] not in folders:
            folders.append(found[0])
    return folders


def _write(folder: Path, name: str, data: bytes, mode: int) -> Path:
    """Write ``folder/name`` whole or not at all, with ``mode`` and the folder's owner (the service user)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{name!r}: not a file name to write in {folder}")
    info = folder.stat()
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".import-")
    try:
        os.fchmod(descriptor, mode)
        if os.geteuid() == 0:
            os.fchown(descriptor, info.st_uid, info.st_gid)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        target = folder / name
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


# --- keys ----------------------------------------------------------------------------------------------------


def import_pkcs12(config: Config, owner: str, source: Path, password_file: Path | None = None,
                  *, now: datetime | None = None) -> list[str]:
    """Check a PKCS#12 file for ``owner`` and store it (and its password) 0600 in the owner's keys folder."""
    folder = _keys_folder(config, owner)
    name = normalize_address(owner)
    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".check-") as scratch:
        trial = Path(scratch) / "key.p12"
        shutil.copyfile(source, trial)
        trial.chmod(0o600)
        spec: dict[str, object] = {"pkcs12": str(trial)}
        if password_file is not None:
            trial_pass = Path(scratch) / "key.p12.pass"
            shutil.copyfile(password_file, trial_pass)
            trial_pass.chmod(0o600)
            spec["password_file"] = str(trial_pass)
        identities = load_identities(spec, f"{source}")
    for identity in identities:
        cert = identity.certificate
        bound = bound_to(cert, name) if "@" in name else bound_to_domain(cert, name)
        if not bound:
            raise ConfigError(f"{source}: the certificate ({describe_certificate(cert)}) is not bound to {name} "
                              "(Applicability Statement 4.1.1 / 4.1.2)")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ConfigError(f"{source}: the certificate ({describe_certificate(cert)}) is not valid now "
                              f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
    stem = f"{name.replace('/', '%2F')}-{fingerprint(identities[0].certificate)[:16]}.p12"  # "/" is atext
    if password_file is not None:
        _write(folder, stem + ".pass", password_file.read_bytes(), 0o600)
    target = _write(folder, stem, source.read_bytes(), 0o600)
    return [f"imported {target}: {len(identities)} key(s)"] + [
        f"  {describe_certificate(i.certificate)}, valid until {i.certificate.not_valid_after_utc:%Y-%m-%d}"
        for i in identities]


def list_keys(config: Config) -> Iterator[str]:
    for kind, parties in (("domain", config.domains), ("address", config.addresses)):
        for name, party in sorted(parties.items()):
            for identity in party.identities:
                cert = identity.certificate
                yield (f"{kind} {name}: {describe_certificate(cert)}, valid until "
                       f"{cert.not_valid_after_utc:%Y-%m-%d}, from {identity.source}")


# --- anchors and bundles -------------------------------------------------------------------------------------


def add_anchors(config: Config, owner: str, source: Path, which: Which = "both") -> list[str]:
    certs = load_certificates(source, where=str(source))
    lines = []
    for folder in _anchor_folders(config, owner, which):
        for cert in certs:
            pem = cert.public_bytes(serialization.Encoding.PEM)
            target = _write(folder, f"{fingerprint(cert)[:16]}.pem", pem, 0o644)
            lines.append(f"added {target}: {describe_certificate(cert)}")
    return lines


def remove_anchor(config: Config, owner: str, prefix: str, which: Which = "both") -> list[str]:
    """Remove anchor files in the owner's folders whose certificate's SHA-256 fingerprint starts with ``prefix``."""
    prefix = prefix.lower().replace(":", "")
    if len(prefix) < 8:
        raise ConfigError(f"fingerprint {prefix!r}: give at least 8 hex digits of the SHA-256 fingerprint")
    removed = []
    for folder in _anchor_folders(config, owner, which):
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not entry.is_file() or entry.name.endswith(BUNDLE_URL_SUFFIX):
                continue
            certs = load_certificates(entry, where=str(entry))
            matching = [c for c in certs if fingerprint(c).startswith(prefix)]
            if matching and len(matching) < len(certs):
                raise ConfigError(f"{entry} holds other certificates too; edit it by hand")
            if matching:
                entry.unlink()
                removed.append(f"removed {entry}: {describe_certificate(matching[0])}")
    if not removed:
        raise ConfigError(f"no anchor of {owner} has a fingerprint starting with {prefix}")
    return removed


def add_bundle(config: Config, owner: str, url: str, which: Which = "both") -> list[str]:
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{url!r}: {problem}")
    name = hashlib.sha256(url.strip().encode()).hexdigest()[:16] + BUNDLE_URL_SUFFIX
    data = url.strip().encode() + b"\n"
    folders = _anchor_folders(config, owner, which)
    return [f"added {_write(folder, name, data, 0o644)}: {url.strip()}" for folder in folders]


def remove_bundle(config: Config, owner: str, url: str, which: Which = "both") -> list[str]:
    name = hashlib.sha256(url.strip().encode()).hexdigest()[:16] + BUNDLE_URL_SUFFIX
    removed = []
    for folder in _anchor_folders(config, owner, which):
        if (folder / name).is_file():
            (folder / name).unlink()
            removed.append(f"removed {folder / name}: {url.strip()}")
    if not removed:
        raise ConfigError(f"{owner} has no trust bundle {url.strip()} in its anchor folders")
    return removed


def list_anchors(config: Config, owner: str) -> Iterator[str]:
    _owner(config, owner)  # a clear error for an owner that is not configured
    for direction in ("incoming", "outgoing"):
        anchors = config.anchors_for(owner, direction)
        bundles = config.bundles_for(owner, direction)
        yield f"{direction}: {len(anchors)} anchor(s), {len(bundles)} bundle(s)"
        for cert in anchors:
            yield (f"  {fingerprint(cert)[:16]}  {describe_certificate(cert)}, valid until "
                   f"{cert.not_valid_after_utc:%Y-%m-%d}")
        for url in bundles:
            yield f"  bundle {url}"


# --- tracking ------------------------------------------------------------------------------------------------


def list_awaiting(config: Config, limit: int = 100) -> Iterator[str]:
    store = open_store(config.notify.tracking)
    try:
        rows = store.awaiting(limit)
    finally:
        store.close()
    yield f"{len(rows)} recipient(s) waiting for an MDN" + (f" (first {limit})" if len(rows) == limit else "")
    for row in rows:
        sent = datetime.fromtimestamp(row.sent_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        yield f"{sent}  {row.message_id}  {row.sender} -> {row.recipient}  waiting for {row.waiting_for}"


