"""The configuration layer: loading, every refusal (naming file and key), inheritance, lookups, describe()."""

from __future__ import annotations

import datetime
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import pkcs7
from pki import PKI, Issued

from directmilter.config import (
    CIPHERS_ACCEPT,
    CIPHERS_SEND,
    DIGESTS_ACCEPT,
    DIGESTS_SEND,
    Config,
    CryptoPolicy,
    describe,
    load_config,
)
from directmilter.errors import ConfigError
from directmilter.keys.load import load_certificates, load_identities

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors"
A = "direct.a.test"
ALICE = "alice@direct.a.test"


@dataclass
class Certs:
    pki: PKI
    root: Issued
    inter: Issued
    other_root: Issued
    org: Issued  # direct.a.test, under inter (PEM chain file org-chain.pem carries inter)
    alice: Issued  # EC key, under root
    al2: Issued
    bob: Issued  # remote, under root
    expired: Issued
    org_chain: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = PKI(tmp_path_factory.mktemp("config-pki"))
    root = pki.root("R1")
    inter = pki.intermediate("I1", root)
    org = pki.leaf("org", inter, dns=A)
    now = datetime.datetime.now(datetime.UTC)
    return Certs(
        pki=pki,
        root=root,
        inter=inter,
        other_root=pki.root("R2", key="ec256"),
        org=org,
        alice=pki.leaf("alice", root, email=ALICE, key="ec256", key_usage={"digitalSignature", "keyAgreement"}),
        al2=pki.leaf("al2", root, email="al2@direct.a.test", key="ec256"),
        bob=pki.leaf("bob", root, email="bob@direct.b.test", key="ec256"),
        expired=pki.leaf("expired", root, email=ALICE, key="ec256", not_before=now - datetime.timedelta(days=30),
                         not_after=now - datetime.timedelta(days=1)),
        org_chain=pki.bundle("org-chain.pem", org, inter),
    )


def pair(issued: Issued, cert: Path | None = None) -> str:
    return f'{{ cert = "{cert or issued.cert_path}", key = "{issued.key_path}" }}'


