"""Keys: parsing them from settings, and deciding who may call what (auth.Keyring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepline_server.auth import (
    Key,
    KeyConfigError,
    KeyKind,
    Keyring,
    Need,
    bearer,
    load_keys_file,
    parse_keys,
)
from stepline_server.errors import PermissionDenied, Unauthenticated

EVENT = "evt-0123456789abcdef"
ADMIN = "adm-0123456789abcdef"
SIGNING = "signkey-prod-12345678"  # the example of Inngest's SDK spec
SIGNING_HASH = "b2ed992186a5cb19f6668aade821f502c1d00970dfd0e35128d51bac4649916c"
RING = Keyring([Key(KeyKind.EVENT, EVENT), Key(KeyKind.ADMIN, ADMIN),
                Key(KeyKind.SIGNING, SIGNING, frozenset({"team-a", "team-b"}))])


def test_without_keys_every_call_is_allowed() -> None:
    assert not Keyring().enabled
    assert Keyring().authorize("", Need.ADMIN) is None


@pytest.mark.parametrize(("presented", "need", "app"), [
    (EVENT, Need.SEND_EVENTS, None),
    (SIGNING, Need.SEND_EVENTS, None),
    (ADMIN, Need.SEND_EVENTS, None),
    (SIGNING, Need.APP, "team-a"),
    (SIGNING, Need.APP, "team-b"),
    (ADMIN, Need.APP, "anyone"),
    (ADMIN, Need.ADMIN, None),
    # The hashed forms the Inngest SDKs send as a bearer token (npm, then PyPI).
    (f"signkey-prod-{SIGNING_HASH}", Need.APP, "team-a"),
    (SIGNING_HASH, Need.APP, "team-a"),
])
def test_allowed(presented: str, need: Need, app: str | None) -> None:
    key = RING.authorize(presented, need, app)
    assert key is not None and RING.identify(presented) is key


@pytest.mark.parametrize(("presented", "need", "app", "error", "message"), [
    ("", Need.SEND_EVENTS, None, Unauthenticated, "none was sent"),
    ("not-a-key-of-ours-at-all", Need.SEND_EVENTS, None, Unauthenticated,
     "not one of this server's"),
    (EVENT, Need.APP, "team-a", PermissionDenied, "needs the app's signing key"),
    (EVENT, Need.ADMIN, None, PermissionDenied, "needs an admin key"),
    (SIGNING, Need.ADMIN, None, PermissionDenied, "needs an admin key"),
    (SIGNING, Need.APP, "team-c", PermissionDenied, "not bound to app 'team-c'"),
    (SIGNING_HASH.upper(), Need.APP, "team-a", Unauthenticated, "not one of this server's"),
])
def test_refused(presented: str, need: Need, app: str | None, error: type[Exception],
                 message: str) -> None:
    with pytest.raises(error, match=message) as refused:
        RING.authorize(presented, need, app)
    for secret in (EVENT, ADMIN, SIGNING):  # messages never reveal a key
        assert secret not in str(refused.value)


def test_bearer_tokens() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer   abc  ") == "abc"
    assert bearer("Basic abc") == ""
    assert bearer("") == ""


def test_keys_from_the_environment() -> None:
    (first, second) = parse_keys(KeyKind.ADMIN, f" {ADMIN} ,{ADMIN}-next,", "STEPLINE_ADMIN_KEYS")
    assert (first.secret, second.secret) == (ADMIN, f"{ADMIN}-next")
    signing = parse_keys(KeyKind.SIGNING, f"team-a,team-b={SIGNING}; ops=signkey-test-abcd"
                         "abcdabcdabcd", "STEPLINE_SIGNING_KEYS")
    assert [(k.apps, k.secret) for k in signing] == [
        (frozenset({"team-a", "team-b"}), SIGNING),
        (frozenset({"ops"}), "signkey-test-abcdabcdabcdabcd")]


@pytest.mark.parametrize(("kind", "text", "message"), [
    (KeyKind.SIGNING, "team-a=signkey-prod-xyz", "signkey-<env>-<hex>"),
    (KeyKind.SIGNING, "team-a=signkey-prod-123", "even number of hex digits"),
    (KeyKind.SIGNING, SIGNING, "bound to at least one app id"),
    (KeyKind.EVENT, "short", "at least 16 characters"),
])
def test_bad_keys_name_the_setting(kind: KeyKind, text: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as refused:
        parse_keys(kind, text, "STEPLINE_SOME_KEYS")
    assert "STEPLINE_SOME_KEYS" in str(refused.value)


def test_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'''
[[keys]]
kind = "signing"
key = "{SIGNING}"
apps = ["team-a"]
name = "team A, 2026"

[[keys]]
kind = "admin"
key = "{ADMIN}"
''')
    signing, admin = load_keys_file(str(path))
    assert (signing.kind, signing.apps, signing.label) == (
        KeyKind.SIGNING, frozenset({"team-a"}), "team A, 2026")
    assert admin.kind is KeyKind.ADMIN and admin.secret == ADMIN
    path.write_text('[[keys]]\nkind = "root"\nkey = "x"\n')
    with pytest.raises(KeyConfigError, match=r"keys\[0\].kind: expected one of event"):
        load_keys_file(str(path))
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_keys_file(str(tmp_path / "missing.toml"))
