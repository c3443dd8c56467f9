"""SIEM forwarding: real HTTP and syslog receivers get every audit record, at least once.

The receivers run on 127.0.0.1 in this process and can fail or go away; one test runs a
real Celery worker process against the test database and Redis.
"""

import hashlib
import hmac
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection as db
from django.test import Client

from audit.chain import append_many
from audit.models import AuditRecord, Kind, SiemSink, record_hash
from audit.tasks import forward_to_sink, forward_to_sinks
from tests.conftest import ROOT, _database_url, free_port, stop

SECRET = "canary-hmac-key-7f3a91"


# Receivers -------------------------------------------------------------------------------


@dataclass
class Post:
    headers: dict[str, str]
    body: bytes

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines()]


class HttpReceiver:
    """A JSON Lines endpoint. mode: "ok"; "fail" (503, keeps nothing); "lose_ack" (keeps
    the batch, then answers 500, as if it crashed before acknowledging)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ingest"
        self.mode = "ok"
        self.posts: list[Post] = []
        # Cleared, the handler holds each request until it is set again.
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.entered.set()
                receiver.gate.wait(30)
                status = 200
                if receiver.mode == "fail":
                    status = 503
                else:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.posts.append(Post(headers, body))
                    if receiver.mode == "lose_ack":
                        status = 500
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def seqs(self) -> list[int]:
        return [doc["seq"] for post in self.posts for doc in post.documents]


class SyslogListener:
    """Collects RFC 5424 messages: UDP datagrams, or octet-counted frames over TCP."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.port = free_port()
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        if self.protocol == "tcp":
            sock = socket.create_server(("127.0.0.1", self.port))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", self.port))
        sock.settimeout(0.05)
        self._sock = sock
        loop = self._accept if self.protocol == "tcp" else self._receive
        threading.Thread(target=loop, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _receive(self, sock: socket.socket) -> None:
        while sock.fileno() != -1:
            try:
                datagram = sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(datagram)

    def _accept(self, sock: socket.socket) -> None:
        while sock.fileno() != -1:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read_frames, args=(conn,), daemon=True).start()

    def _read_frames(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                data += chunk
        frames = []
        while data:
            length, _, rest = data.partition(b" ")
            frames.append(rest[: int(length)])
            data = rest[int(length) :]
        with self._lock:
            self.messages.extend(frames)

    def parsed(self) -> list["SyslogMessage"]:
        with self._lock:
            return [SyslogMessage.parse(m) for m in self.messages]

    def seqs(self) -> list[int]:
        return [m.seq for m in self.parsed()]


SYSLOG_LINE = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb'(?P<msgid>\S+) \[audit@32473 seq="(?P<seq>\d+)" hash="(?P<hash>[0-9a-f]{64})"\] '
    rb"(?P<msg>\{.*\})",
    re.DOTALL,
)


@dataclass
class SyslogMessage:
    pri: int
    timestamp: str
    app: str
    msgid: str
    seq: int
    hash: str
    document: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> "SyslogMessage":
        match = SYSLOG_LINE.fullmatch(raw)
        assert match, f"not an RFC 5424 audit message: {raw[:200]!r}"
        return cls(
            pri=int(match["pri"]),
            timestamp=match["timestamp"].decode(),
            app=match["app"].decode(),
            msgid=match["msgid"].decode(),
            seq=int(match["seq"]),
            hash=match["hash"].decode(),
            document=json.loads(match["msg"]),
        )


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.gate.set()
    receiver.stop()


@pytest.fixture
def tcp_listener() -> Iterator[SyslogListener]:
    listener = SyslogListener("tcp")
    yield listener
    listener.stop()


@pytest.fixture
def udp_listener() -> Iterator[SyslogListener]:
    listener = SyslogListener("udp")
    yield listener
    listener.stop()


