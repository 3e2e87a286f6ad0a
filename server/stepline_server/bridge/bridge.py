"""The HTTP bridge: dispatch to apps that registered a URL. Each HTTP app is a connection of
the dispatcher (connection.py) on every server; a leased run becomes an exchange, one request
per step boundary, whose answers are applied with the same engine calls as a stream's reports:
submit_ops under the lease, CONTINUE (the next request, under the same lease) or RELEASE (the
slot is free), refusals charged or given back as for a stream (dispatch/refusals.py).

Failures of the app, each one failed attempt of the run (or parallel step), recorded with its
error: an answer that is not usable (AppAnswerError: not JSON, unknown op, bad signature, the
SDK's own refusal), a timeout (`AppTimeout`: the request may have run the step, so it counts
like a step that failed, and the function's retries and backoff apply), a refused address
(`AppUrlRefused`), and an app unreachable (connection errors, 5xx without the SDK's header)
after UNREACHABLE_TRIES tries with backoff (`AppUnreachable`, naming the URL and last cause)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp

from stepline._signing import sign, verify
from stepline_server.auth import KeyKind, Keyring, Need
from stepline_server.bridge import inngest_sync, stepline_json, transport
from stepline_server.bridge.connection import HttpConnection, next_dispatch
from stepline_server.bridge.inngest_register import registration
from stepline_server.bridge.pacing import Pacer
from stepline_server.bridge.protocol import (
    AppAnswerError,
    AppProtocol,
    AppUnreachableAnswer,
    OutgoingCall,
)
from stepline_server.bridge.urls import RefusedAddress, UrlPolicy, check_form
from stepline_server.dispatch.dispatcher import Dispatcher
from stepline_server.dispatch.refusals import Refusals, explained
from stepline_server.errors import FailedPrecondition, InvalidArgument, SteplineServerError
from stepline_server.ids import now_ms
from stepline_server.limits import PayloadLimits
from stepline_server.model import (
    AckAction,
    AppEndpoint,
    Dispatch,
    ErrorInfo,
    OpsBatch,
    RunCompleted,
)
from stepline_server.telemetry import traceparent

log = logging.getLogger(__name__)

# An app unreachable is tried this many times, pausing base, 2 base, 4 base... in between
# (base: settings.retry_base_seconds; 1 s by default, so 15 s in all, within a minute).
UNREACHABLE_TRIES = 5
# A sync's PUT (the app registers before it answers), and how much of its answer is shown.
SYNC_TIMEOUT_SECONDS = 30.0
SYNC_ANSWER_CHARS = 2000
# A sync of a new URL tries in-band with at most this many of the configured signing keys.
MAX_SYNC_KEYS = 5
READ_CHUNK_BYTES = 64 * 1024


class _Unreachable(Exception):
    """This try did not reach the app's SDK; the message says why."""


class _Gone(Exception):
    """The exchange's item is no longer this connection's (cancelled), or the server stops."""


