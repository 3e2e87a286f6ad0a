"""The bridge's one signature scheme (stepline._signing), both directions."""

from __future__ import annotations

import hashlib
import hmac

from stepline._signing import sign, verify

KEY = "signkey-test-" + "ab" * 16
BODY = b'{"event":{"name":"a/b"}}'


def test_signature_is_hmac_of_body_and_timestamp_keyed_by_the_key_without_prefix() -> None:
    header = sign(BODY, KEY, now=1_700_000_000)
    expected = hmac.new(("ab" * 16).encode(), BODY + b"1700000000", hashlib.sha256).hexdigest()
    assert header == f"t=1700000000&s={expected}"


def test_verify_accepts_any_of_several_keys_within_the_window() -> None:
    header = sign(BODY, KEY, now=1000)
    assert verify(BODY, header, ["signkey-test-00", KEY], now=1100) is None


def test_verify_names_each_reason_for_refusal() -> None:
    header = sign(BODY, KEY, now=1000)
    assert verify(BODY, None, [KEY], now=1000) == "the request is not signed"
    assert "does not match" in (verify(BODY + b" ", header, [KEY], now=1000) or "")
    assert "does not match" in (verify(BODY, header, ["signkey-test-cd"], now=1000) or "")
    assert "older than 300s" in (verify(BODY, header, [KEY], now=1000 + 301) or "")
    assert "timestamp" in (verify(BODY, "s=abc", [KEY], now=1000) or "")
