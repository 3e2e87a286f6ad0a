"""Keys: who may call what. The server is configured with keys of three kinds; every call names
what it needs, and `Keyring.authorize` decides, in this one place.

- An **event key** may only send events.
- An **app signing key** (`signkey-<env>-<hex>`, Inngest's form) is bound to one app id or a
  list of them: it registers that app's functions, connects its workers and sends events.
- An **admin key** may do everything: run operations, listings, the dashboard, and what the
  other kinds may.

Several keys of each kind may be valid at once, so a key can be rotated without downtime. Keys
are stored raw (the HTTP bridge signs requests with HMAC, which needs the raw key). A signing
key is also accepted in the hashed forms the Inngest SDKs send as a bearer token: the SHA-256 of
its hex part, with or without the `signkey-<env>-` prefix.
"""

from __future__ import annotations

import enum
import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stepline_server.errors import PermissionDenied, Unauthenticated
from stepline_server.settings import Settings

SIGNING_KEY = re.compile(r"^signkey-([A-Za-z0-9]+)-((?:[0-9a-fA-F]{2})+)$")
MIN_KEY_LENGTH = 16


class KeyKind(enum.StrEnum):
    EVENT = "event"
    SIGNING = "signing"
    ADMIN = "admin"


class Need(enum.Enum):
    """What a call needs."""

    SEND_EVENTS = "send events"  # any key
    APP = "act for an app"  # a signing key bound to the app, or an admin key
    ADMIN = "run operations"  # an admin key


_ACCEPTED = {
    Need.SEND_EVENTS: frozenset(KeyKind),
    Need.APP: frozenset({KeyKind.SIGNING, KeyKind.ADMIN}),
    Need.ADMIN: frozenset({KeyKind.ADMIN}),
}
_EXPECTED = {Need.SEND_EVENTS: "an event, signing or admin key",
             Need.APP: "the app's signing key (or an admin key)",
             Need.ADMIN: "an admin key"}


@dataclass(frozen=True, slots=True)
class Key:
    kind: KeyKind
    secret: str
    apps: frozenset[str] = frozenset()  # signing keys: the apps it acts for
    label: str = ""  # where it was configured, for messages and logs; never the key itself

    def may_act_for(self, app_id: str) -> bool:
        return self.kind is KeyKind.ADMIN or app_id in self.apps


