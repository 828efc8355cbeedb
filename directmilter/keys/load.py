"""Reading certificates and our own private keys from files named in the configuration.

Every failure is a :class:`~directmilter.errors.ConfigError` whose message starts with ``where`` (the configuration
file and the key, e.g. ``directmilter.conf: [domains."direct.a.test"].keys[0]``) and names the file. Messages never
carry key material or passwords.

Formats:

- certificates: PEM (any number of ``CERTIFICATE`` and ``PKCS7`` blocks), DER certificate, DER PKCS#7 bundle
  (``.p7b`` / ``.p7c``); a folder means every regular file in it (sorted by name, dotfiles skipped, not recursive);
- private keys: PEM (PKCS#1, PKCS#8, SEC1 EC, encrypted PEM with ``password_file``) or DER PKCS#8 (plain or
  encrypted); only RSA and EC keys;
- PKCS#12: every private key it holds (a ``.pfx`` exported from Windows may hold several) with the certificate of
  the same public key; the other certificates in it become each identity's ``chain``.

A file holding a private key (a key file, a PKCS#12 file, a password file, or a certificate file that also carries a
key) must not be accessible to group or others: "Security is the product" (conformance AS-6.1-1).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from directmilter import certfacts
from directmilter.errors import ConfigError
from directmilter.keys.identity import PrivateIdentity, PrivateKey

__all__ = [
    "KEY_SPEC_KEYS",
    "check_private_file_mode",
    "load_certificate_file",
    "load_certificates",
    "load_identities",
    "load_private_key",
    "read_file",
    "toml_type",
]

#: The keys one entry of a ``keys = [...]`` array may have.
KEY_SPEC_KEYS = ("cert", "key", "pkcs12", "password_file", "dir")
#: In a ``{ dir = ... }`` keys folder: the PKCS#12 files loaded, each with the password in ``<file>.pass`` if any.
PKCS12_SUFFIXES = (".p12", ".pfx")
#: In an anchors folder: files naming a trust bundle URL (one per file) rather than holding certificates.
BUNDLE_URL_SUFFIX = ".url"

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----",
    re.DOTALL,
)
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE"}
_PKCS7_LABELS = {b"PKCS7", b"CMS", b"PKCS #7 SIGNED DATA"}

_TOML_TYPES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages ("an integer", "a table", ...)."""
    for py_type, name in _TOML_TYPES.items():
        if type(value) is py_type:
            return name
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, expected a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def read_file(path: Path, where: str) -> bytes:
    """The bytes of a regular file, or ConfigError ``where: path: reason``."""
    try:
        if path.is_dir():
            raise IsADirectoryError(path)
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {_os_reason(exc)}") from None


def check_private_file_mode(path: Path, where: str) -> None:
    """Refuse a file holding secrets that group or others may access in any way."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {_os_reason(exc)}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{where}: {path}: is mode {stat.S_IMODE(mode):04o}, accessible to group or others; a file holding a "
            f"private key or password must be mode 0600 or stricter (chmod 600 {path})"
        )


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, DER) of every PEM block whose body is plain base64 (encrypted legacy PEM keys keep their headers)."""
    blocks: list[tuple[bytes, bytes]] = []
    for match in _PEM_BLOCK.finditer(data):
        label, body = match.group(1), match.group(2)
        if b":" in body:  # RFC 1421 headers (Proc-Type/DEK-Info): not something we decode ourselves
            blocks.append((label, b""))
            continue
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the PEM block {label.decode()} is not valid base64") from None
        blocks.append((label, der))
    return blocks


