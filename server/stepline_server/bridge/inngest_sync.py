"""In-band sync of an Inngest SDK app: the server PUTs to the app's URL, signed, with
`X-Inngest-Sync-Kind: in_band` and the body `{url}`; an SDK that does in-band sync answers 200
with the same header and its app config (`app_id`, `functions`, `framework`, `url`, the SDK's
name and version), signed, and makes no `/fn/register` call. The answer is registered with the
same translation as `/fn/register` (inngest_register.py).

Read from the shipped SDKs: PyPI `inngest` 0.5.19 answers in-band only in cloud mode (not
INNGEST_DEV) and only to a signed PUT (else 401); its answer names the SDK as `sdk_language`
and `sdk_version`. npm `inngest` 4.24.0 answers in-band to a PUT whose signature it accepts
(unless INNGEST_ALLOW_IN_BAND_SYNC=false) and names the SDK as `sdk` (`js:v4.24.0`). An SDK
that does not do in-band sync handles the PUT out-of-band (it registers through /fn/register
before it answers) and answers without the in-band header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepline_server.bridge.inngest_wire import canonical

SYNC_KIND_HEADER = "X-Inngest-Sync-Kind"
SIGNATURE_HEADER = "X-Inngest-Signature"
IN_BAND = "in_band"  # both SDKs' value (the protocol notes wrote "in-band")


def in_band_request(url: str) -> tuple[dict[str, str], bytes]:
    """The PUT's headers (without the signature) and its JCS body (the PyPI SDK canonicalises
    what it receives before it checks the signature)."""
    return ({"Content-Type": "application/json", SYNC_KIND_HEADER: IN_BAND,
             "X-Inngest-Server-Kind": "cloud"}, canonical({"url": url}))


def probe_request() -> tuple[dict[str, str], bytes]:
    """The trust probe's headers (without the signature) and body (`POST <url>?probe=trust`;
    both SDKs check the signature and answer a signed 200 with an empty body)."""
    return ({"Content-Type": "application/json", "X-Inngest-Server-Kind": "cloud"},
            canonical({}))


def answered_in_band(status: int, headers: Mapping[str, str]) -> bool:
    """`headers` with lower-case names."""
    return status == 200 and headers.get(SYNC_KIND_HEADER.lower()) == IN_BAND


def register_payload(answer: Any) -> Any:
    """The in-band answer as the `/fn/register` payload it stands for (anything that is not an
    object is passed on for registration() to refuse)."""
    if not isinstance(answer, dict):
        return answer
    sdk = answer.get("sdk")
    if not isinstance(sdk, str) or not sdk:
        language, version = answer.get("sdk_language"), answer.get("sdk_version")
        sdk = f"{language}:v{version}" if language and version else ""
    return {"appName": answer.get("app_id"), "url": answer.get("url"),
            "functions": answer.get("functions"), "framework": answer.get("framework"),
            "sdk": sdk, "appVersion": answer.get("appVersion"), "deployType": "ping"}