# Helpers ---------------------------------------------------------------------------------


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("audit_sink", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def add_http(name: str, url: str, *options: str) -> str:
    """Add an HTTP sink; returns what the command reported."""
    return run("add", "--name", name, "--http", url, *options)[1]


def add_syslog(name: str, protocol: str, port: int, *options: str) -> str:
    return run(
        "add", "--name", name, "--syslog", protocol, "--host", "127.0.0.1", "--port", str(port),
        *options,
    )[1]  # fmt: skip


def forward_fails() -> None:
    with pytest.raises(CommandError, match="did not accept"):
        run("forward")


def add_records(count: int, **fields: Any) -> list[int]:
    rows = [{"kind": Kind.EVENT, "event": "test.siem", "details": {"n": i}} for i in range(count)]
    for row in rows:
        row.update(fields)
    return [record.seq for record in append_many(rows)]


def all_seqs() -> list[int]:
    return list(AuditRecord.objects.order_by("seq").values_list("seq", flat=True))


def eventually(
    check: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(interval)


def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "hmac.key"
    path.write_text(SECRET + "\n")
    return str(path)


# Tests -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_http_sink_gets_every_record_once_in_order_signed_and_verifiable(
    http_receiver: HttpReceiver, tmp_path: Path
):
    add_http(
        "siem", http_receiver.url, "--hmac-secret-file", secret_file(tmp_path), "--batch-size", "7"
    )
    add_records(20)

    out, _ = run("forward")

    expected = all_seqs()
    assert http_receiver.seqs() == expected
    assert f"siem: sent {len(expected)}, cursor {expected[-1]}" in out
    previous_hash = None
    for post in http_receiver.posts:
        documents = post.documents
        assert 1 <= len(documents) <= 7
        assert post.headers["content-type"] == "application/x-ndjson"
        assert post.headers["x-audit-seq-range"] == f"{documents[0]['seq']}-{documents[-1]['seq']}"
        expected_signature = hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
        assert post.headers["x-audit-signature"] == f"sha256={expected_signature}"
        for document in documents:
            assert record_hash(document) == document["hash"]
            if previous_hash is not None:
                assert document["prev_hash"] == previous_hash
            previous_hash = document["hash"]
    sink = SiemSink.objects.get()
    assert (sink.cursor, sink.lag, sink.failures) == (expected[-1], 0, 0)

    out, _ = run("forward")
    assert "siem: sent 0" in out
    assert http_receiver.seqs() == expected


@pytest.mark.django_db
def test_unsigned_http_sink_sends_no_signature(http_receiver: HttpReceiver):
    add_http("siem", http_receiver.url)
    add_records(3)
    run("forward")
    assert http_receiver.seqs() == all_seqs()
    assert all("x-audit-signature" not in post.headers for post in http_receiver.posts)


@pytest.mark.django_db
@pytest.mark.parametrize("outage", ["down", "fail", "lose_ack"])
def test_http_receiver_outage_and_recovery_delivers_every_record(
    http_receiver: HttpReceiver, tmp_path: Path, outage: str
):
    add_http("siem", http_receiver.url, "--batch-size", "4")
    add_records(5)
    run("forward")
    delivered_before = set(all_seqs())

    if outage == "down":
        http_receiver.stop()
    else:
        http_receiver.mode = outage
    during = add_records(5)
    forward_fails()
    sink = SiemSink.objects.get(name="siem")
    assert sink.failures == 1
    assert sink.lag == 5
    assert sink.next_attempt_at - sink.last_error_at == timedelta(seconds=5)
    expected_error = {"down": "ConnectError", "fail": "HTTP 503", "lose_ack": "HTTP 500"}[outage]
    assert expected_error in sink.last_error
    listing, _ = run("list")
    assert re.search(rf"siem\s+http\s+\S+\s+yes\s+{sink.cursor}\s+5\s+.*{expected_error}", listing)

    during += add_records(3)
    forward_fails()
    sink.refresh_from_db()
    assert (sink.failures, sink.lag) == (2, 8)
    assert sink.next_attempt_at - sink.last_error_at == timedelta(seconds=10)

    if outage == "down":
        http_receiver.start()
    http_receiver.mode = "ok"
    run("forward")

    received = Counter(http_receiver.seqs())
    assert set(received) == set(all_seqs())
    duplicates = {seq for seq, count in received.items() if count > 1}
    if outage == "lose_ack":
        # The receiver kept batches it never acknowledged: they came again, and only they.
        assert duplicates and duplicates <= set(during)
    else:
        assert not duplicates
    assert not duplicates & delivered_before
    sink.refresh_from_db()
    assert (sink.failures, sink.lag, sink.next_attempt_at) == (0, 0, None)
    assert sink.last_success_at > sink.last_error_at


@pytest.mark.django_db
def test_scheduled_forwarding_waits_out_the_backoff_but_the_operator_does_not(
    http_receiver: HttpReceiver,
):
    add_http("siem", http_receiver.url)
    http_receiver.mode = "fail"
    add_records(3)
    forward_fails()
    http_receiver.mode = "ok"
    sink = SiemSink.objects.get()

    assert forward_to_sinks() == 0
    assert forward_to_sink(sink.pk) == 0
    assert http_receiver.posts == []

    run("forward")
    assert http_receiver.seqs() == all_seqs()


@pytest.mark.django_db
def test_syslog_tcp_outage_and_recovery_delivers_every_record_once(
    tcp_listener: SyslogListener,
):
    add_syslog("tcp", "tcp", tcp_listener.port, "--batch-size", "3")
    add_records(4)
    run("forward")
    eventually(lambda: tcp_listener.seqs() == all_seqs(), 5, "first records over TCP")

    tcp_listener.stop()
    add_records(5)
    forward_fails()
    sink = SiemSink.objects.get()
    assert sink.failures == 1 and sink.lag == 5
    assert f"tcp://127.0.0.1:{tcp_listener.port}" in sink.last_error

    tcp_listener.start()
    run("forward")
    eventually(lambda: len(tcp_listener.messages) == len(all_seqs()), 5, "all records over TCP")
    assert tcp_listener.seqs() == all_seqs()
    records = {r.seq: r for r in AuditRecord.objects.all()}
    for message in tcp_listener.parsed():
        record = records[message.seq]
        assert message.pri == 13 * 8 + 6
        assert message.app == "mcpgw" and message.msgid == record.kind
        assert datetime.fromisoformat(message.timestamp) == record.created_at
        assert message.timestamp.endswith("Z")
        assert message.hash == record.hash == message.document["hash"]
        assert message.document["seq"] == message.seq
        assert record_hash(message.document) == record.hash


@pytest.mark.django_db
def test_syslog_udp_sends_one_rfc5424_datagram_per_record(udp_listener: SyslogListener):
    add_syslog("udp", "udp", udp_listener.port)
    add_records(6)
    # Too large for one datagram: it goes without its result, and says so.
    (big,) = add_records(1, result={"text": "x" * 70_000})

    run("forward")

    expected = all_seqs()
    eventually(lambda: len(udp_listener.messages) == len(expected), 5, "one datagram per record")
    messages = {m.seq: m for m in udp_listener.parsed()}
    assert sorted(messages) == expected
    assert messages[big].document["truncated"] is True
    assert messages[big].document["result"] is None
    assert "truncated" not in messages[expected[0]].document
    assert SiemSink.objects.get().lag == 0


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_ship_the_same_sink_at_once(http_receiver: HttpReceiver):
    add_http("siem", http_receiver.url)
    add_records(5)
    http_receiver.gate.clear()
    outputs: list[str] = []

    def first_worker() -> None:
        try:
            outputs.append(run("forward")[0])
        finally:
            db.close()

    worker = threading.Thread(target=first_worker)
    worker.start()
    assert http_receiver.entered.wait(10)

    second, _ = run("forward")
    assert "siem: skipped" in second
    assert forward_to_sinks() == 0  # the scheduler does not even queue it

    http_receiver.gate.set()
    worker.join(30)
    assert "siem: sent 6" in outputs[0]
    assert len(http_receiver.posts) == 1
    assert http_receiver.seqs() == all_seqs()
    assert SiemSink.objects.get().claim_token is None


@pytest.mark.django_db(transaction=True)
def test_hmac_secret_is_never_stored_shown_or_logged(
    http_receiver: HttpReceiver, tmp_path: Path, alice, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    added = add_http("siem", http_receiver.url, "--hmac-secret-file", secret_file(tmp_path))
    assert "signed" in added
    http_receiver.mode = "fail"
    add_records(3)
    forward_fails()
    http_receiver.mode = "ok"
    forwarded, _ = run("forward")
    listing, _ = run("list")

    with db.cursor() as cursor:
        cursor.execute("SELECT * FROM audit_siemsink")
        sink_rows = repr(cursor.fetchall())
        cursor.execute("SELECT * FROM audit_auditrecord")
        audit_rows = repr(cursor.fetchall())
    client = Client()
    client.force_login(alice)
    page = client.get("/audit/sinks/").content.decode()

    assert "siem" in sink_rows and "siem_sink.created" in audit_rows
    for text in (sink_rows, audit_rows, page, added, forwarded, listing, caplog.text):
        assert SECRET not in text
    assert SiemSink.objects.get().hmac_secret() == SECRET
    signature = hmac.new(SECRET.encode(), http_receiver.posts[0].body, hashlib.sha256)
    assert http_receiver.posts[0].headers["x-audit-signature"] == f"sha256={signature.hexdigest()}"


@pytest.mark.django_db(transaction=True)
def test_sinks_page_shows_lag_and_last_error_to_admins_and_auditors_only(
    http_receiver: HttpReceiver, alice
):
    add_http("splunk-hec", http_receiver.url)
    add_syslog("rsyslog", "tcp", free_port())
    add_records(4)
    http_receiver.mode = "fail"
    forward_fails()

    client = Client()
    client.force_login(alice)
    page = client.get("/audit/sinks/").content.decode()
    head = all_seqs()[-1]
    assert "splunk-hec" in page and http_receiver.url in page
    assert "rsyslog" in page and "tcp://127.0.0.1:" in page
    assert "HTTP 503" in page and "Connection refused" in page
    assert re.search(rf"<td>0</td>\s*<td>{head}</td>", page)  # cursor and lag

    users = get_user_model().objects
    auditor = users.create_user("dora", password="pw-dora-1")
    auditor.groups.add(Group.objects.get_or_create(name="auditor")[0])
    charlie = users.create_user("charlie", password="pw-charlie-1")
    client.force_login(auditor)
    assert client.get("/audit/sinks/").status_code == 200
    client.force_login(charlie)
    assert client.get("/audit/sinks/").status_code == 403
    client.logout()
    response = client.get("/audit/sinks/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "ftp://siem.example/in"], "Enter a valid URL"),
        (["--syslog", "tcp", "--host", "127.0.0.1"], "needs a host and a port"),
        (["--syslog", "udp", "--host", "127.0.0.1", "--port", "70000"], "1-65535"),
        (["--http", "http://siem.example/in", "--batch-size", "0"], "batch size"),
        (["--http", "http://siem.example/in", "--host", "x"], "for --syslog"),
        (
            ["--syslog", "tcp", "--host", "h", "--port", "1", "--hmac-secret-file", "k"],
            "for --http",
        ),
        (["--http", "http://siem.example/in", "--hmac-secret-file", "/nonexistent"], "No such"),
    ],
)
def test_add_refuses_incomplete_or_conflicting_targets(args: list[str], message: str):
    with pytest.raises(CommandError, match=message):
        run("add", "--name", "siem", *args)
    assert not SiemSink.objects.exists()


@pytest.mark.django_db
def test_sink_names_are_unique_and_changes_are_audited():
    run("add", "--name", "siem", "--http", "http://127.0.0.1:9/in")
    with pytest.raises(CommandError, match="already exists"):
        run("add", "--name", "siem", "--syslog", "udp", "--host", "127.0.0.1", "--port", "514")
    run("remove", "--name", "siem")
    assert not SiemSink.objects.exists()
    with pytest.raises(CommandError, match="no sink named"):
        run("remove", "--name", "siem")
    events = list(AuditRecord.objects.order_by("seq").values_list("event", "details"))
    assert [event for event, _ in events] == ["siem_sink.created", "siem_sink.removed"]
    assert events[0][1]["target"] == "http://127.0.0.1:9/in"


# A real Celery worker --------------------------------------------------------------------


@pytest.fixture
def celery_worker(transactional_db: None, tmp_path: Path) -> Iterator[Path]:
    """A worker process on the test database and the test Redis; yields its log file."""
    if not settings.REDIS_URL or not _database_url():
        pytest.skip("the worker test needs Postgres and Redis (DATABASE_URL, REDIS_URL)")
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "GATEWAY_ENCRYPTION_KEY": ",".join(settings.GATEWAY_ENCRYPTION_KEYS),
        "DATA_DIR": str(tmp_path),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mcpgw", "worker", "--pool", "solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
             "--hostname", f"siem-test-{os.getpid()}@%h"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield log_path
    finally:
        stop(process)


@pytest.mark.django_db(transaction=True)
def test_real_celery_worker_forwards_through_an_outage(
    http_receiver: HttpReceiver,
    tcp_listener: SyslogListener,
    tmp_path: Path,
    celery_worker: Path,
):
    add_http(
        "http", http_receiver.url, "--hmac-secret-file", secret_file(tmp_path), "--batch-size", "10"
    )
    add_syslog("tcp", "tcp", tcp_listener.port)
    add_records(25)

    def worker_log() -> str:
        return celery_worker.read_text()[-3000:]

    forward_to_sinks.delay()

    def delivered() -> bool:
        expected = all_seqs()
        return sorted(set(http_receiver.seqs())) == expected and tcp_listener.seqs() == expected

    eventually(delivered, 60, lambda: f"worker delivery; log: {worker_log()}")
    assert len(http_receiver.seqs()) == len(all_seqs())

    http_receiver.stop()
    during = add_records(5)
    forward_to_sinks.delay()
    eventually(lambda: SiemSink.objects.get(name="http").failures >= 1, 30, "failure recorded")
    assert SiemSink.objects.get(name="http").lag >= 5
    eventually(lambda: tcp_listener.seqs() == all_seqs(), 30, "TCP sink unaffected")

    http_receiver.start()

    def recovered() -> bool:
        # Each tick the beat would send; the sink itself waits out its backoff.
        forward_to_sinks.delay()
        return sorted(set(http_receiver.seqs())) == all_seqs()

    eventually(recovered, 60, lambda: f"recovery; log: {worker_log()}", interval=0.5)
    received = Counter(http_receiver.seqs())
    assert {seq for seq, count in received.items() if count > 1} <= set(during)
    assert Counter(tcp_listener.seqs()) == Counter(all_seqs())
    assert SECRET not in celery_worker.read_text()