def parse_certificates(data: bytes, path: Path, where: str) -> tuple[list[x509.Certificate], bool]:
    """Certificates in one file's bytes, and whether the file also holds a private key."""
    holds_key = False
    certs: list[x509.Certificate] = []
    try:
        if _is_pem(data):
            for label, der in _pem_blocks(data):
                if label in _CERT_LABELS:
                    certs.append(x509.load_der_x509_certificate(der))
                elif label in _PKCS7_LABELS:
                    certs.extend(pkcs7.load_der_pkcs7_certificates(der))
                elif label.endswith(b"PRIVATE KEY"):
                    holds_key = True
                elif label == b"TRUSTED CERTIFICATE":
                    raise ValueError("OpenSSL 'TRUSTED CERTIFICATE' blocks are not supported; use plain PEM")
            if not certs:
                raise ValueError("no CERTIFICATE or PKCS7 block in this PEM file")
        else:
            try:
                certs.append(x509.load_der_x509_certificate(data))
            except ValueError:
                try:
                    certs.extend(pkcs7.load_der_pkcs7_certificates(data))
                except ValueError:
                    raise ValueError(
                        "not a certificate: expected PEM, a DER certificate or a DER PKCS#7 bundle"
                    ) from None
                if not certs:
                    raise ValueError("the PKCS#7 bundle holds no certificate") from None
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise ConfigError(f"{where}: {path}: {exc}") from None
    for number, cert in enumerate(certs, 1):
        # Nothing could be read from it (its names, its usages, whether it is a CA): refused here, where the
        # operator sees which file, rather than a certificate that fails wherever it is used.
        if (reason := certfacts.unreadable(cert)) is not None:
            raise ConfigError(f"{where}: {path}: certificate {number} ({certfacts.describe_certificate(cert)}): "
                              f"{reason}")
    return certs, holds_key


