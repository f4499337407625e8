"""The etcd client's fail-over between members, against fake members on loopback (no etcd):
a write a member may have applied is never retried; one refused before proposal is; reads are."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from podnet.datastore.etcd import EtcdDatastore
from podnet.errors import DatastoreUnavailable

OK = (200, {"header": {"revision": "7"}, "kvs": []})
TIMED_OUT = (503, {"code": 14, "message": "etcdserver: request timed out"})
NO_LEADER = (503, {"code": 14, "message": "etcdserver: no leader"})
DROPPED = (500, {"code": 2, "message": "raft proposal dropped"})
SHUTTING_DOWN = (500, {"code": 1, "message": "grpc: the client connection is closing"})


class FakeMember(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: tuple[int, dict]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        server: FakeMember = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, body, self.headers.get("Grpc-Metadata-hasleader")))
        status, doc = server.answer
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def members() -> Iterator:
    made: list[FakeMember] = []

    def make(*answers: tuple[int, dict]) -> list[FakeMember]:
        for answer in answers:
            server = FakeMember(answer)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            made.append(server)
        return made[-len(answers) :]

    yield make
    for server in made:
        server.shutdown()
        server.server_close()


def _store(ms: list[FakeMember]) -> EtcdDatastore:
    return EtcdDatastore(",".join(m.endpoint for m in ms), timeout=2.0, retry_deadline=0.5)


@pytest.mark.parametrize("answer", [TIMED_OUT, SHUTTING_DOWN], ids=["timed-out", "shutting-down"])
def test_a_write_that_timed_out_on_a_member_is_not_retried(members, answer):
    first, second = members(answer, OK)
    with pytest.raises(DatastoreUnavailable, match="outcome is unknown"):
        _store([first, second]).put("/k", b"v")
    assert len(first.requests) == 1 and second.requests == []  # never sent twice


@pytest.mark.parametrize("refusal", [NO_LEADER, DROPPED], ids=["no-leader", "proposal-dropped"])
def test_a_write_refused_before_proposal_goes_to_the_next_member(members, refusal):
    first, second = members(refusal, OK)
    store = _store([first, second])
    assert store.put("/k", b"v") == 7
    assert len(first.requests) == 1 and len(second.requests) == 1
    store.put("/k", b"w")  # the member that answered is asked first from now on
    assert len(first.requests) == 1 and len(second.requests) == 2


@pytest.mark.parametrize("answer", [TIMED_OUT, SHUTTING_DOWN], ids=["timed-out", "shutting-down"])
def test_a_read_that_timed_out_is_retried_on_the_next_member(members, answer):
    first, second = members(answer, OK)
    assert _store([first, second]).get("/k") is None
    assert len(first.requests) == 1 and len(second.requests) == 1


def test_every_request_asks_for_a_leader(members):
    (member,) = members(OK)
    _store([member]).get("/k")
    assert member.requests[0][2] == "true"


def test_all_members_refusing_names_them_all(members):
    first, second = members(NO_LEADER, NO_LEADER)
    with pytest.raises(DatastoreUnavailable) as info:
        _store([first, second]).put("/k", b"v")
    assert first.endpoint in info.value.message and second.endpoint in info.value.message
    assert "outcome is unknown" not in info.value.message