class Keyring:
    """The configured keys, looked up by the SHA-256 of what a caller presents."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._by_digest: dict[bytes, Key] = {}
        for key in keys:
            for form in _forms(key):
                self._by_digest[_digest(form)] = key

    def configured(self) -> list[Key]:
        """Each configured key once."""
        return list({id(k): k for k in self._by_digest.values()}.values())

    def signing_keys(self, app_id: str) -> list[str]:
        """The signing keys bound to `app_id`, in configured order: the bridge signs its
        requests to the app with the first and accepts answers signed with any."""
        return [k.secret for k in self.configured()
                if k.kind is KeyKind.SIGNING and app_id in k.apps]

    @property
    def enabled(self) -> bool:
        """With no key configured, every call is allowed (`stepline dev`, loopback)."""
        return bool(self._by_digest)

    def identify(self, presented: str) -> Key | None:
        return self._by_digest.get(_digest(presented)) if presented else None

    def authorize(self, presented: str, need: Need, app_id: str | None = None) -> Key | None:
        """The key a call presented, checked against what it needs; None when no keys are
        configured. Raises Unauthenticated (no key, or an unknown one) or PermissionDenied (a
        key of another kind, or bound to other apps)."""
        if not self.enabled:
            return None
        expected = _EXPECTED[need]
        if not presented:
            raise Unauthenticated(f"authorization: this call needs {expected}, sent as "
                                  "'authorization: Bearer KEY'; none was sent")
        key = self.identify(presented)
        if key is None:
            raise Unauthenticated(f"authorization: the key sent is not one of this server's; "
                                  f"this call needs {expected}")
        if key.kind not in _ACCEPTED[need]:
            raise PermissionDenied(f"authorization: {key.label or key.kind.value + ' key'} may "
                                   f"not {need.value}; this call needs {expected}")
        if need is Need.APP and app_id is not None and not key.may_act_for(app_id):
            raise PermissionDenied(f"authorization: {key.label or 'this signing key'} is not "
                                   f"bound to app {app_id!r}; use that app's signing key")
        return key


def bearer(value: str) -> str:
    """The token of an `authorization` value ('Bearer TOKEN'), or '' when there is none."""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _forms(key: Key) -> list[str]:
    """What a caller may present for this key: the key; for a signing key, also the hashes the
    Inngest SDKs send (npm: `signkey-<env>-<sha256>`, PyPI: the bare `<sha256>`)."""
    forms = [key.secret]
    match = SIGNING_KEY.match(key.secret)
    if key.kind is KeyKind.SIGNING and match:
        hashed = hashlib.sha256(bytes.fromhex(match.group(2))).hexdigest()
        forms += [f"signkey-{match.group(1)}-{hashed}", hashed]
    return forms


# -- configuration ------------------------------------------------------------------------------
class KeyConfigError(ValueError):
    """A key setting that cannot be used; the message names the setting."""


def keyring_from(settings: Settings) -> Keyring:
    """Every key the settings give: the keys file's, then the environment's."""
    keys = load_keys_file(settings.keys_file) if settings.keys_file else []
    keys += parse_keys(KeyKind.EVENT, settings.event_keys, "STEPLINE_EVENT_KEYS")
    keys += parse_keys(KeyKind.SIGNING, settings.signing_keys, "STEPLINE_SIGNING_KEYS")
    keys += parse_keys(KeyKind.ADMIN, settings.admin_keys, "STEPLINE_ADMIN_KEYS")
    return Keyring(keys)


def parse_keys(kind: KeyKind, text: str, setting: str) -> list[Key]:
    """Keys from an environment variable. Event and admin keys: separated by commas. Signing
    keys: `APP[,APP...]=KEY` entries separated by semicolons or whitespace."""
    keys: list[Key] = []
    if kind is KeyKind.SIGNING:
        for n, entry in enumerate(re.split(r"[;\s]+", text.strip()), 1):
            if entry:
                apps, _, secret = entry.rpartition("=")
                keys.append(_key(kind, secret, _apps(apps, f"{setting} entry {n}"),
                                 f"signing key {n} of {setting}"))
    else:
        for n, secret in enumerate((s.strip() for s in text.split(",")), 1):
            if secret:
                keys.append(_key(kind, secret, frozenset(), f"{kind.value} key {n} of {setting}"))
    return keys


def load_keys_file(path: str) -> list[Key]:
    """A TOML file of `[[keys]]` tables: `kind = "event" | "signing" | "admin"`, `key = "..."`,
    and for signing keys `apps = ["app-id", ...]`; `name` is optional, for messages."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise KeyConfigError(f"keys_file: cannot read {path!r} ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeyConfigError(f"keys_file: {path!r} is not valid TOML ({exc})") from None
    entries = document.get("keys", [])
    if not isinstance(entries, list):
        raise KeyConfigError(f"keys_file: {path!r}: 'keys' must be an array of tables ([[keys]])")
    return [_file_key(entry, f"keys_file {path!r} keys[{i}]") for i, entry in enumerate(entries)]


def _file_key(entry: object, where: str) -> Key:
    if not isinstance(entry, dict):
        raise KeyConfigError(f"{where}: expected a table with kind and key")
    try:
        kind = KeyKind(entry.get("kind", ""))
    except ValueError:
        raise KeyConfigError(f"{where}.kind: expected one of event, signing, admin; got "
                        f"{entry.get('kind')!r}") from None
    apps = entry.get("apps", [])
    if isinstance(apps, str):
        apps = [apps]
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        raise KeyConfigError(f"{where}.apps: expected a list of app ids")
    label = str(entry.get("name") or f"{kind.value} key {where}")
    return _key(kind, str(entry.get("key", "")), _apps(",".join(apps), f"{where}.apps")
                if kind is KeyKind.SIGNING else frozenset(), label)


def _apps(text: str, where: str) -> frozenset[str]:
    apps = frozenset(a.strip() for a in text.split(",") if a.strip())
    if not apps:
        raise KeyConfigError(f"{where}: a signing key is bound to at least one app id "
                        "(APP[,APP...]=signkey-...)")
    return apps


def _key(kind: KeyKind, secret: str, apps: frozenset[str], label: str) -> Key:
    secret = secret.strip()
    if kind is KeyKind.SIGNING and not SIGNING_KEY.match(secret):
        raise KeyConfigError(f"{label}: a signing key has the form signkey-<env>-<hex>, with "
                             "an even number of hex digits (e.g. signkey-prod-" + "ab" * 16 + ")")
    if len(secret) < MIN_KEY_LENGTH:
        raise KeyConfigError(f"{label}: keys have at least {MIN_KEY_LENGTH} characters")
    return Key(kind, secret, apps, label)
