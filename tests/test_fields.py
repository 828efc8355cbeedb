"""The one-pass readers of Content-Type and address fields (issue 19): they agree with the standard library on the
fields real mail has, and their cost follows the length of a hostile field where the standard library's grows
with its square (parameter splitting) or overflows the stack (nested comments)."""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value, getaddresses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directmilter.cms.fields import address_list, content_type


def stdlib_content_type(value: str) -> tuple[str, dict[str, str]]:
    parsed = Message()
    parsed["Content-Type"] = value
    params: dict[str, str] = {}
    for name, raw in parsed.get_params(failobj=[])[1:]:
        params.setdefault(name.lower(), str(collapse_rfc2231_value(raw)))
    return parsed.get_content_type(), params


CONTENT_TYPES = [
    'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="----=_Part_0_1.2"',
    "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
    'Application/X-PKCS7-MIME; Name="smime.p7m"; SMIME-Type=signed-data',
    "text/plain; charset=us-ascii",
    'text/plain; charset="utf-8"; format=flowed',
    "multipart/report; report-type=disposition-notification; boundary=abc",
    'application/pdf; name="discharge summary.pdf"',
    "message/rfc822",
    "text/plain",
    "application/octet-stream; name*=utf-8''r%C3%A9sum%C3%A9.pdf",
    "application/octet-stream; name*0=\"long\"; name*1=\"name.pdf\"",
    'text/plain; a="quoted \\" pair"',
]


@pytest.mark.parametrize("value", CONTENT_TYPES)
def test_content_type_reads_as_the_standard_library_does(value: str) -> None:
    kind, params = content_type(value)
    assert (kind, dict(params)) == stdlib_content_type(value)


def test_content_type_defaults_and_comments() -> None:
    assert content_type(None)[0] == "text/plain"
    assert content_type("nonsense")[0] == "text/plain"  # RFC 2045 5.2: unreadable means text/plain
    assert content_type("a/b/c")[0] == "text/plain"
    kind, params = content_type('text/html (a comment; with "quotes") ; charset=(x)utf-8')
    assert kind == "text/html" and params["charset"] == "utf-8"
    assert dict(content_type("text/plain; charset=a; CHARSET=b")[1]) == {"charset": "a"}  # the first one counts


_TOKENS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.+", min_size=1, max_size=12)
_QUOTABLE = st.text(alphabet="abc XYZ 019,;:=/()<>@[]?-_.\\\"", max_size=20)


@given(kind=_TOKENS, sub=_TOKENS, params=st.lists(st.tuples(_TOKENS, _QUOTABLE), max_size=5))
def test_generated_content_types_read_as_written(kind: str, sub: str, params: list[tuple[str, str]]) -> None:
    """Quoted values holding tspecials, quoted pairs and comment characters come back exactly; the first of a
    repeated name counts."""
    quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for _, v in params]
    value = f"{kind}/{sub}" + "".join(f"; {n}={q}" for (n, _), q in zip(params, quoted, strict=True))
    expected: dict[str, str] = {}
    for name, raw in params:
        expected.setdefault(name.lower(), raw)
    found_kind, found = content_type(value)
    assert (found_kind, dict(found)) == (f"{kind}/{sub}".lower(), expected)


ADDRESS_FIELDS = [
    "alice@direct.a.test",
    "Alice Smith <alice@direct.a.test>",
    '"Smith, Alice" <alice@direct.a.test>, bob@direct.b.test',
    "alice@direct.a.test (Alice)",
    "(comment) <alice@direct.a.test>",
    "care-team: alice@direct.a.test, bob@direct.b.test;",
    '"a b"@direct.a.test',
    "alice+tag@direct.a.test",
    "<alice@[127.0.0.1]>",
]


@pytest.mark.parametrize("value", ADDRESS_FIELDS)
def test_addresses_read_as_the_standard_library_does(value: str) -> None:
    assert address_list([value]) == [a for _, a in getaddresses([value])]


