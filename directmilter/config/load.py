"""Loading the configuration file: every section read and checked at once, each error naming file and key.

The flat sections are read from their declarations in :mod:`directmilter.config.model` (:meth:`_Loader.section`);
hosted domains and addresses, [certificates], [actions] and [policy] by the methods named after them.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import Field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography import x509

from directmilter.config import kinds
from directmilter.config.model import (
    CERTIFICATES_KEYS,
    FLAT_SECTIONS,
    PARTY_KEYS,
    SECTIONS,
    Config,
    Party,
    normalize_address,
    settings_of,
)
from directmilter.errors import ConfigError
from directmilter.keys.identity import PrivateIdentity
from directmilter.keys.load import BUNDLE_URL_SUFFIX, load_certificates, load_identities, toml_type
from directmilter.keys.load import dedupe_certificates as _dedupe
from directmilter.policy import DEFAULTS as ACTION_DEFAULTS
from directmilter.policy import Actions, check_action
from directmilter.postfix import read_settings
from directmilter.trust.bundles import is_bundle_url, url_problem
from directmilter.trust.certificate_policy import DIRECTIONS as POLICY_DIRECTIONS
from directmilter.trust.certificate_policy import CertificatePolicy
from directmilter.trust.validator import REVOCATION_MODES

__all__ = ["load_config"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: A hosted address's local part (RFC 5322 3.2.3 dot-atom): names key files too, so never ``..`` or a leading dot.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_REVOCATION = kinds.Choice(REVOCATION_MODES)


def _quote(key: str) -> str:
    if _BARE_KEY.match(key):
        return key
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_T = TypeVar("_T")


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.base = path.absolute().parent

    def err(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: {reason}" if key else f"{self.name}: {reason}")

    def where(self, key: str) -> str:
        return f"{self.name}: {key}"

    # -- generic checks

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(key, f"must be a table, not {toml_type(value)}")
        return value

    def known(self, table: Mapping[str, object], allowed: tuple[str, ...], key: str, what: str = "key") -> None:
        for name in table:
            if name not in allowed:
                child = f"{key}.{_quote(name)}" if key else f"[{_quote(name)}]"
                raise self.err(child, f"unknown {what} (expected one of {', '.join(allowed)})")

    def string_list(self, table: Mapping[str, object], name: str, key: str) -> list[str] | None:
        """An array of non-empty strings, or None when the key is absent."""
        if name not in table:
            return None
        try:
            return kinds.strings(table[name])
        except kinds.Invalid as exc:
            raise self.err(f"{key}.{name}{exc.at}", exc.reason) from None

    def resolve(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def read(self) -> dict[str, Any]:
        try:
            if self.path.is_dir():
                raise IsADirectoryError(self.path)
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise self.err("", "no such file") from None
        except IsADirectoryError:
            raise self.err("", "is a folder, expected the configuration file") from None
        except PermissionError:
            raise self.err("", "permission denied") from None
        except OSError as exc:
            raise self.err("", f"cannot read: {exc.strerror or exc}") from None
        _check_not_world_writable(self.path, self.name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.err("", f"not UTF-8 text (byte {exc.start})") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise self.err("", f"not valid TOML: {exc}") from None

    def value(self, kind: kinds.Kind, value: object, key: str) -> Any:
        """``value`` read as ``kind``; a refusal names ``key`` (and the item of an array)."""
        try:
            return kind.read(value, self)
        except kinds.Invalid as exc:
            raise self.err(key + exc.at, exc.reason) from None

    def typed(self, table: Mapping[str, object], name: str, key: str, kind: type[_T], default: _T) -> _T:
        if name not in table:
            return default
        try:
            checked: _T = kinds.typed(table[name], kind)
        except kinds.Invalid as exc:
            raise self.err(f"{key}.{name}", exc.reason) from None
        return checked

    def section(self, data: Mapping[str, object], name: str, model: type[_T]) -> _T:
        """A flat section, read key by key from its declaration (absent keys take their defaults)."""
        key = f"[{name}]"
        table = self.table(data.get(name, {}), key)
        declared: tuple[Field[Any], ...] = settings_of(model)
        self.known(table, tuple(f.name for f in declared), key)
        values = {}
        for setting in declared:
            kind: kinds.Kind = setting.metadata["kind"]
            if setting.name in table:
                values[setting.name] = self.value(kind, table[setting.name], f"{key}.{setting.name}")
            else:
                values[setting.name] = kind.absent(setting.default, self)
        loaded = model(**values)
        for name_, reason in getattr(loaded, "problems", list)():
            raise self.err(f"{key}.{name_}", reason)
        return loaded

    def certificate_files(self, paths: list[str], key: str) -> tuple[x509.Certificate, ...]:
        certs: list[x509.Certificate] = []
        for index, value in enumerate(paths):
            where = self.where(f"{key}[{index}]")
            path = self.resolve(value)
            _check_not_world_writable(path, where)
            certs.extend(load_certificates(path, where=where))
        return tuple(_dedupe(certs))

    def folder_bundle_urls(self, paths: list[str], key: str) -> list[str]:
        """Trust bundle URLs kept in anchor folders as ``*.url`` files (``directmilter bundles add`` writes them)."""
        urls: list[str] = []
        for index, value in enumerate(paths):
            folder = self.resolve(value)
            if not folder.is_dir():
                continue
            for entry in sorted(folder.glob(f"*{BUNDLE_URL_SUFFIX}")):
                url = entry.read_text(errors="replace").strip()
                problem = url_problem(url)
                if problem is not None:
                    raise self.err(f"{key}[{index}]", f"{entry}: {problem}: {url[:80]!r}")
                urls.append(url)
        return urls

    def party(self, name: str, value: object, key: str) -> Party:
        table = self.table(value, key)
        self.known(table, PARTY_KEYS, key)
        identities: tuple[PrivateIdentity, ...] = ()
        if "keys" in table:
            keys = table["keys"]
            if not isinstance(keys, list):
                raise self.err(f"{key}.keys", f"must be an array of tables, not {toml_type(keys)}")
            identities = tuple(load_identities(keys, self.where(f"{key}.keys"), base=self.base))
        anchors: dict[str, tuple[x509.Certificate, ...] | None] = {}
        bundles: dict[str, tuple[str, ...]] = {}
        for name_ in ("anchors", "incoming_anchors", "outgoing_anchors"):
            entries = self.string_list(table, name_, key)
            files = None if entries is None else [e for e in entries if not is_bundle_url(e)]
            anchors[name_] = None if files is None else self.certificate_files(files, f"{key}.{name_}")
            urls = [e.strip() for e in entries or () if is_bundle_url(e)]
            for url in urls:
                if (problem := url_problem(url)) is not None:
                    raise self.err(f"{key}.{name_}", f"{problem}: {url[:80]!r}")
            urls += self.folder_bundle_urls(files or [], f"{key}.{name_}")
            bundles[name_] = tuple(dict.fromkeys(urls))
        both = anchors["anchors"]
        incoming, outgoing = anchors["incoming_anchors"], anchors["outgoing_anchors"]
        return Party(
            name=name,
            identities=identities,
            anchors_in=incoming if incoming is not None else both,
            anchors_out=outgoing if outgoing is not None else both,
            bundles_in=bundles["incoming_anchors"] if incoming is not None else bundles["anchors"],
            bundles_out=bundles["outgoing_anchors"] if outgoing is not None else bundles["anchors"],
            revocation=self.value(_REVOCATION, table["revocation"], f"{key}.revocation") if "revocation" in table
            else None,
            routing_check=self.typed(table, "routing_check", key, bool, True) if "routing_check" in table else None,
            policy=self.policy_tables(table.get("policy", {}), f"{key}.policy"),
        )

    def domains(self, data: Mapping[str, object]) -> dict[str, Party]:
        section = self.table(data.get("domains", {}), "[domains]")
        domains: dict[str, Party] = {}
        for raw_name, value in section.items():
            key = f"[domains.{_quote(raw_name)}]"
            name = raw_name.strip().lower()
            if not _DOMAIN.match(name):
                raise self.err(
                    key,
                    "not a fully qualified domain name (letters, digits and hyphens, at least two labels, "
                    "Applicability Statement 1.1)",
                )
            if name in domains:
                raise self.err(key, f"the domain {name} is already configured (names are case-insensitive)")
            domains[name] = self.party(name, value, key)
        return domains

    def addresses(self, data: Mapping[str, object], domains: Mapping[str, Party]) -> dict[str, Party]:
        section = self.table(data.get("addresses", {}), "[addresses]")
        addresses: dict[str, Party] = {}
        for raw_name, value in section.items():
            key = f"[addresses.{_quote(raw_name)}]"
            name = normalize_address(raw_name)
            local, at, domain = name.rpartition("@")
            if not at or not _DOT_ATOM.match(local):
                raise self.err(key, "not an e-mail address (local-part@domain, the local part a dot-atom: "
                                    "RFC 5322 3.2.3 characters, no leading, trailing or doubled dots)")
            if domain not in domains:
                raise self.err(
                    key, f"the domain {domain} is not a hosted domain (add a [domains.{_quote(domain)}] table)"
                )
            if name in addresses:
                raise self.err(key, f"the address {name} is already configured (addresses are case-insensitive)")
            addresses[name] = self.party(name, value, key)
        return addresses

    def actions(self, data: Mapping[str, object]) -> Actions:
        key = "[actions]"
        table = self.table(data.get("actions", {}), key)
        names = tuple(f"on_{condition}" for condition in ACTION_DEFAULTS)
        self.known(table, names, key)
        chosen: dict[str, str] = {}
        for name in names:
            if name in table:
                action = self.typed(table, name, key, str, "")
                problem = check_action(name.removeprefix("on_"), action)
                if problem is not None:
                    raise self.err(f"{key}.{name}", problem)
                chosen[name.removeprefix("on_")] = action
        return Actions(chosen)

    def policy_tables(self, value: object, key: str) -> dict[str, Mapping[str, Any]]:
        """A ``policy`` table: per direction, settings checked by applying them to the default policy."""
        table = self.table(value, key)
        self.known(table, POLICY_DIRECTIONS, key, "direction")
        found: dict[str, Mapping[str, Any]] = {}
        for direction, settings in table.items():
            child = f"{key}.{direction}"
            try:
                CertificatePolicy().overridden(self.table(settings, child))
            except ValueError as exc:
                raise self.err(child, str(exc)) from None
            found[direction] = settings
        return found

    def policies(self, data: Mapping[str, object]) -> dict[str, CertificatePolicy]:
        tables = self.policy_tables(data.get("policy", {}), "[policy]")
        return {direction: CertificatePolicy().overridden(tables.get(direction, {})) for direction in POLICY_DIRECTIONS}

    def certificates(self, data: Mapping[str, object]) -> tuple[x509.Certificate, ...]:
        key = "[certificates]"
        table = self.table(data.get("certificates", {}), key)
        self.known(table, CERTIFICATES_KEYS, key)
        paths = self.string_list(table, "files", key)
        return () if paths is None else self.certificate_files(paths, f"{key}.files")

    def load(self) -> Config:
        data = self.read()
        self.known(data, SECTIONS, "", what="section")
        flat = {attribute: self.section(data, name, model) for name, (attribute, model) in FLAT_SECTIONS.items()}
        domains = self.domains(data)
        addresses = self.addresses(data, domains)
        milter = flat["milter"]
        return Config(
            path=self.path,
            domains=MappingProxyType(domains),
            addresses=MappingProxyType(addresses),
            certificates=self.certificates(data),
            actions=self.actions(data),
            policies=MappingProxyType(self.policies(data)),
            postfix=None if milter.postfix_config is None else read_settings(milter.postfix_config),
            **flat,
        )


def _check_not_world_writable(path: Path, where: str) -> None:
    """Refuse configuration, anchor and certificate files (or folders) anyone may change: they decide trust."""
    targets = [path]
    try:
        if path.is_dir():
            targets += [p for p in path.iterdir() if not p.name.startswith(".")]
        for target in targets:
            mode = target.stat().st_mode
            sticky_dir = stat.S_ISDIR(mode) and mode & stat.S_ISVTX
            if mode & stat.S_IWOTH and not sticky_dir:
                raise ConfigError(
                    f"{where}: {target}: is writable by everyone (mode {stat.S_IMODE(mode):04o}); anyone could "
                    f"change what this agent trusts (chmod o-w {target})"
                )
    except OSError:
        return  # missing or unreadable: reported with a better message by the loader


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, check and load the configuration file and every file it names; ConfigError on any problem."""
    return _Loader(Path(path)).load()