def write(tmp_path: Path, text: str, name: str = "directmilter.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good_text(c: Certs, tmp_path: Path) -> str:
    anchors = tmp_path / "anchors"
    anchors.mkdir(exist_ok=True)
    shutil.copy(c.root.cert_path, anchors / "root.pem")
    (anchors / ".hidden").write_text("not a certificate, skipped")
    return f"""
[agent]
digest = "sha384"
cipher = "aes128-cbc"
key_transport = "rsa-oaep"
recipient_id = "subject-key-identifier"
accept_digests = ["sha256", "sha512"]
accept_ciphers = ["aes256-cbc", "aes128-cbc"]
certificate_sha1 = false

[domains."{A}"]
keys = [{pair(c.org, c.org_chain)}]
anchors = ["anchors/"]

[addresses."{ALICE}"]
keys = [{pair(c.alice)}]

[certificates]
files = ["{c.bob.cert_path}"]
"""


def raises(path: Path, *fragments: str) -> str:
    """Load ``path`` expecting a ConfigError that names the file first and contains every fragment."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --- loading a good configuration ----------------------------------------------------------------------------


def test_good_config_loads(certs: Certs, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_text(certs, tmp_path)))
    assert config.crypto == CryptoPolicy(
        digest="sha384",
        cipher="aes128-cbc",
        key_transport="rsa-oaep",
        recipient_id="subject-key-identifier",
        accept_digests=frozenset({"sha256", "sha512"}),
        accept_ciphers=frozenset({"aes128-cbc", "aes256-cbc"}),
        certificate_sha1=False,
    )
    assert list(config.domains) == [A] and list(config.addresses) == [ALICE]
    (org,) = config.identities_for(f"someone@{A}")
    assert org.certificate == certs.org.cert and org.chain == (certs.inter.cert,)
    assert org.source == str(certs.org_chain)
    (alice,) = config.identities_for(ALICE)
    assert alice.certificate == certs.alice.cert
    assert config.anchors_for(ALICE, "incoming") == (certs.root.cert,)
    assert config.anchors_for(ALICE, "outgoing") == (certs.root.cert,)
    assert config.certificates == (certs.bob.cert,)
    with pytest.raises(TypeError):
        config.domains["x.test"] = config.domains[A]  # type: ignore[index]


@pytest.mark.parametrize("where", ["certificates", "anchor", "key"])
def test_a_certificate_whose_extensions_cannot_be_read_is_refused_where_it_is_named(certs: Certs, tmp_path: Path,
                                                                                     where: str) -> None:
    """A repeated extension (cryptography's DuplicateExtension, no ValueError) in an out-of-band certificate, an
    anchor or a key's certificate: the configuration does not load, and the error names the key, the file and the
    certificate, rather than the certificate failing later wherever it is used (or, in [certificates], hiding the
    good ones beside it)."""
    text = good_text(certs, tmp_path)
    if where == "certificates":
        bad = certs.pki.with_duplicated_extension("bob-twice", certs.bob)
        text = text.replace(f'files = ["{certs.bob.cert_path}"]', f'files = ["{bad.cert_path}"]')
        key = "[certificates].files[0]"
    elif where == "anchor":
        bad = certs.pki.with_duplicated_extension("root-twice", certs.root, oid="2.5.29.19")  # basicConstraints
        shutil.copy(bad.cert_path, tmp_path / "anchors" / "root.pem")
        key = f'[domains."{A}"].anchors[0]'
    else:
        bad = certs.pki.with_duplicated_extension("alice-twice", certs.alice)
        text = text.replace(f'cert = "{certs.alice.cert_path}"', f'cert = "{bad.cert_path}"')
        key = f'[addresses."{ALICE}"].keys[0].cert'
    raises(write(tmp_path, text), key, "certificate 1 (subject CN=", "its extensions cannot be read",
           "Duplicate", "extension found")


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.crypto == CryptoPolicy()
    assert config.crypto.digest == "sha256" and config.crypto.cipher == "aes256-cbc"
    assert config.crypto.accept_digests == frozenset(DIGESTS_ACCEPT)
    assert config.crypto.accept_ciphers == frozenset(CIPHERS_ACCEPT)
    assert config.crypto.certificate_sha1 is True
    assert not config.domains and not config.addresses and config.certificates == ()
    assert not config.is_hosted(ALICE) and config.identities_for(ALICE) == ()
    assert config.anchors_for(ALICE, "incoming") == ()


def test_algorithm_constants() -> None:
    assert "sha1" not in DIGESTS_SEND and "sha1" in DIGESTS_ACCEPT
    assert set(DIGESTS_SEND) <= set(DIGESTS_ACCEPT) and set(CIPHERS_SEND) <= set(CIPHERS_ACCEPT)
    assert not any("md5" in d for d in DIGESTS_ACCEPT) and not any("des" in c for c in CIPHERS_ACCEPT)


def test_relative_paths_are_relative_to_the_config_folder(certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    keys = tmp_path / "etc" / "keys"
    keys.mkdir(parents=True)
    shutil.copy(certs.alice.cert_path, keys / "alice.pem")
    shutil.copy(certs.alice.key_path, keys / "alice.key")
    (keys / "alice.key").chmod(0o600)
    path = write(tmp_path / "etc", f'[domains."{A}"]\nkeys = [{{ cert = "keys/alice.pem", key = "keys/alice.key" }}]\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/directmilter.conf"))
    assert config.identities_for(ALICE)[0].certificate == certs.alice.cert
    assert config.identities_for(ALICE)[0].source == str(path.parent / "keys" / "alice.pem")


def test_case_insensitive(certs: Certs, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"""
[domains."Direct.A.Test"]
keys = [{pair(certs.org)}]
anchors = ["{certs.root.cert_path}"]
[addresses."Alice@DIRECT.a.test"]
keys = [{pair(certs.alice)}]
anchors = ["{certs.other_root.cert_path}"]
"""))
    assert list(config.domains) == [A] and list(config.addresses) == [ALICE]
    for spelling in (ALICE, "ALICE@Direct.A.TEST", "<Alice@direct.a.test>"):
        assert config.is_hosted(spelling)
        assert config.identities_for(spelling)[0].certificate == certs.alice.cert
        assert config.anchors_for(spelling, "incoming") == (certs.other_root.cert,)
    assert config.domain_of("Bob@DIRECT.A.TEST") is config.domains[A]


def test_duplicate_names_after_lower_casing(certs: Certs, tmp_path: Path) -> None:
    path = write(tmp_path, f'[domains."{A}"]\n[domains."DIRECT.A.TEST"]\n')
    raises(path, '[domains."DIRECT.A.TEST"]', "already configured")
    path = write(tmp_path, f'[domains."{A}"]\n[addresses."{ALICE}"]\n[addresses."ALICE@{A}"]\n')
    raises(path, f'[addresses."ALICE@{A}"]', "already configured")


# --- inheritance and lookups ---------------------------------------------------------------------------------


@pytest.mark.conformance("AS-4.2.1-1", "AS-4.2.3-1")
def test_anchor_inheritance(certs: Certs, tmp_path: Path) -> None:
    r1, r2, inter = (str(x.cert_path) for x in (certs.root, certs.other_root, certs.inter))
    config = load_config(write(tmp_path, f"""
[domains."{A}"]
anchors = ["{r1}"]
incoming_anchors = ["{inter}"]

[domains."direct.c.test"]
incoming_anchors = ["{r2}"]

[addresses."al2@{A}"]
anchors = ["{r2}"]

[addresses."al3@{A}"]
outgoing_anchors = ["{r2}", "{inter}"]

[addresses."al4@{A}"]
anchors = []
"""))
    # the domain: incoming_anchors overrides anchors for incoming only
    assert config.anchors_for(f"x@{A}", "incoming") == (certs.inter.cert,)
    assert config.anchors_for(f"x@{A}", "outgoing") == (certs.root.cert,)
    # an address's anchors replace both of the domain's directions
    assert config.anchors_for(f"al2@{A}", "incoming") == (certs.other_root.cert,)
    assert config.anchors_for(f"al2@{A}", "outgoing") == (certs.other_root.cert,)
    # an address's outgoing_anchors replace only that direction; incoming is inherited
    assert config.anchors_for(f"al3@{A}", "outgoing") == (certs.other_root.cert, certs.inter.cert)
    assert config.anchors_for(f"al3@{A}", "incoming") == (certs.inter.cert,)
    # an explicit empty list is an override: trust nobody
    assert config.anchors_for(f"al4@{A}", "incoming") == ()
    assert config.addresses[f"al4@{A}"].anchors_in == ()
    # a direction nobody set is empty; the unset one is None in the model
    assert config.anchors_for("x@direct.c.test", "outgoing") == ()
    assert config.domains["direct.c.test"].anchors_out is None
    assert config.anchors_for("x@not-hosted.test", "incoming") == ()
    with pytest.raises(ValueError):
        config.anchors_for(ALICE, "sideways")  # type: ignore[arg-type]


def test_identities_fallback_address_to_domain(certs: Certs, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"""
[domains."{A}"]
keys = [{pair(certs.org)}]
[domains."direct.c.test"]
[addresses."{ALICE}"]
keys = [{pair(certs.alice)}, {pair(certs.al2)}]
[addresses."al2@{A}"]
anchors = ["{certs.root.cert_path}"]
"""))
    assert [i.certificate for i in config.identities_for(ALICE)] == [certs.alice.cert, certs.al2.cert]
    assert [i.certificate for i in config.identities_for(f"al2@{A}")] == [certs.org.cert]  # no own keys
    assert [i.certificate for i in config.identities_for(f"nobody@{A}")] == [certs.org.cert]
    assert config.identities_for("x@direct.c.test") == ()  # hosted, no keys anywhere
    assert config.is_hosted("x@direct.c.test")
    assert config.identities_for("bob@direct.b.test") == () and not config.is_hosted("bob@direct.b.test")
    assert config.domain_of("bob@direct.b.test") is None


# --- key formats ---------------------------------------------------------------------------------------------


def private_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def one_identity(tmp_path: Path, entry: str) -> Config:
    return load_config(write(tmp_path, f'[domains."{A}"]\nkeys = [{entry}]\n'))


@pytest.mark.parametrize("password", [None, b"s3cret pass"])
def test_pkcs12_with_and_without_password(certs: Certs, tmp_path: Path, password: bytes | None) -> None:
    p12 = certs.pki.pkcs12(certs.org, password, f"org-{bool(password)}.p12", chain=[certs.inter, certs.root])
    entry = f'{{ pkcs12 = "{p12}" }}'
    if password:
        private_file(tmp_path / "p12.pass", password + b"\n")
        entry = f'{{ pkcs12 = "{p12}", password_file = "p12.pass" }}'
    (identity,) = one_identity(tmp_path, entry).identities_for(ALICE)
    assert identity.certificate == certs.org.cert
    assert set(identity.chain) == {certs.inter.cert, certs.root.cert}
    assert identity.source == str(p12)


def test_pkcs12_wrong_or_missing_password(certs: Certs, tmp_path: Path) -> None:
    p12 = certs.pki.pkcs12(certs.org, b"right", "org-pw.p12")
    private_file(tmp_path / "bad.pass", b"wrong")
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{{ pkcs12 = "{p12}", password_file = "bad.pass" }}]\n')
    raises(path, f'[domains."{A}"].keys[0].pkcs12: {p12}', "password is wrong")
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{{ pkcs12 = "{p12}" }}]\n')
    raises(path, f'[domains."{A}"].keys[0].pkcs12', "set password_file")


def test_pkcs12_with_several_keys(tmp_path: Path) -> None:
    """The .NET RI's PFX holds two key pairs (biff and nancy); cryptography's loader alone returns one."""
    source = VECTORS / "nhin-d-dotnet/unittests/agent/Certificates/nhind/Private/nhind_umamalga1_vm1.pfx"
    if not source.is_file():
        pytest.skip(f"third-party Direct vectors not present at {VECTORS}")
    pfx = private_file(tmp_path / "vm1.pfx", source.read_bytes())
    private_file(tmp_path / "vm1.pass", b"passw0rd!\n")
    config = load_config(write(tmp_path, """
[domains."nhind.hsgincubator.com"]
keys = [{ pkcs12 = "vm1.pfx", password_file = "vm1.pass" }]
"""))
    identities = config.identities_for("biff@nhind.hsgincubator.com")
    emails = sorted(i.certificate.subject.rfc4514_string().split(",")[0] for i in identities)
    assert emails == ["1.2.840.113549.1.9.1=biff@nhind.hsgincubator.com",
                      "1.2.840.113549.1.9.1=nancy@nhind.hsgincubator.com"]
    for identity in identities:
        assert identity.certificate not in identity.chain and identity.source == str(pfx)


def test_der_pkcs8_key_and_der_certificate(certs: Certs, tmp_path: Path) -> None:
    der_key = private_file(tmp_path / "org.key.der", certs.org.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    der_cert = tmp_path / "org.der"
    der_cert.write_bytes(certs.org.der())
    (identity,) = one_identity(tmp_path, f'{{ cert = "{der_cert}", key = "{der_key}" }}').identities_for(ALICE)
    assert identity.certificate == certs.org.cert and identity.chain == ()


def test_pkcs1_and_sec1_pem_keys(certs: Certs, tmp_path: Path) -> None:
    rsa_key = private_file(tmp_path / "org-pkcs1.key", certs.org.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    ec_key = private_file(tmp_path / "alice-sec1.key", certs.alice.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    config = one_identity(tmp_path, f'{{ cert = "{certs.org.cert_path}", key = "{rsa_key}" }}, '
                                    f'{{ cert = "{certs.alice.cert_path}", key = "{ec_key}" }}')
    assert [i.certificate for i in config.identities_for(ALICE)] == [certs.org.cert, certs.alice.cert]


def test_encrypted_pem_key(certs: Certs, tmp_path: Path) -> None:
    key = private_file(tmp_path / "enc.key", certs.org.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame")))
    private_file(tmp_path / "enc.pass", b"open sesame\r\n")
    config = one_identity(tmp_path, f'{{ cert = "{certs.org.cert_path}", key = "{key}", password_file = "enc.pass" }}')
    assert config.identities_for(ALICE)[0].certificate == certs.org.cert
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{certs.org.cert_path}", key = "{key}" }}]\n')
    raises(path, f'[domains."{A}"].keys[0].key: {key}', "encrypted; set password_file")
    private_file(tmp_path / "enc.pass", b"wrong")
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{certs.org.cert_path}", key = "{key}", '
                           'password_file = "enc.pass" }]\n')
    raises(path, f'[domains."{A}"].keys[0].key: {key}', "password is wrong")


def test_combined_pem_file_holding_the_key(certs: Certs, tmp_path: Path) -> None:
    both = private_file(tmp_path / "both.pem", certs.org.pem() + certs.org.key_path.read_bytes() + certs.inter.pem())
    (identity,) = one_identity(tmp_path, f'{{ cert = "{both}", key = "{both}" }}').identities_for(ALICE)
    assert identity.certificate == certs.org.cert and identity.chain == (certs.inter.cert,)
    both.chmod(0o644)  # a certificate file carrying a private key is held to the key rules too
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{both}", key = "{both}" }}]\n'),
           f'[domains."{A}"].keys[0].cert: {both}', "0600")


# --- refusals: each names the file and the key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[bogus]\n", ("[bogus]", "unknown section")),
        ('digest = "sha256"\n', ("[digest]", "unknown section")),
        ('[agent]\ndigets = "sha256"\n', ("[agent].digets", "unknown key")),
        (f'[domains."{A}"]\nanchor = []\n', (f'[domains."{A}"].anchor', "unknown key", "anchors")),
        (f'[domains."{A}"]\n[addresses."{ALICE}"]\nkey = []\n', (f'[addresses."{ALICE}"].key', "unknown key")),
        (f'[domains."{A}"]\nkeys = [{{ cert = "a", key = "b", chain = "c" }}]\n',
         (f'[domains."{A}"].keys[0].chain', "unknown key")),
        ('[certificates]\nfile = ["x"]\n', ("[certificates].file", "unknown key")),
    ],
    ids=["section", "top-level-key", "agent", "domain", "address", "key-entry", "certificates"],
)
def test_unknown_keys(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    raises(write(tmp_path, text), *fragments)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[agent]\ndigest = 256\n", ("[agent].digest", "must be a string, not an integer")),
        ('[agent]\ncertificate_sha1 = "yes"\n', ("[agent].certificate_sha1", "must be a boolean, not a string")),
        ('[agent]\naccept_digests = "sha256"\n', ("[agent].accept_digests", "must be an array")),
        ("[agent]\naccept_ciphers = [128]\n", ("[agent].accept_ciphers[0]", "must be a string, not an integer")),
        ("[agent]\naccept_digests = []\n", ("[agent].accept_digests", "must not be empty")),
        ('agent = "x"\n', ("[agent]", "must be a table, not a string")),
        ("domains = 3\n", ("[domains]", "must be a table, not an integer")),
        (f'[domains]\n"{A}" = "x"\n', (f'[domains."{A}"]', "must be a table, not a string")),
        (f'[domains."{A}"]\nanchors = "anchors/"\n', (f'[domains."{A}"].anchors', "must be an array")),
        (f'[domains."{A}"]\nanchors = [""]\n', (f'[domains."{A}"].anchors[0]', "must not be empty")),
        (f'[domains."{A}"]\nkeys = {{ cert = "a", key = "b" }}\n', (f'[domains."{A}"].keys', "must be an array")),
        (f'[domains."{A}"]\nkeys = ["a.pem"]\n', (f'[domains."{A}"].keys[0]', "must be a table")),
        (f'[domains."{A}"]\nkeys = [{{ cert = 1, key = "b" }}]\n', (f'[domains."{A}"].keys[0].cert', "string")),
        (f'[domains."{A}"]\nkeys = [{{ cert = "a.pem" }}]\n', (f'[domains."{A}"].keys[0].key', "missing")),
        (f'[domains."{A}"]\nkeys = [{{ pkcs12 = "a", cert = "b", key = "c" }}]\n',
         (f'[domains."{A}"].keys[0]', "not both")),
        ("[certificates]\nfiles = 1\n", ("[certificates].files", "must be an array")),
        ('[domains."localhost"]\n', ('[domains.localhost]', "fully qualified")),
        ('[domains."bad_domain.test"]\n', ('[domains."bad_domain.test"]', "fully qualified")),
        (f'[domains."{A}"]\n[addresses."alice"]\n', ("[addresses.alice]", "not an e-mail address")),
        # issue 19: the local part names key files (keys import): no path in it
        (f'[domains."{A}"]\n[addresses."../../x@{A}"]\n', ('[addresses."../../x@', "dot-atom")),
        (f'[domains."{A}"]\n[addresses.".x@{A}"]\n', ('[addresses.".x@', "no leading, trailing or doubled")),
        (f'[domains."{A}"]\nanchors = ["https://b.test/x\\ny.p7b"]\n', (f'[domains."{A}"].anchors', "control")),
        (f'[domains."{A}"]\nanchors = ["https:///nohost.p7b"]\n', (f'[domains."{A}"].anchors', "names a host")),
    ],
)
def test_wrong_types_and_shapes(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    raises(write(tmp_path, text), *fragments)


@pytest.mark.conformance("AS-2.6-2", "AS-2.6-4", "AS-2.7-3")
@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('digest = "sha1"', ("[agent].digest", "'sha1' is refused", "SHA-1", "Applicability Statement 2.6")),
        ('digest = "SHA-1"', ("[agent].digest", "refused", "Applicability Statement 2.6")),
        ('digest = "md5"', ("[agent].digest", "'md5' is refused", "MD5", "Applicability Statement 2.6")),
        ('accept_digests = ["sha256", "md5"]', ("[agent].accept_digests[1]", "MD5", "Applicability Statement 2.6")),
        ('cipher = "3des"', ("[agent].cipher", "'3des' is refused", "3DES", "Applicability Statement 2.7")),
        ('cipher = "des-ede3-cbc"', ("[agent].cipher", "Applicability Statement 2.7")),
        ('cipher = "rc2-40"', ("[agent].cipher", "Applicability Statement 2.7")),
        ('accept_ciphers = ["aes128-cbc", "3des"]', ("[agent].accept_ciphers[1]", "Applicability Statement 2.7")),
        ('accept_ciphers = ["des"]', ("[agent].accept_ciphers[0]", "Applicability Statement 2.7")),
        ('cipher = "aes192-cbc"', ("[agent].cipher", "unknown algorithm", "aes256-cbc")),
        ('digest = "sha224"', ("[agent].digest", "unknown algorithm", "sha256, sha384, sha512")),
        ('key_transport = "rsa"', ("[agent].key_transport", "rsa-pkcs1v15, rsa-oaep")),
        ('recipient_id = "ski"', ("[agent].recipient_id", "issuer-serial, subject-key-identifier")),
    ],
)
def test_forbidden_and_unknown_algorithms(tmp_path: Path, line: str, fragments: tuple[str, ...]) -> None:
    raises(write(tmp_path, f"[agent]\n{line}\n"), *fragments)


def test_sha1_is_accepted_for_receiving_and_algorithms_are_case_insensitive(tmp_path: Path) -> None:
    crypto = load_config(write(tmp_path, '[agent]\ndigest = "SHA512"\naccept_digests = ["SHA1"]\n')).crypto
    assert crypto.digest == "sha512" and crypto.accept_digests == frozenset({"sha1"})


def test_address_in_a_domain_not_hosted(certs: Certs, tmp_path: Path) -> None:
    path = write(tmp_path, f'[domains."{A}"]\n[addresses."bob@direct.b.test"]\nkeys = [{pair(certs.bob)}]\n')
    raises(path, '[addresses."bob@direct.b.test"]', "direct.b.test is not a hosted domain")


@pytest.mark.parametrize("field", ["cert", "key"])
def test_missing_key_files(certs: Certs, tmp_path: Path, field: str) -> None:
    files = {"cert": str(certs.org.cert_path), "key": str(certs.org.key_path), field: str(tmp_path / "nope")}
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{files["cert"]}", key = "{files["key"]}" }}]\n')
    raises(path, f'[domains."{A}"].keys[0].{field}: {tmp_path / "nope"}: no such file')


def test_missing_pkcs12_and_password_files(certs: Certs, tmp_path: Path) -> None:
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ pkcs12 = "x.p12" }}]\n'),
           f'[domains."{A}"].keys[0].pkcs12: {tmp_path / "x.p12"}: no such file')
    p12 = certs.pki.pkcs12(certs.org, b"pw", "org-missing-pass.p12")
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ pkcs12 = "{p12}", password_file = "x.pass" }}]\n'),
           f'[domains."{A}"].keys[0].password_file: {tmp_path / "x.pass"}: no such file')


def test_missing_anchor_and_certificate_files(tmp_path: Path) -> None:
    raises(write(tmp_path, f'[domains."{A}"]\nincoming_anchors = ["in/"]\n'),
           f'[domains."{A}"].incoming_anchors[0]: {tmp_path / "in"}: no such file')
    raises(write(tmp_path, f'[domains."{A}"]\n[addresses."{ALICE}"]\noutgoing_anchors = ["/nonexistent/r.pem"]\n'),
           f'[addresses."{ALICE}"].outgoing_anchors[0]: /nonexistent/r.pem: no such file')
    raises(write(tmp_path, '[certificates]\nfiles = ["a.pem", "b.pem"]\n'),
           f'[certificates].files[0]: {tmp_path / "a.pem"}: no such file')


def test_missing_unreadable_undecodable_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=f"^{missing}: no such file$"):
        load_config(missing)
    raises(write(tmp_path, "[agent\n"), "not valid TOML")
    path = tmp_path / "latin1.conf"
    path.write_bytes(b'[agent]\n# caf\xe9\n')
    raises(path, "not UTF-8")
    raises(tmp_path, "is a folder")
    if os.geteuid() != 0:  # root reads anything
        unreadable = write(tmp_path, "", "unreadable.conf")
        unreadable.chmod(0)
        raises(unreadable, "permission denied")


def test_bad_pem(certs: Certs, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
    raises(write(tmp_path, f'[domains."{A}"]\nanchors = ["{garbage}"]\n'),
           f'[domains."{A}"].anchors[0]: {garbage}:', "not valid base64")
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"\x30\x03\x02\x01\x01")
    raises(write(tmp_path, f'[certificates]\nfiles = ["{junk}"]\n'),
           f"[certificates].files[0]: {junk}: not a certificate")
    text = tmp_path / "README"
    text.write_text("hello\n")
    raises(write(tmp_path, f'[certificates]\nfiles = ["{text}"]\n'), f"{text}: not a certificate")
    bad_key = private_file(tmp_path / "bad.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{certs.org.cert_path}", key = "{bad_key}" }}]\n'),
           f'[domains."{A}"].keys[0].key: {bad_key}: not a readable private key')
    key_only = private_file(tmp_path / "key-as-cert.pem", certs.org.key_path.read_bytes())
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{key_only}", key = "{certs.org.key_path}" }}]\n'),
           f'[domains."{A}"].keys[0].cert: {key_only}: no CERTIFICATE')


@pytest.mark.conformance("AS-1.4-8")
def test_key_does_not_match_certificate(certs: Certs, tmp_path: Path) -> None:
    path = write(tmp_path, f'[domains."{A}"]\nkeys = [{pair(certs.org)}, '
                           f'{{ cert = "{certs.org.cert_path}", key = "{certs.bob.key_path}" }}]\n')
    message = raises(path, f'[domains."{A}"].keys[1]', str(certs.org.cert_path), str(certs.bob.key_path),
                     "does not match")
    assert "PRIVATE" not in message


@pytest.mark.conformance("AS-6.1-1")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_private_files_must_be_0600(certs: Certs, tmp_path: Path, mode: int) -> None:
    key = private_file(tmp_path / "org.key", certs.org.key_path.read_bytes())
    key.chmod(mode)
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{certs.org.cert_path}", key = "{key}" }}]\n'),
           f'[domains."{A}"].keys[0].key: {key}', "must be mode 0600 or stricter")
    key.chmod(0o400)
    assert one_identity(tmp_path, f'{{ cert = "{certs.org.cert_path}", key = "{key}" }}').domains[A].identities


def test_pkcs12_and_password_file_modes(certs: Certs, tmp_path: Path) -> None:
    p12 = certs.pki.pkcs12(certs.org, b"pw", "org-mode.p12")
    copy = private_file(tmp_path / "org.p12", p12.read_bytes())
    secret = private_file(tmp_path / "org.pass", b"pw")
    entry = '{ pkcs12 = "org.p12", password_file = "org.pass" }'
    secret.chmod(0o644)
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{entry}]\n'), '.keys[0].password_file', "0600")
    secret.chmod(0o600)
    copy.chmod(0o644)
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{entry}]\n'), '.keys[0].pkcs12', "0600")


def test_world_writable_trust_files_are_refused(certs: Certs, tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(certs.root.pem())
    anchor.chmod(0o666)
    raises(write(tmp_path, f'[domains."{A}"]\nanchors = ["{anchor}"]\n'), f'[domains."{A}"].anchors[0]',
           "writable by everyone")
    anchor.chmod(0o644)
    conf = write(tmp_path, f'[domains."{A}"]\nanchors = ["{anchor}"]\n')
    conf.chmod(0o666)
    raises(conf, "writable by everyone")


def test_only_rsa_and_ec_keys(certs: Certs, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = private_file(tmp_path / "ed.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    raises(write(tmp_path, f'[domains."{A}"]\nkeys = [{{ cert = "{certs.org.cert_path}", key = "{pem}" }}]\n'),
           f'[domains."{A}"].keys[0].key: {pem}', "only RSA and EC keys")


# --- certificate files ---------------------------------------------------------------------------------------


def test_load_certificates_formats(certs: Certs, tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    many = [certs.root.cert, certs.inter.cert]
    (folder / "a.pem").write_bytes(certs.root.pem() + certs.inter.pem())
    (folder / "b.der").write_bytes(certs.bob.der())
    (folder / "c.p7b").write_bytes(pkcs7.serialize_certificates(many, serialization.Encoding.DER))  # a SET: sorted
    (folder / "d.p7c").write_bytes(pkcs7.serialize_certificates([certs.alice.cert], serialization.Encoding.PEM))
    (folder / ".e.pem").write_bytes(certs.other_root.pem())  # dotfile: skipped
    (folder / "sub").mkdir()  # sub-folder: skipped
    (folder / "sub" / "f.pem").write_bytes(certs.other_root.pem())
    assert load_certificates(folder) == [certs.root.cert, certs.inter.cert, certs.bob.cert, certs.alice.cert]
    assert sorted(c.serial_number for c in load_certificates(folder / "c.p7b")) == sorted(c.serial_number for c in many)
    assert load_certificates(folder / "d.p7c") == [certs.alice.cert]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_certificates(empty) == []
    (folder / "broken").symlink_to(tmp_path / "gone.pem")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        load_certificates(folder, where="x.conf: [certificates].files[0]")


def test_load_identities_direct(certs: Certs, tmp_path: Path) -> None:
    where = f'x.conf: [domains."{A}"].keys'
    spec = [{"cert": "org-chain.pem", "key": "org.key"}]
    (identity,) = load_identities(spec, where, base=certs.pki.directory)
    assert identity.chain == (certs.inter.cert,)
    with pytest.raises(ConfigError, match=r'^x\.conf: \[domains\."direct\.a\.test"\]\.keys\[0\]\.cert: .*no such file'):
        load_identities([{"cert": "nope.pem", "key": "org.key"}], where, base=certs.pki.directory)


# --- describe and the sample ---------------------------------------------------------------------------------


def test_describe(certs: Certs, tmp_path: Path) -> None:
    p12 = certs.pki.pkcs12(certs.org, b"top-secret-pw", "org-describe.p12")
    private_file(tmp_path / "p.pass", b"top-secret-pw")
    config = load_config(write(tmp_path, f"""
[agent]
accept_ciphers = ["aes256-cbc"]
[domains."{A}"]
keys = [{{ pkcs12 = "{p12}", password_file = "p.pass" }}]
anchors = ["{certs.root.cert_path}"]
[domains."direct.c.test"]
[addresses."{ALICE}"]
keys = [{pair(certs.expired)}, {pair(certs.bob)}]
outgoing_anchors = ["{certs.root.cert_path}", "{certs.other_root.cert_path}"]
[certificates]
files = ["{certs.bob.cert_path}", "{certs.alice.cert_path}"]
"""))
    lines = describe(config)
    text = "\n".join(lines)
    assert f"domain {A}: 1 key(s), incoming anchors 1, outgoing anchors 1" in text
    assert f"address {ALICE}: 2 key(s), incoming anchors from the domain, outgoing anchors 2" in text
    assert f"serial {certs.org.cert.serial_number:#x}" in text and "notAfter" in text
    assert "out-of-band certificates: 2" in text
    warnings = [line for line in lines if line.startswith("warning:")]
    assert any("expired" in w and f"{certs.expired.cert.serial_number:#x}" in w for w in warnings)
    assert any(f"address {ALICE} key 2" in w and "subjectAltName rfc822Name" in w for w in warnings)
    assert any("direct.c.test has no key" in w for w in warnings)
    assert any("aes128-cbc" in w for w in warnings)
    assert "top-secret-pw" not in text and "PRIVATE" not in text and "BEGIN" not in text
    assert not [w for w in warnings if A in w and "expired" not in w and ALICE not in w]


def test_sample_configuration_loads(certs: Certs, tmp_path: Path) -> None:
    sample = (REPO / "etc" / "directmilter.conf").read_text()
    root = tmp_path / "etc-directmilter"
    text = sample.replace("/etc/directmilter/", f"{root}/")
    assert "/etc/directmilter/" not in text
    (root / "keys").mkdir(parents=True)
    (root / "anchors").mkdir()
    (root / "certs").mkdir()
    shutil.copy(certs.org_chain, root / "keys" / "direct.example.org.pem")
    private_file(root / "keys" / "direct.example.org.key", certs.org.key_path.read_bytes())
    private_file(root / "keys" / "org.p12", certs.pki.pkcs12(certs.al2, b"pw", "sample.p12").read_bytes())
    private_file(root / "keys" / "org.p12.pass", b"pw\n")
    shutil.copy(certs.alice.cert_path, root / "keys" / "alice.pem")
    private_file(root / "keys" / "alice.key", certs.alice.key_path.read_bytes())
    shutil.copy(certs.root.cert_path, root / "anchors" / "root.pem")
    shutil.copy(certs.bob.cert_path, root / "certs" / "bob.pem")
    config = load_config(write(root, text))
    assert config.crypto == CryptoPolicy()
    assert set(config.domains) == {"direct.example.org"}
    assert len(config.identities_for("x@direct.example.org")) == 2
    assert config.identities_for("alice@direct.example.org")[0].certificate == certs.alice.cert
    assert config.anchors_for("x@direct.example.org", "incoming") == (certs.root.cert,)
    assert config.certificates == (certs.bob.cert,)
    # every key the sample documents is a key the loader knows (the sample is the reference)
    assert describe(config)


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_certificate_objects_are_x509(certs: Certs, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_text(certs, tmp_path)))
    assert all(isinstance(c, x509.Certificate) for c in config.anchors_for(ALICE, "incoming"))


# --- the schema: one statement of every key --------------------------------------------------------------------


def _sample_keys() -> dict[str, set[str]]:
    """Section -> the keys the sample sets or shows commented out (``# key = ...``), for the flat sections."""
    found: dict[str, set[str]] = {}
    section = ""
    for line in (REPO / "etc" / "directmilter.conf").read_text().splitlines():
        header = re.fullmatch(r"\[([a-z]+)\]", line.strip())
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#? ?([a-z][a-z0-9_]*) = ", line)
        if key and section:
            found.setdefault(section, set()).add(key.group(1))
    return found


def test_every_key_is_declared_once_and_documented_in_the_sample_and_the_man_page() -> None:
    """The model is the one statement of the flat sections' keys: the sample shows exactly those keys in each
    section (set or commented out), and the man page names each of them."""
    from directmilter.config import keys

    declared = keys()
    man = (REPO / "packaging" / "man" / "directmilter.conf.5").read_text()
    sample = _sample_keys()
    for section, documented in declared.items():
        assert sample.get(section, set()) == set(documented), section
        assert all(doc.strip() for doc in documented.values()), section
        missing = [key for key in documented if f"\\fB{key}\\fR" not in man]
        assert not missing, (section, missing)


def test_check_config_shows_every_key_with_the_value_in_force(tmp_path: Path) -> None:
    from directmilter.config import keys

    lines = describe(load_config(write(tmp_path, '[milter]\ntimeout = 42\ninternal_hosts = ["10.1.0.0/16"]\n'
                                                 '[trust]\nrevocation = "hard-fail"\n')))
    shown = {line.split("] ", 1)[0][1:]: line for line in lines if line.startswith("[")}
    assert set(shown) == set(keys())
    for section, documented in keys().items():
        assert [part.split(" = ")[0] for part in shown[section].split("] ", 1)[1].split("; ")] == list(documented)
    assert "; timeout = 42;" in shown["milter"] and "internal_hosts = 10.1.0.0/16;" in shown["milter"]
    assert "revocation = hard-fail;" in shown["trust"] and "socket_mode = 0660;" in shown["milter"]


@pytest.mark.parametrize(("text", "fragments"), [
    ('[milter]\nsocket_mode = "0999"\n', ("[milter].socket_mode", "an octal mode")),
    ("[milter]\nworkers = 300\n", ("[milter].workers", "300: expected 0 (no worker processes) to 256")),
    ("[milter]\ninline_below = -1\n", ("[milter].inline_below", "-1: must be a number of bytes, 0 or more")),
    ("[milter]\ntimeout = 0\n", ("[milter].timeout", "must be a positive number of seconds")),
    ('[milter]\ninternal_hosts = ["10.1.0.0/16", "not-a-net"]\n', ("[milter].internal_hosts[1]",
                                                                    "'not-a-net' is not an IP address or network")),
    ('[trust]\nfetch_allow = ["300.1.1.1"]\n', ("[trust].fetch_allow[0]", "is not an IP address or network")),
    ('[milter]\ndelivery_transports = ["local", "smtp relay"]\n', ("[milter].delivery_transports[1]",
                                                                    "is not a Postfix transport name")),
    ('[milter]\nrecipient_delimiter = "a"\n', ("[milter].recipient_delimiter", "punctuation")),
    ('[milter]\nsocket = "/run/x.sock"\n', ("[milter].socket", "use unix:/path or inet:PORT@HOST")),
    ('[milter]\nother_mail = "bounce"\n', ("[milter].other_mail", "'bounce': expected one of accept, reject")),
    ('[milter]\nmetrics = "9464"\n', ("[milter].metrics", "expected HOST:PORT")),
    ('[discovery]\ndns_servers = ["ns.example"]\n', ("[discovery].dns_servers[0]", "an IP address, optionally")),
    ("[discovery]\ntimeout = true\n", ("[discovery].timeout", "must be a positive number, not True")),
    ("[limits]\nmax_headers = 0\n", ("[limits].max_headers", "must be a positive number, not 0")),
    ('[notify]\ntracking = "mysql://x"\n', ("[notify].tracking", "use sqlite:/path or postgresql://")),
    ("[notify]\ncommit_witness = true\n", ("[notify].commit_witness", "needs reinject")),
    ('[notify]\nreinject = "127.0.0.1:0"\n', ("[notify].reinject", "expected HOST:PORT of a milter-free")),
    ('[trust]\nrevocation = "maybe"\n', ("[trust].revocation", "expected one of soft-fail, hard-fail, require")),
    ('[milter]\npostfix_config = "nowhere"\n', ("[milter].postfix_config", "no main.cf there")),
    ("[trust]\nenforce_key_usage = 1\n", ("[trust].enforce_key_usage", "must be a boolean, not an integer")),
])
def test_each_kind_of_value_is_refused_with_the_key_and_the_reason(tmp_path: Path, text: str,
                                                                   fragments: tuple[str, ...]) -> None:
    raises(write(tmp_path, text), *fragments)


def test_values_are_read_as_declared(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[milter]
socket_mode = "0640"
workers = 0
recipient_delimiter = "+-"
postfix_config = "none"
metrics = "[::1]:9464"
[discovery]
dns_servers = ["127.0.0.1:5300", "[::1]:53", "10.0.0.1"]
http_max_bytes = 1000.7
[trust]
bundle_cache = "bundles"
[limits]
max_seconds = 30
"""))
    assert config.milter.socket_mode == 0o640 and config.milter.workers == 0
    assert config.milter.recipient_delimiter == "+-" and config.milter.postfix_config is None
    assert config.milter.metrics == ("::1", 9464)
    assert config.discovery.dns_servers == (("127.0.0.1", 5300), ("::1", 53), ("10.0.0.1", 53))
    assert config.discovery.http_max_bytes == 1000 and config.trust.bundle_cache == tmp_path / "bundles"
    assert config.limits.max_seconds == 30 and isinstance(config.limits.max_seconds, int)
    assert config.discovery.timeout == 5.0 and config.milter.workers == 0