class Bridge:
    def __init__(self, dispatcher: Dispatcher, keyring: Keyring) -> None:
        self.dispatcher = dispatcher
        self.engine = dispatcher.engine
        self.keyring = keyring
        settings = self.engine.settings
        self.settings = settings
        self.policy = UrlPolicy.of(settings.allow_app_hosts, any_url=settings.any_app_url)
        self.protocols: dict[str, AppProtocol] = {}
        self.add_protocol(stepline_json.SteplineJson(PayloadLimits.of(settings)))
        # Bigger answers are refused: a report of many steps' outputs, with JSON's overhead.
        self.max_answer_bytes = settings.grpc_max_message_bytes
        self.connections: dict[str, HttpConnection] = {}  # by app id
        self._retiring: set[HttpConnection] = set()
        self.refusals = Refusals(dispatcher)
        self.client = transport.Client(self.policy, settings.app_timeout_seconds)
        self.pacer = Pacer()  # requests built and answers read a few per loop iteration
        self._reload = asyncio.Event()
        self._stopped = False
        self.engine.on_apps_changed(self._app_changed)

    def add_protocol(self, protocol: AppProtocol) -> None:
        """Serve apps whose endpoint names `protocol.name` (the Inngest protocol adds itself)."""
        self.protocols[protocol.name] = protocol

    def _app_changed(self, app_id: str, http: bool) -> None:
        if http or app_id in self.connections:
            self._reload.set()

    # -- the loop: apps loaded, leases in flight renewed ---------------------------------------
    async def run(self) -> None:
        """Until stopped: load the HTTP apps (at start, when one registers here, and every
        heartbeat interval for those registered through other servers) and renew the leases
        of the requests in flight."""
        interval = self.settings.heartbeat_seconds
        beat = time.monotonic()
        while not self._stopped:
            self._reload.clear()
            await self._guarded(self.reload(), "load the HTTP apps")
            if time.monotonic() - beat >= interval:
                beat = time.monotonic()
                await self._guarded(self.heartbeat(), "renew the leases of HTTP requests")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), max(0.0, beat + interval
                                                                - time.monotonic()))

    async def _guarded(self, job: Awaitable[None], what: str) -> None:
        try:
            await job
        except Exception as exc:  # the database unreachable: try again next round
            log.warning("bridge: could not %s: %r", what, exc)

    async def reload(self) -> None:
        served = await self.engine.http_apps()
        for endpoint, function_ids in served.items():
            conn = self.connections.get(endpoint.app_id)
            if conn is None:
                self._open(endpoint, function_ids)
                continue
            conn.endpoint = endpoint  # the requests that follow go to its new URL
            conn.worker_id = endpoint.url
            if conn.function_ids != function_ids:
                conn.function_ids = function_ids
                self.dispatcher.wake()
        gone = set(self.connections) - {e.app_id for e in served}
        for app_id in gone:  # no longer served over HTTP: what is in flight finishes
            conn = self.connections.pop(app_id)
            self.dispatcher.remove(conn)
            self._retiring.add(conn)
        self._retiring = {c for c in self._retiring if c.exchanges}

    def _open(self, endpoint: AppEndpoint, function_ids: list[str]) -> None:
        conn = HttpConnection(
            id=self.dispatcher.new_connection_id(), app_id=endpoint.app_id,
            worker_id=endpoint.url, function_ids=function_ids, slots=self.settings.app_inflight,
            endpoint=endpoint, exchange=self.exchange)
        self.connections[endpoint.app_id] = conn
        self.dispatcher.add(conn)
        log.info("bridge: serving app %s at %s (%s) as %s", endpoint.app_id, endpoint.url,
                 endpoint.protocol, conn.id)

    def _all(self) -> list[HttpConnection]:
        """The apps' connections, and those of apps no longer served with requests under way."""
        return [*self.connections.values(), *self._retiring]

    async def heartbeat(self) -> None:
        for conn in self._all():
            if conn.inflight:
                await self.engine.heartbeat(conn.id, sorted(conn.inflight))

    async def stop(self, grace_seconds: float) -> None:
        """No new requests; the exchanges under way get `grace_seconds` to finish, then are
        abandoned (their leases are released with the server's)."""
        self._stopped = True
        self._reload.set()
        tasks = {t for conn in self._all() for t in conn.exchanges}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.client.close()

    # -- sync: ask an app to register again ---------------------------------------------------
    async def sync(self, url: str, field: str = "url") -> tuple[int, str]:
        """Ask the app at `url` to register (again). With signing keys for it (those of the
        app registered at `url`; for a new URL, each configured signing key in turn), first
        in-band: a signed PUT that an Inngest SDK in production mode answers with its signed
        app config, registered here (inngest_sync.py). Otherwise, and when the app refuses
        the signature, the out-of-band PUT of an Inngest dev server: the app then registers
        itself (RegisterFunctions, or /fn/register). Returns the app's status and answer (its
        start). Raises InvalidArgument for a URL the policy refuses or an in-band answer that
        is not a register payload, FailedPrecondition when the app cannot be reached or its
        in-band answer is not signed with a key of the app it names."""
        check_form(url, field)
        await self.policy.check_url(url, field)
        before = {a.app_id: a.synced_at_ms for a in await self.engine.list_apps()}
        for key in await self._sync_keys(url):
            status, headers, body = await self._put(url, field, key)
            if inngest_sync.answered_in_band(status, headers):
                return 200, await self._register_in_band(url, key, headers, body, field)
            if status != 401:  # handled out-of-band (or failed) by the app itself
                return await self._out_of_band(status, body, before, field)
        status, _, body = await self._put(url, field, None)
        return await self._out_of_band(status, body, before, field)

    async def _out_of_band(self, status: int, body: bytes, before: Mapping[str, int],
                           field: str) -> tuple[int, str]:
        """The app's answer to an out-of-band PUT. With keys, each Inngest app it registered
        must then pass the trust probe at the URL it registered (the register call proved
        the key; the probe proves that URL is an app that holds it)."""
        if 200 <= status < 300 and self.keyring.enabled:
            for app in await self.engine.list_apps():
                if app.protocol == "inngest" and app.synced_at_ms != before.get(app.app_id):
                    await self._trust_probe(app.app_id, app.url, field)
        return status, body.decode(errors="replace")[:SYNC_ANSWER_CHARS]

    async def _trust_probe(self, app_id: str, url: str, field: str) -> None:
        """`POST <url>?probe=trust`, signed; the SDK answers a signed 200 only when it holds
        the key. FailedPrecondition (the registration stands) when it does not."""
        keys = self.keyring.signing_keys(app_id)[:1]
        headers, body = inngest_sync.probe_request()
        if keys:
            headers[inngest_sync.SIGNATURE_HEADER] = sign(body, keys[0])
        probe_url = f"{url}{'&' if '?' in url else '?'}probe=trust"
        why = await self._probe_answer(probe_url, headers, body, keys)
        if why is not None:
            raise FailedPrecondition(
                f"{field}: app {app_id!r} registered {url}, which failed the trust probe "
                f"({why}); its runs will fail until the app serves there with its signing key "
                "(check INNGEST_SERVE_ORIGIN or the serve path, and the key)")

    async def _probe_answer(self, url: str, headers: Mapping[str, str], body: bytes,
                            keys: list[str]) -> str | None:
        """Why the probe's answer is not a signed 200, or None."""
        try:
            self.client.check_literal(url)
            async with self.client.session.post(url, data=body, headers=headers, timeout=(
                    aiohttp.ClientTimeout(total=SYNC_TIMEOUT_SECONDS))) as response:
                answer = await _read_at_most(response, SYNC_ANSWER_CHARS)
                got = {k.lower(): v for k, v in response.headers.items()}
        except (aiohttp.ClientError, TimeoutError, RefusedAddress) as exc:
            return f"no answer: {_cause(exc)}"
        if response.status != 200:
            return f"it answered {response.status}: {answer[:200]!r}"
        return verify(answer, got.get(inngest_sync.SIGNATURE_HEADER.lower()), keys)

    async def _sync_keys(self, url: str) -> list[str]:
        if not self.keyring.enabled:
            return []
        known = [a.app_id for a in await self.engine.list_apps() if a.url == url]
        keys = [k for app_id in known for k in self.keyring.signing_keys(app_id)[:1]]
        if not known:
            keys = [k.secret for k in self.keyring.configured() if k.kind is KeyKind.SIGNING]
        return keys[:MAX_SYNC_KEYS]

    async def _put(self, url: str, field: str, key: str | None
                   ) -> tuple[int, dict[str, str], bytes]:
        """One PUT: in-band and signed with `key`, or the plain out-of-band one."""
        headers, body = inngest_sync.in_band_request(url) if key else ({}, b"")
        if key:
            headers[inngest_sync.SIGNATURE_HEADER] = sign(body, key)
        try:
            self.client.check_literal(url)
            async with self.client.session.put(url, data=body, headers=headers, timeout=(
                    aiohttp.ClientTimeout(total=SYNC_TIMEOUT_SECONDS))) as response:
                answer = await _read_at_most(response, self.max_answer_bytes)
                return (response.status, {k.lower(): v for k, v in response.headers.items()},
                        answer)
        except RefusedAddress as exc:
            raise InvalidArgument(field, str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FailedPrecondition(f"{field}: the app at {url} did not answer the sync "
                                     f"({_cause(exc)})") from None

    async def _register_in_band(self, url: str, key: str, headers: Mapping[str, str],
                                body: bytes, field: str) -> str:
        """The app's signed in-band answer registered as /fn/register would register it; a
        URL in it other than `url` must first pass the trust probe."""
        why = verify(body, headers.get(inngest_sync.SIGNATURE_HEADER.lower()),
                     [key])
        if why is not None:
            raise FailedPrecondition(f"{field}: the app's in-band sync answer is refused: {why}")
        try:
            found = registration(inngest_sync.register_payload(json.loads(body)), dev=False)
        except ValueError as exc:
            raise FailedPrecondition(f"{field}: the app's in-band sync answer is not "
                                     f"JSON: {exc}") from None
        except InvalidArgument as exc:
            raise InvalidArgument(field, f"the app's in-band sync answer: {exc}") from None
        app_id = found.endpoint.app_id
        try:
            self.keyring.authorize(key, Need.APP, app_id)
        except SteplineServerError as exc:
            raise FailedPrecondition(f"{field}: the app {app_id!r} answered in-band: {exc}"
                                     ) from None
        await self.policy.check_url(found.endpoint.url, f"{field} (the in-band answer's url)")
        if found.endpoint.url != url:  # the SDK's serve origin: not the URL that answered
            await self._trust_probe(app_id, found.endpoint.url, field)
        changes = await self.engine.register_app(found.endpoint, found.specs)
        answer: dict[str, Any] = {"message": f"app {app_id} synced in-band", "modified": bool(
            changes.created or changes.updated or changes.archived), "sync": "in-band"}
        return json.dumps(answer)

    # -- one leased item: requests until the ack is RELEASE -------------------------------------
    async def exchange(self, conn: HttpConnection, work: Dispatch) -> None:
        lease = work.lease
        try:
            next_work: Dispatch | None = work
            while next_work is not None:
                next_work = await self._step(conn, next_work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours: the lease goes back, uncharged
            log.exception("bridge: exchange of run %s failed", work.run_id)
            self.refusals.refused(conn, work.key, lease, exc)

    async def _step(self, conn: HttpConnection, work: Dispatch) -> Dispatch | None:
        """One request and its answer applied; the next dispatch when the ack is CONTINUE."""
        key = work.key
        try:
            batch = await self._ask(conn, work)
        except _Gone:
            return None
        except AppAnswerError as exc:
            log.info("bridge: run %s: %s: %s", work.run_id, exc.name, exc.message)
            await self.refusals.charge(conn, key, work.lease, ErrorInfo(exc.name, exc.message))
            return None
        if key not in conn.inflight:  # cancelled while the app worked
            return None
        try:
            action = await asyncio.shield(self.engine.submit_ops(conn.id, batch))
        except Exception as exc:
            self._observe(conn, batch, exc)
            self.refusals.refused(conn, key, work.lease, explained(exc, f"run {work.run_id}"))
            return None
        self._observe(conn, batch, action)
        if action is AckAction.RELEASE:
            self.dispatcher.finished(conn, key, requeued=not isinstance(batch.ops[-1],
                                                                        RunCompleted))
            return None
        if self._stopped or self.dispatcher.stopping:  # the next request is another server's
            await self.engine.release(conn.id, [key])
            self.dispatcher.finished(conn, key, requeued=True)
            return None
        return next_dispatch(work, batch)

    def _observe(self, conn: HttpConnection, batch: OpsBatch,
                 result: AckAction | BaseException) -> None:
        if self.engine.observers:
            self.engine.observers.ops_committed(conn.id, batch, result, now_ms())

    async def _ask(self, conn: HttpConnection, work: Dispatch) -> OpsBatch:
        """The app's answer to `work` as a report; raises AppAnswerError for a failed attempt,
        _Gone when the item left this connection."""
        endpoint = conn.endpoint
        protocol = self.protocols.get(endpoint.protocol)
        if protocol is None:
            raise AppAnswerError("UnknownProtocol", f"app {endpoint.app_id!r} registered "
                                 f"protocol {endpoint.protocol!r}, which this server lacks")
        await self.pacer.turn()
        call = protocol.call(work, endpoint)
        keys = self.keyring.signing_keys(endpoint.app_id)
        headers = {**call.headers, "traceparent": traceparent.for_dispatch(work)}
        if keys:
            headers[protocol.signature_header] = sign(call.body, keys[0])
        cause = ""
        for attempt in range(UNREACHABLE_TRIES):
            if attempt:
                await asyncio.sleep(self.settings.retry_base_seconds * 2 ** (attempt - 1))
            if work.key not in conn.inflight or self._stopped:
                raise _Gone
            try:
                status, answer_headers, body = await self._post(conn, work, call, headers)
                await self.pacer.turn()
                return self._read(protocol, work, endpoint, keys, status, answer_headers, body)
            except _Unreachable as exc:
                cause = str(exc)
        raise AppAnswerError("AppUnreachable", f"{call.url}: {cause}")

    def _read(self, protocol: AppProtocol, work: Dispatch, endpoint: AppEndpoint,
              keys: list[str], status: int, headers: Mapping[str, str], body: bytes
              ) -> OpsBatch:
        """A 2xx answer must be signed when the app has a key (its ops would be applied); any
        other answer is an error whatever it says, signed or not."""
        if keys and 200 <= status < 300:
            why = verify(body, headers.get(protocol.signature_header.lower()), keys)
            if why is not None:
                raise AppAnswerError("InvalidSignature", f"the app's answer is refused: {why}")
        try:
            return protocol.answer(work, endpoint, status, headers, body)
        except AppUnreachableAnswer as exc:
            raise _Unreachable(str(exc)) from None

    async def _post(self, conn: HttpConnection, work: Dispatch, call: OutgoingCall,
                    headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST and read the answer (at most max_answer_bytes), as its own task: a cancelled
        run's request is abandoned (HttpConnection.cancel) without cancelling the exchange."""
        request = asyncio.ensure_future(self._send(call, headers))
        conn.requests[work.key] = request
        try:
            await asyncio.wait({request})
        finally:
            conn.requests.pop(work.key, None)
            request.cancel()
        if request.cancelled():
            raise _Gone
        return request.result()

    async def _send(self, call: OutgoingCall, headers: Mapping[str, str]
                    ) -> tuple[int, dict[str, str], bytes]:
        """The HTTP exchange; failures to reach the app raise _Unreachable."""
        try:
            self.client.check_literal(call.url)
            return await self._exchange_bytes(call, headers)
        except RefusedAddress as exc:
            raise AppAnswerError("AppUrlRefused", f"{call.url}: {exc}") from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Unreachable(_cause(exc)) from None
        except TimeoutError:
            raise AppAnswerError("AppTimeout", f"{call.url}: no answer within "
                                 f"{self.settings.app_timeout_seconds:g}s") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, RefusedAddress):
                raise AppAnswerError("AppUrlRefused", f"{call.url}: {exc.__cause__}") from None
            raise _Unreachable(_cause(exc)) from None

    async def _exchange_bytes(self, call: OutgoingCall, headers: Mapping[str, str]
                              ) -> tuple[int, dict[str, str], bytes]:
        async with self.client.session.post(call.url, data=call.body,
                                            headers=headers) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_answer_bytes:
                    raise AppAnswerError("AnswerTooLarge", f"the app's answer is over "
                                         f"{self.max_answer_bytes} bytes")
                chunks.append(chunk)
            return (response.status, {k.lower(): v for k, v in response.headers.items()},
                    b"".join(chunks))


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole answer, or its first `limit` bytes (a bigger one is not what was asked for:
    its signature fails, or its JSON does, with a precise message)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        chunks.append(chunk[:limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"".join(chunks)


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