def dedupe_certificates(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            out.append(cert)
    return out


def load_certificate_file(path: Path, *, where: str = "") -> list[x509.Certificate]:
    """The certificates of one file, in file order (duplicates kept: the order of a chain file matters)."""
    where = where or "certificate file"
    certs, holds_key = parse_certificates(read_file(path, where), path, where)
    if holds_key:
        check_private_file_mode(path, where)
    return certs


def load_certificates(path: str | os.PathLike[str], *, where: str = "") -> list[x509.Certificate]:
    """Every certificate in a file or in the regular files of a folder (sorted by name, dotfiles skipped).

    Duplicates (same DER) are dropped, so a c_rehash-style folder of hash links does not count twice. A folder may
    be empty; a file must hold at least one certificate.
    """
    where = where or "certificates"
    path = Path(path)
    if not path.is_dir():
        return dedupe_certificates(load_certificate_file(path, where=where))
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {_os_reason(exc)}") from None
    certs: list[x509.Certificate] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(BUNDLE_URL_SUFFIX):
            continue
        if entry.is_symlink() and not entry.exists():
            raise ConfigError(f"{where}: {entry}: broken symbolic link")
        if not entry.is_file():  # sub-folders, sockets, fifos: not ours
            continue
        certs.extend(load_certificate_file(entry, where=where))
    return dedupe_certificates(certs)


def _check_key_type(key: object, path: Path, where: str) -> PrivateKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
    raise ConfigError(f"{where}: {path}: is a {kind or 'unknown'} key; only RSA and EC keys are supported")


def load_private_key(path: Path, password: bytes | None, *, where: str = "") -> PrivateKey:
    """An RSA or EC private key from PEM (PKCS#1, PKCS#8, SEC1, encrypted PEM) or DER PKCS#8 (plain or encrypted).

    The file must be mode 0600 or stricter.
    """
    where = where or "private key"
    check_private_file_mode(path, where)
    data = read_file(path, where)
    loader = serialization.load_pem_private_key if _is_pem(data) else serialization.load_der_private_key
    try:
        key = loader(data, password)
    except TypeError as exc:  # password given to a plain key, or missing for an encrypted one
        if password is None:
            raise ConfigError(f"{where}: {path}: the key is encrypted; set password_file") from None
        raise ConfigError(f"{where}: {path}: the key is not encrypted but password_file is set ({exc})") from None
    except ValueError:
        hint = " or the password is wrong" if password is not None else ""
        raise ConfigError(
            f"{where}: {path}: not a readable private key (expected PEM PKCS#1/PKCS#8/EC or DER PKCS#8){hint}"
        ) from None
    except Exception as exc:  # unsupported algorithms raise UnsupportedAlgorithm
        raise ConfigError(f"{where}: {path}: cannot load the private key: {exc}") from None
    return _check_key_type(key, path, where)


def _public_der(key: PrivateKey | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _describe_cert(cert: x509.Certificate) -> str:
    return f"subject {cert.subject.rfc4514_string()!r}, serial {cert.serial_number:#x}"


def _read_password(path: Path, where: str) -> bytes:
    check_private_file_mode(path, where)
    data = read_file(path, where)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    return data


def _pkcs12_extra_keys(data: bytes, password: bytes | None) -> list[object]:
    """Private keys of the PKCS#12's unencrypted SafeContents (cryptography's loader returns only the first).

    Best effort: a structure this does not understand yields no extra keys, the first key still loads.
    """
    from asn1crypto import pkcs12 as asn1_pkcs12

    keys: list[object] = []
    try:
        pfx = asn1_pkcs12.Pfx.load(data)
        for content_info in pfx.authenticated_safe:
            if content_info["content_type"].native != "data":
                continue  # encrypted SafeContents: only cryptography's loader opens these
            for bag in asn1_pkcs12.SafeContents.load(content_info["content"].native):
                bag_id = bag["bag_id"].native
                if bag_id not in ("key_bag", "pkcs8_shrouded_key_bag"):
                    continue
                der = bag["bag_value"].untag().dump(force=True)
                if bag_id == "key_bag":
                    keys.append(serialization.load_der_private_key(der, None))
                else:
                    keys.append(serialization.load_der_private_key(der, password or b""))
    except Exception:
        return []
    return keys


def _load_pkcs12(path: Path, password_path: Path | None, where: str) -> list[PrivateIdentity]:
    check_private_file_mode(path, f"{where}.pkcs12")
    data = read_file(path, f"{where}.pkcs12")
    password = _read_password(password_path, f"{where}.password_file") if password_path else None
    candidates: list[bytes | None] = [password] if password is not None else [None, b""]
    loaded = None
    for candidate in candidates:
        try:
            loaded = pkcs12.load_pkcs12(data, candidate)
            password = candidate
            break
        except ValueError:
            continue
        except Exception as exc:
            raise ConfigError(f"{where}.pkcs12: {path}: cannot load the PKCS#12 file: {exc}") from None
    if loaded is None:
        hint = "the password is wrong or" if password_path else "it needs a password (set password_file) or"
        raise ConfigError(f"{where}.pkcs12: {path}: cannot open the PKCS#12 file: {hint} it is not PKCS#12")
    if loaded.key is None:
        raise ConfigError(f"{where}.pkcs12: {path}: the PKCS#12 file holds no private key")
    certs = [c.certificate for c in ([loaded.cert] if loaded.cert else []) + list(loaded.additional_certs)]
    keys: list[PrivateKey] = []
    seen: set[bytes] = set()
    for key in [loaded.key, *_pkcs12_extra_keys(data, password)]:
        checked = _check_key_type(key, path, f"{where}.pkcs12")
        public = _public_der(checked)
        if public not in seen:
            seen.add(public)
            keys.append(checked)
    by_public: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        by_public.setdefault(_public_der(cert), cert)
    identities: list[tuple[x509.Certificate, PrivateKey]] = []
    for key in keys:
        match = by_public.get(_public_der(key))
        if match is None:
            raise ConfigError(
                f"{where}.pkcs12: {path}: holds a private key ({_key_description(key)}) without the certificate "
                "of its public key"
            )
        identities.append((match, key))
    own = {c.public_bytes(serialization.Encoding.DER) for c, _ in identities}
    chain = tuple(dedupe_certificates([c for c in certs if c.public_bytes(serialization.Encoding.DER) not in own]))
    return [PrivateIdentity(cert, key, chain, str(path)) for cert, key in identities]


def _key_description(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return f"EC {key.curve.name}"


def _load_pem_pair(cert_path: Path, key_path: Path, password_path: Path | None, where: str) -> PrivateIdentity:
    certs = load_certificate_file(cert_path, where=f"{where}.cert")
    password = _read_password(password_path, f"{where}.password_file") if password_path else None
    key = load_private_key(key_path, password, where=f"{where}.key")
    leaf, chain = certs[0], tuple(dedupe_certificates(certs[1:]))
    if _public_der(leaf) != _public_der(key):
        raise ConfigError(
            f"{where}: the private key {key_path} does not match the certificate {cert_path} "
            f"({_describe_cert(leaf)}): its public key differs"
        )
    return PrivateIdentity(leaf, key, chain, str(cert_path))


def _spec_path(spec: Mapping[str, object], name: str, base: Path | None, where: str) -> Path | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{name}: must be a string (a file path), not {toml_type(value)}")
    if not value.strip():
        raise ConfigError(f"{where}.{name}: must not be empty")
    path = Path(value)
    return base / path if base is not None and not path.is_absolute() else path


def _load_one(spec: object, where: str, base: Path | None) -> list[PrivateIdentity]:
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f'{where}: must be a table like {{ cert = "x.pem", key = "x.key" }} or {{ pkcs12 = "x.p12" }}, '
            f"not {toml_type(spec)}"
        )
    for name in spec:
        if name not in KEY_SPEC_KEYS:
            raise ConfigError(f"{where}.{name}: unknown key (expected one of {', '.join(KEY_SPEC_KEYS)})")
    folder = _spec_path(spec, "dir", base, where)
    if folder is not None:
        if len(spec) > 1:
            raise ConfigError(f"{where}: a {{ dir = ... }} entry takes no other keys")
        return _load_folder(folder, f"{where}.dir")
    cert = _spec_path(spec, "cert", base, where)
    key = _spec_path(spec, "key", base, where)
    p12 = _spec_path(spec, "pkcs12", base, where)
    password = _spec_path(spec, "password_file", base, where)
    if p12 is not None:
        if cert is not None or key is not None:
            raise ConfigError(f"{where}: give either pkcs12 or cert and key, not both")
        return _load_pkcs12(p12, password, where)
    if cert is None or key is None:
        missing = "cert" if cert is None else "key"
        raise ConfigError(f"{where}.{missing}: missing (an entry needs cert and key, or pkcs12)")
    return [_load_pem_pair(cert, key, password, where)]


def _load_folder(folder: Path, where: str) -> list[PrivateIdentity]:
    """Every PKCS#12 file in a keys folder (``directmilter keys import`` writes there); an empty folder is fine."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.suffix.lower() in PKCS12_SUFFIXES and p.is_file())
    except OSError as exc:
        raise ConfigError(f"{where}: {folder}: {_os_reason(exc)}") from None
    identities: list[PrivateIdentity] = []
    for entry in entries:
        password = entry.with_name(entry.name + ".pass")
        identities.extend(_load_pkcs12(entry, password if password.is_file() else None, f"{where}: {entry.name}"))
    return identities


def load_identities(
    spec: Mapping[str, object] | Sequence[object], where: str, *, base: Path | None = None
) -> list[PrivateIdentity]:
    """Our identities from one ``keys`` entry (a mapping) or from a whole ``keys`` array.

    ``where`` names the configuration file and the key (``directmilter.conf: [domains."d"].keys[0]`` for one
    entry, ``... .keys`` for an array, whose entries get ``[i]`` appended); ``base`` is the folder relative paths
    are relative to. An entry is ``{cert, key[, password_file]}`` (``cert`` may carry the chain after the leaf)
    or ``{pkcs12[, password_file]}``. The key must match the certificate; ``source`` is the certificate's (or
    PKCS#12's) path.
    """
    if isinstance(spec, Mapping):
        return _load_one(spec, where, base)
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise ConfigError(f"{where}: must be an array of tables, not {toml_type(spec)}")
    identities: list[PrivateIdentity] = []
    for index, entry in enumerate(spec):
        identities.extend(_load_one(entry, f"{where}[{index}]", base))
    return identities