@pytest.mark.parametrize("value, expected", [
    ("undisclosed-recipients:;", []),
    ("<@relay.test:alice@direct.a.test>", ["alice@direct.a.test"]),
    ("Bob Smith bob@x.test", [""]),  # a display name without angle brackets: unreadable, never "Bob Smith bob@x"
    ("a@b@c", [""]),
    ("<one@x.test> <two@x.test>", [""]),  # two addresses in one mailbox: nobody can say which is meant
    ("Bob <bob@x.test> trailing words", ["bob@x.test"]),
    (", , bob@x.test,", ["bob@x.test"]),
])
def test_address_edge_cases(value: str, expected: list[str]) -> None:
    assert address_list([value]) == expected


@given(st.text())
def test_any_text_reads_to_addresses_without_an_error(value: str) -> None:
    """Found by fuzz/parsers.py: U+001D after a colon raised AssertionError (a 451 for a stranger's header; an
    endless loop under ``python -O``): ``\\s`` in the atom pattern covers characters the tokenizer did not skip.
    Any text, control and Unicode space characters included, gives a list of strings."""
    assert all(isinstance(a, str) for a in address_list([value]))
    assert address_list(["group:\x1dc@d.test;"]) == ["\x1dc@d.test"]


def test_a_backslash_at_the_end_of_a_quoted_string_ends_it() -> None:
    """Found by fuzz/parsers.py: a quoted string ending in a lone backslash (``To: "abc\\``) looped forever in
    the milter's thread. Read in a thread here, so a regression fails instead of hanging the suite."""
    import threading

    results: list[object] = []

    def read() -> None:
        results.append(address_list(['"abc\\']))
        results.append(content_type('text/plain; name="x\\'))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the reader did not finish"
    assert results[0] == ["abc"] and results[1] == ("text/plain", {"name": "x"})


@pytest.mark.parametrize("charset, expected", [
    ("windows-1252", "\u00e9t\u00e9"), ("utf-8", "\ufffdt\ufffd"), ("us-ascii", "\ufffdt\ufffd"),
    ("us-asc\x00ii", "\ufffdt\ufffd"), ("rot13", "\ufffdt\ufffd"), ("base64", "\ufffdt\ufffd"),
    ("punycode", "\ufffdt\ufffd"), ("x-unknown", "\ufffdt\ufffd"),
])
def test_parameter_charsets_are_decoded_only_by_linear_text_codecs(charset: str, expected: str) -> None:
    """Found by fuzz/parsers.py: a NUL in an RFC 2231 charset name raised ValueError (451). Python's codec
    registry would also run transforms (rot13, base64) and punycode, whose decoder is quadratic: those, and names
    it does not know, are read as US-ASCII."""
    assert content_type(f"text/plain; t*={charset}''%e9t%e9")[1]["t"] == expected


def test_nested_comments_are_counted_not_recursed() -> None:
    """A From field of 100,000 nested comments: the standard library raises RecursionError (which reached the
    milter as a 451); here it is a comment like any other."""
    hostile = "(" * 100_000 + "x" + ")" * 100_000 + " alice@direct.a.test"
    with pytest.raises(RecursionError):
        getaddresses([hostile])
    assert address_list([hostile]) == ["alice@direct.a.test"]
    assert address_list(["(" * 100_000 + "never closed alice@direct.a.test"]) == []
    assert content_type("text/plain; " + "(" * 100_000 + "; charset=utf-8")[0] == "text/plain"


def test_hostile_fields_of_half_a_megabyte_read_correctly() -> None:
    """The shapes that cost the standard library the square of their length (540 KB of escaped quotes took it 78 s
    of a crypto worker), read correctly; ``bench/parsers.py`` shows their cost grows linearly."""
    boundary = '\\"' * 270_000
    kind, params = content_type(f'multipart/signed; protocol="application/pkcs7-signature"; boundary="{boundary}"')
    assert kind == "multipart/signed" and params["boundary"] == '"' * 270_000
    assert params["protocol"] == "application/pkcs7-signature"
    assert len(content_type("text/plain" + '; a="b"' * 80_000)[1]) == 1
    assert content_type('multipart/signed; boundary="' + ";" * 540_000 + '"')[1]["boundary"] == ";" * 540_000
    assert address_list(["<a@b.test>," * 50_000]) == ["a@b.test"] * 50_000
