"""The etcd v3 datastore, spoken through etcd's gRPC gateway (JSON over HTTP/1.1).

Why the gateway and not a gRPC client library: the gateway is part of every etcd v3 server
(``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/watch`` ...), so podnet needs no grpc/protobuf wheels and
imports in milliseconds; the only maintained Python etcd3 clients either wrap grpc (python-etcd3,
unmaintained since 2020) or wrap the gateway without exposing what podnet needs (etcd3gw: no
revision-based compare-and-swap helpers, watch hides compaction). Everything podnet uses is five
calls, written here with explicit timeouts, endpoint fail-over and error mapping.

Failure semantics
- Every request has a timeout; no call can hang forever.
- A request that could not be sent (connection refused, unreachable) is retried on the next
  endpoint, with back-off, until ``retry_deadline`` seconds have passed; so is one a member
  refused before proposing it (``no leader``, ``raft proposal dropped``, ``too many requests``:
  :data:`NEVER_APPLIED`). Reads are also retried after a timeout or any other unavailability;
  writes are not (a member that timed out may have proposed it: its outcome is unknown), the
  error says so and the caller decides (read back, then retry).
- A multi-member cluster: whichever endpoint answered last is tried first; one that failed is
  passed over (:meth:`EtcdDatastore.demote`) by the next request and the next watch.
- When every endpoint failed, :class:`DatastoreUnavailable` names them all and the last error.
- A watch whose stream goes silent checks *its own member's* health every ``watch_idle_check``
  seconds (a linearizable read there, which needs a leader; another member answering proves
  nothing about this stream), so a black-holed or partitioned member ends the watch with
  :class:`DatastoreUnavailable` instead of a hang. Watches ask for a leader (gRPC metadata
  ``hasleader``, as etcd's own client does): a member that loses its leader cancels them. The
  caller (:class:`~podnet.datastore.sync.PrefixSync`) resumes from the last revision it saw, on
  another member: etcd's history there replays exactly the revisions after it.
- Connecting has its own short ``connect_timeout`` (a handshake takes a round trip, not seconds):
  while etcd is black-holed each attempt gives up quickly, so the first attempt after it comes
  back is never stuck behind a long SYN timeout (a policy written meanwhile reaches the agents
  within a few seconds of the return).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from podnet.datastore.base import MUST_NOT_EXIST, EventType, KeyValue, WatchEvent, Write, mark_revision_ends
from podnet.errors import (
    AlreadyExistsError,
    CompactedError,
    ConflictError,
    DatastoreError,
    DatastoreUnavailable,
    NotFoundError,
)

ENV_ENDPOINTS = "PODNET_ETCD_ENDPOINTS"
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
PAGE_SIZE = 1000
_GRPC_OUT_OF_RANGE = 11  # "mvcc: required revision has been compacted"
# gRPC codes with which a member's gateway answers while the member shuts down or loses its
# server ("grpc: the client connection is closing" is CANCELED, "transport is closing" is
# UNAVAILABLE): the member may or may not have applied the request, as after a timeout
_GRPC_UNKNOWN_OUTCOME = (1, 4, 14)  # CANCELED, DEADLINE_EXCEEDED, UNAVAILABLE
# etcd's refusals before a request is proposed to raft: a write refused so was never applied.
NEVER_APPLIED = ("no leader", "raft proposal dropped", "too many requests")
HEALTH_TIMEOUT = 2.0  # seconds for a silent watch's member to answer a read
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}  # the gateway passes it on as gRPC metadata


def endpoints_from(value: str | Sequence[str] | None = None) -> list[str]:
    """Endpoints from a flag value (``A,B,C``; or a list of such values), else
    ``PODNET_ETCD_ENDPOINTS``, else the local default. Duplicates are dropped."""
    if value is not None and not isinstance(value, str):
        value = ",".join(value)
    raw = value or os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINTS
    out = []
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        parts = urlsplit(item)
        if parts.scheme != "http" or not parts.hostname:
            raise DatastoreError(
                f"bad etcd endpoint {item!r}",
                hint="endpoints look like http://HOST:PORT, comma-separated",
            )
        if item not in out:
            out.append(item)
    if not out:
        raise DatastoreError("no etcd endpoints given", hint=f"set --etcd-endpoints or {ENV_ENDPOINTS}")
    return out


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> str:
    """The etcd ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")


