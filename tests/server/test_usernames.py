import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqcall.signaling.usernames import (
    CHARSET_MESSAGE,
    EDGE_MESSAGE,
    LENGTH_MESSAGE,
    InvalidUsername,
    is_valid,
    normalize,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("alice", "alice", id="plain"),
        pytest.param("Alice", "alice", id="case"),
        pytest.param("ALICE", "alice", id="upper"),
        pytest.param("\uff21\uff4c\uff49\uff43\uff45", "alice", id="fullwidth"),
        pytest.param("\u212aelvin", "kelvin", id="kelvin-sign"),
        pytest.param("bo\u017f", "bos", id="long-s-casefold"),
        pytest.param("Stra\u00dfe", "strasse", id="sharp-s-casefold"),
        pytest.param("a.b_c-d", "a.b_c-d", id="punctuation"),
        pytest.param("007", "007", id="digits"),
        pytest.param("abc", "abc", id="shortest"),
        pytest.param("a" * 32, "a" * 32, id="longest"),
        pytest.param("\u2460\u2461\u2462", "123", id="circled-digits"),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected
    assert is_valid(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("", LENGTH_MESSAGE, id="empty"),
        pytest.param("ab", LENGTH_MESSAGE, id="too-short"),
        pytest.param("a" * 33, LENGTH_MESSAGE, id="too-long"),
        pytest.param("a" * 1000, LENGTH_MESSAGE, id="huge"),
        pytest.param("\u0430lice", CHARSET_MESSAGE, id="cyrillic-a"),
        pytest.param("al ice", CHARSET_MESSAGE, id="space"),
        pytest.param("alice@home", CHARSET_MESSAGE, id="at-sign"),
        pytest.param("ali\u200bce", CHARSET_MESSAGE, id="zero-width-space"),
        pytest.param("caf\u00e9", CHARSET_MESSAGE, id="accent"),
        pytest.param("\u65e5\u672c\u8a9e", CHARSET_MESSAGE, id="cjk"),
        pytest.param(".alice", EDGE_MESSAGE, id="leading-dot"),
        pytest.param("alice-", EDGE_MESSAGE, id="trailing-dash"),
        pytest.param("_ab", EDGE_MESSAGE, id="leading-underscore"),
    ],
)
def test_invalid(raw, message):
    with pytest.raises(InvalidUsername) as exc:
        normalize(raw)
    assert str(exc.value) == message
    assert not is_valid(raw)


def test_messages():
    assert LENGTH_MESSAGE == "username must be 3 to 32 characters"
    assert CHARSET_MESSAGE == "username may contain only a-z, 0-9, '.', '_' and '-'"
    assert EDGE_MESSAGE == "username must start and end with a letter or digit"


def test_not_a_string():
    with pytest.raises(InvalidUsername, match="username must be a string"):
        normalize(b"alice")  # type: ignore[arg-type]


def test_invalid_username_is_a_value_error():
    assert issubclass(InvalidUsername, ValueError)


@given(st.text(max_size=40))
def test_normalize_is_idempotent_and_ascii(raw):
    try:
        name = normalize(raw)
    except InvalidUsername:
        return
    assert normalize(name) == name
    assert name.isascii()
    assert 3 <= len(name) <= 32
