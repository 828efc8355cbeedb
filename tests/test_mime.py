"""Strict base64 decoding of bodies that arrive in pieces (directmilter.cms.mime.decode_base64): the encrypted body
of a large message is decoded block by block as it is read from its spool file, so a 4-character group, a line
break or the padding may fall across any boundary between blocks."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directmilter.cms.mime import decode_base64, fold_base64
from directmilter.errors import MalformedMessage


def cut(text: bytes, points: list[int]) -> list[bytes]:
    """``text`` cut at ``points`` (any order, repeats give empty pieces)."""
    edges = [0, *sorted(p % (len(text) + 1) for p in points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


@given(data=st.binary(max_size=600), points=st.lists(st.integers(min_value=0), max_size=8),
       width=st.sampled_from([4, 64, 76]), views=st.booleans())
def test_any_cut_decodes_to_the_same_bytes(data: bytes, points: list[int], width: int, views: bool) -> None:
    text = fold_base64(data, width)
    pieces = cut(text, points)
    assert decode_base64([memoryview(p) for p in pieces] if views else pieces, what="body") == data


@pytest.mark.parametrize("text, why", [
    (b"QUJD\r\nRA", "truncated"),                            # 6 characters: a group of 2 left over
    (b"QUJDRA==QUJD", "data after the padding"),             # padding, then more groups
    (b"QUJD*EFC", "a character outside the alphabet"),
    (b"QU=DRA==", "padding inside a group"),
    (b"=QUJ", "padding first"),
])
@pytest.mark.parametrize("split", range(0, 13))
def test_bad_base64_is_refused_wherever_the_pieces_are_cut(text: bytes, why: str, split: int) -> None:
    with pytest.raises(MalformedMessage, match="body: body is not valid base64"):
        decode_base64([text[:split], text[split:]], what="body")


def test_padding_ends_the_body_even_when_more_comes_in_a_later_piece() -> None:
    with pytest.raises(MalformedMessage):
        decode_base64([b"QUJDRA==\r\n", b"\r\n", b"QUJD"], what="body")
    assert decode_base64([b"QUJDRA==\r\n", b"\r\n \t", b""], what="body") == b"ABCD"
    assert decode_base64([b"QUJDRA==\r\n"], what="body") == base64.b64decode(b"QUJDRA==")