def _kv(item: dict) -> KeyValue:
    return KeyValue(
        key=_unb64(item["key"]).decode(),
        value=_unb64(item.get("value")),
        mod_revision=int(item.get("mod_revision", 0)),
        create_revision=int(item.get("create_revision", 0)),
    )


class _Unsent(Exception):
    """The request never reached a server, or a member refused it before proposing it: safe to
    retry anywhere."""


class _Unanswered(Exception):
    """A member answered that it is unavailable without saying the request was never proposed
    (e.g. ``request timed out``): a read may be retried, a write's outcome is unknown."""


class EtcdDatastore:
    """A :class:`podnet.datastore.base.Datastore` backed by an etcd v3 cluster."""

    def __init__(
        self,
        endpoints: Sequence[str] | str | None = None,
        *,
        timeout: float = 5.0,
        retry_deadline: float = 5.0,
        watch_idle_check: float = 5.0,
        connect_timeout: float = 1.0,
    ) -> None:
        self.endpoints = endpoints_from(endpoints)
        self.timeout = timeout
        self.retry_deadline = retry_deadline
        self.watch_idle_check = watch_idle_check
        self.connect_timeout = min(connect_timeout, timeout)
        self._preferred = 0
        self._local = threading.local()

    # -- transport -------------------------------------------------------------------------
    def _connection(self, endpoint: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(endpoint)
        if conn is None:
            parts = urlsplit(endpoint)
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 2379, timeout=self.timeout)
            conns[endpoint] = conn
        return conn

    def _drop_connection(self, endpoint: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(endpoint, None)
        if conn is not None:
            conn.close()

    def demote(self, endpoint: str) -> None:
        """``endpoint`` failed: the next request (and watch) starts with the one after it."""
        if endpoint in self.endpoints and self.endpoints[self._preferred] == endpoint:
            self._preferred = (self.endpoints.index(endpoint) + 1) % len(self.endpoints)

    def ordered_endpoints(self) -> list[str]:
        """The endpoints in the order the next request tries them: the preferred one first."""
        start = self._preferred % len(self.endpoints)
        return self.endpoints[start:] + self.endpoints[:start]

    def _post_once(self, endpoint: str, path: str, body: dict) -> dict:
        conn = self._connection(endpoint)
        payload = json.dumps(body).encode()
        if conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            # readable while idle: the server closed the kept-alive connection (or sent junk);
            # found *before* sending, so that a disconnect after sending is always ambiguous
            self._drop_connection(endpoint)
            conn = self._connection(endpoint)
        if conn.sock is None:
            try:
                conn.timeout = self.connect_timeout
                conn.connect()
                conn.timeout = self.timeout
                conn.sock.settimeout(self.timeout)
            except OSError as exc:
                self._drop_connection(endpoint)
                raise _Unsent(str(exc)) from exc
        try:
            conn.request("POST", path, payload, {"Content-Type": "application/json", **REQUIRE_LEADER})
        except OSError as exc:  # refused while sending: a partial request is never processed
            self._drop_connection(endpoint)
            raise _Unsent(str(exc)) from exc
        try:
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            # sent whole, then the connection broke or timed out (a killed member, a proxy whose
            # upstream died): the member may have applied it
            self._drop_connection(endpoint)
            raise
        try:
            doc = json.loads(data) if data else {}
        except ValueError as exc:
            raise DatastoreError(f"etcd at {endpoint} answered {path} with non-JSON: {data[:200]!r}") from exc
        if resp.status != 200:
            message = doc.get("message") or doc.get("error") or data.decode(errors="replace")
            if doc.get("code") == _GRPC_OUT_OF_RANGE and "compacted" in message:
                raise CompactedError(0)
            if any(marker in message for marker in NEVER_APPLIED):
                raise _Unsent(f"HTTP {resp.status}: {message}")
            if (
                resp.status in (502, 503, 504)
                or doc.get("code") in _GRPC_UNKNOWN_OUTCOME
                or "timed out" in message
                or "leader changed" in message
            ):
                raise _Unanswered(f"HTTP {resp.status}: {message}")
            raise DatastoreError(f"etcd at {endpoint} rejected {path}: {message}")
        return doc

    def _post(self, path: str, body: dict, *, idempotent: bool) -> dict:
        deadline = time.monotonic() + self.retry_deadline
        errors: dict[str, str] = {}
        delay = 0.05
        attempt = 0
        order = self.ordered_endpoints()
        while True:
            endpoint = order[attempt % len(order)]
            try:
                doc = self._post_once(endpoint, path, body)
                self._preferred = self.endpoints.index(endpoint)
                return doc
            except _Unsent as exc:
                errors[endpoint] = str(exc)
                self.demote(endpoint)
            except (OSError, http.client.HTTPException, _Unanswered) as exc:
                self.demote(endpoint)
                errors[endpoint] = f"{type(exc).__name__}: {exc}"
                if not idempotent:
                    raise DatastoreUnavailable(
                        f"etcd at {endpoint} did not answer a write ({errors[endpoint]}); "
                        "its outcome is unknown",
                        hint="read the object again before retrying",
                    ) from exc
            attempt += 1
            if attempt % len(self.endpoints) == 0:
                if time.monotonic() + delay > deadline:
                    detail = "; ".join(f"{ep}: {msg}" for ep, msg in errors.items())
                    raise DatastoreUnavailable(
                        f"etcd unavailable at {', '.join(self.endpoints)} ({detail})",
                        hint=f"start etcd or point --etcd-endpoints / {ENV_ENDPOINTS} at a running one",
                    )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- reads -----------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        doc = self._post("/v3/kv/range", {"key": _b64(key)}, idempotent=True)
        kvs = doc.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def list(self, prefix: str, *, serializable: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision. ``serializable``: what the member that
        answers holds locally, without asking the leader (reading each member's own copy)."""
        out: list[KeyValue] = []
        start = _b64(prefix)
        end = _prefix_end(prefix)
        revision = 0
        while True:
            body = {"key": start, "range_end": end, "limit": PAGE_SIZE}
            if revision:
                body["revision"] = revision  # every page from the same snapshot
            if serializable:
                body["serializable"] = True
            doc = self._post("/v3/kv/range", body, idempotent=True)
            revision = revision or int(doc["header"]["revision"])
            page = [_kv(item) for item in doc.get("kvs") or []]
            out.extend(page)
            if not doc.get("more") or not page:
                return out, revision
            start = _b64(page[-1].key.encode() + b"\0")

    def member_status(self, endpoint: str | None = None) -> MemberStatus:
        """etcd's ``/v3/maintenance/status`` of one member (default: the first endpoint), asked
        of that member only (no fail-over: the answer is about it)."""
        endpoint = endpoint or self.endpoints[0]
        try:
            doc = self._post_once(endpoint, "/v3/maintenance/status", {})
        except (_Unsent, _Unanswered, OSError, http.client.HTTPException) as exc:
            raise DatastoreUnavailable(f"etcd member at {endpoint} did not answer: {exc}") from exc
        return parse_status(doc, endpoint)

    def revision(self) -> int:
        doc = self._post("/v3/kv/range", {"key": _b64("\0"), "limit": 1}, idempotent=True)
        return int(doc["header"]["revision"])

    # -- writes ----------------------------------------------------------------------------
    def create(self, key: str, value: bytes) -> int:
        try:
            return self.commit([Write(key, value, MUST_NOT_EXIST)])
        except ConflictError as exc:
            raise AlreadyExistsError(f"{key} already exists") from exc

    def update(self, key: str, value: bytes, revision: int) -> int:
        return self.commit([Write(key, value, revision)])

    def put(self, key: str, value: bytes) -> int:
        doc = self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, idempotent=False)
        return int(doc["header"]["revision"])

    def delete(self, key: str, revision: int | None = None) -> int:
        if revision is not None:
            return self.commit([Write(key, None, revision)])
        doc = self._post("/v3/kv/deleterange", {"key": _b64(key)}, idempotent=False)
        if int(doc.get("deleted", 0)) == 0:
            raise NotFoundError(f"{key} not found")
        return int(doc["header"]["revision"])

    def commit(self, writes: Sequence[Write]) -> int:
        keys = [w.key for w in writes]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key in one commit")
        compare = []
        for w in writes:
            if w.expect == MUST_NOT_EXIST:
                compare.append(
                    {"key": _b64(w.key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                )
            elif w.expect is not None:
                compare.append(
                    {"key": _b64(w.key), "target": "MOD", "result": "EQUAL", "mod_revision": str(w.expect)}
                )
        success = [
            {"request_delete_range": {"key": _b64(w.key)}}
            if w.value is None
            else {"request_put": {"key": _b64(w.key), "value": _b64(w.value)}}
            for w in writes
        ]
        conditional = [w for w in writes if w.expect is not None]
        failure = [{"request_range": {"key": _b64(w.key)}} for w in conditional]
        doc = self._post(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure}, idempotent=False
        )
        if doc.get("succeeded"):
            return int(doc["header"]["revision"])
        # Find the first failed condition and say what it was.
        for w, resp in zip(conditional, doc.get("responses") or [], strict=False):
            kvs = (resp.get("response_range") or {}).get("kvs") or []
            current = _kv(kvs[0]) if kvs else None
            if w.expect == MUST_NOT_EXIST and current is not None:
                raise ConflictError(f"{w.key} already exists (revision {current.mod_revision})")
            if w.expect and current is None:
                raise NotFoundError(f"{w.key} not found")
            if w.expect and current is not None and current.mod_revision != w.expect:
                raise ConflictError(
                    f"{w.key} was modified: expected revision {w.expect}, found {current.mod_revision}"
                )
        raise ConflictError("transaction conditions failed (concurrent writes)")

    def compact(self, revision: int) -> None:
        try:
            self._post("/v3/kv/compaction", {"revision": str(revision), "physical": True}, idempotent=True)
        except DatastoreError as exc:
            if "compacted" in exc.message:
                raise CompactedError(0) from exc
            raise

    # -- watch -----------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        return EtcdWatch(self, prefix, start_revision)

    def close(self) -> None:
        for endpoint in list(self._local.__dict__.get("conns", {})):
            self._drop_connection(endpoint)


@dataclass(frozen=True)
class MemberStatus:
    """One member's view (``/v3/maintenance/status``); ids as etcd prints them (hex)."""

    endpoint: str
    member_id: str
    leader: str  # "" when the member knows no leader
    raft_term: int
    revision: int
    version: str

    @property
    def is_leader(self) -> bool:
        return bool(self.leader) and self.leader == self.member_id


def _member_id(value: object) -> str:
    """The gateway sends uint64 ids as decimal strings; etcdctl shows them in hex."""
    number = int(str(value or 0))
    return f"{number:x}" if number else ""


def parse_status(doc: dict, endpoint: str = "") -> MemberStatus:
    """A :class:`MemberStatus` from the gateway's JSON answer to ``/v3/maintenance/status``."""
    header = doc.get("header") or {}
    member = _member_id(header.get("member_id"))
    if not member:
        raise DatastoreError(f"etcd at {endpoint} answered its status without a member id: {doc}")
    return MemberStatus(
        endpoint=endpoint,
        member_id=member,
        leader=_member_id(doc.get("leader")),
        raft_term=int(doc.get("raftTerm") or doc.get("raft_term") or 0),
        revision=int(header.get("revision") or 0),
        version=str(doc.get("version") or ""),
    )


def _event(event: dict) -> WatchEvent:
    """One event of a watch response (JSON gateway form)."""
    kv = event["kv"]
    deleted = event.get("type") == "DELETE"
    return WatchEvent(
        type=EventType.DELETE if deleted else EventType.PUT,
        key=_unb64(kv["key"]).decode(),
        value=None if deleted else _unb64(kv.get("value")),
        revision=int(kv.get("mod_revision", 0)),
    )


class EtcdWatch:
    """One watch stream over a raw socket (chunked HTTP), so it can be closed and health-checked."""

    def __init__(self, store: EtcdDatastore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._buf = b""
        self._endpoint = self._open()

    def _open(self) -> str:
        body = {"create_request": {"key": _b64(self._prefix), "range_end": _prefix_end(self._prefix)}}
        if self._start:
            body["create_request"]["start_revision"] = str(self._start)
        payload = json.dumps(body).encode()
        errors = []
        leader = "".join(f"{k}: {v}\r\n" for k, v in REQUIRE_LEADER.items()).encode()
        for endpoint in self._store.ordered_endpoints():
            parts = urlsplit(endpoint)
            try:
                sock = socket.create_connection(
                    (parts.hostname, parts.port or 2379), self._store.connect_timeout
                )
                sock.settimeout(self._store.timeout)
                sock.sendall(
                    b"POST /v3/watch HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"%sContent-Length: %d\r\n\r\n%s" % (parts.netloc.encode(), leader, len(payload), payload)
                )
            except OSError as exc:
                errors.append(f"{endpoint}: {exc}")
                self._store.demote(endpoint)
                continue
            self._sock = sock
            try:
                self._read_headers(endpoint)
            except DatastoreError:
                self._shutdown()
                self._store.demote(endpoint)
                raise
            return endpoint
        raise DatastoreUnavailable(
            f"etcd unavailable at {', '.join(self._store.endpoints)} ({'; '.join(errors)})",
            hint=f"start etcd or point --etcd-endpoints / {ENV_ENDPOINTS} at a running one",
        )

    def _recv(self) -> bytes:
        """Wait for bytes; check the server's health while the stream is silent."""
        assert self._sock is not None
        while not self._closed.is_set():
            ready, _, _ = select.select([self._sock], [], [], self._store.watch_idle_check)
            if self._closed.is_set():
                break
            if not ready:
                self._check_member()  # raises DatastoreUnavailable when this member is gone
                continue
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if self._closed.is_set():
                    break
                raise DatastoreUnavailable(f"watch stream from {self._endpoint} broke: {exc}") from exc
            if not data:
                raise DatastoreUnavailable(f"etcd at {self._endpoint} closed the watch stream")
            return data
        return b""

    def _check_member(self) -> None:
        """A linearizable read on the watch's own member, on a fresh connection with a short
        timeout: it needs that member reachable and with a leader."""
        parts = urlsplit(self._endpoint)
        timeout = min(self._store.timeout, HEALTH_TIMEOUT)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 2379, timeout=timeout)
        body = json.dumps({"key": _b64("\0"), "limit": 1}).encode()
        try:
            conn.request("POST", "/v3/kv/range", body, {"Content-Type": "application/json", **REQUIRE_LEADER})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DatastoreUnavailable(f"etcd at {self._endpoint} (watched) did not answer: {exc}") from exc
        finally:
            conn.close()
        if resp.status != 200:
            detail = data[:200].decode(errors="replace")
            raise DatastoreUnavailable(f"etcd at {self._endpoint} (watched) is unavailable: {detail}")

    def _read_until(self, marker: bytes) -> bytes | None:
        while marker not in self._buf:
            data = self._recv()
            if not data:
                return None
            self._buf += data
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            data = self._recv()
            if not data:
                return None
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_headers(self, endpoint: str) -> None:
        self._endpoint = endpoint
        head = self._read_until(b"\r\n\r\n")
        if head is None:
            return
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise DatastoreError(f"etcd at {endpoint} refused the watch: {status.decode(errors='replace')}")

    def _messages(self) -> Iterator[dict]:
        """Decode the chunked body into the gateway's newline-separated JSON messages."""
        pending = b""
        while True:
            size_line = self._read_until(b"\r\n")
            if size_line is None:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raise DatastoreUnavailable(f"etcd at {self._endpoint} ended the watch stream")
            chunk = self._read_exact(size + 2)
            if chunk is None:
                return
            pending += chunk[:-2]
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
            if pending.strip():
                try:
                    msg = json.loads(pending)
                except ValueError:
                    continue  # a message split over chunks
                pending = b""
                yield msg

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for msg in self._messages():
                if "error" in msg:
                    raise DatastoreError(f"watch failed: {msg['error']}")
                result = msg.get("result") or {}
                compact = int(result.get("compact_revision", 0))
                if compact:
                    raise CompactedError(compact)
                if result.get("canceled"):
                    raise DatastoreError(f"etcd canceled the watch: {result.get('cancel_reason', '')}")
                # etcd sends every event of a revision (one transaction) in one response
                yield from mark_revision_ends([_event(e) for e in result.get("events") or []])
        except DatastoreError as exc:
            if not isinstance(exc, CompactedError):
                self._store.demote(self._endpoint)  # the next watch starts on another member
            raise
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
