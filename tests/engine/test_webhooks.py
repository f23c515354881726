"""Webhook sink against a real local HTTP receiver and a real redis-server (never mocks)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import redis

from engine.records import TriggerOut, trigger_lines
from engine.testing import free_port
from engine.webhooks import (
    WebhookConfigError,
    WebhookSink,
    WebhookTarget,
    backoff_delay,
    load_webhook_secrets,
    parse_retry_after,
    parse_webhook_specs,
    read_secrets_file,
    secret_env_name,
    sign,
    split_webhook_env,
    verify_signature,
)

SECRETS = {"email": b"email-secret-1", "sms": b"sms-secret-2"}

# A response plan: (status, extra headers, body), or "drop" (close the connection without an
# answer), or ("hang", seconds) (answer 503 only after the client has timed out).
Plan = Any


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops concurrent connects (1 s SYN retransmits)
    daemon_threads = True


class Receiver:
    """A threaded HTTP/1.1 webhook receiver on 127.0.0.1.

    `respond(id, attempt_index)` decides each answer (attempt_index is 0 for the first attempt of an
    id). It records every attempt's time per id, the 2xx-answered deliveries, and the largest number
    of requests it was processing at once.
    """

    def __init__(self, respond: Callable[[str, int], Plan] | None = None, *, fail_first: int = 0,
                 handle_s: float = 0.0, port: int | None = None) -> None:
        self.respond = respond or (lambda _id, n: (503, {}, b"busy") if n < fail_first else (200, {}, b"ok"))
        self.handle_s = handle_s
        self.port = port or 0
        self.lock = threading.Lock()
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.delivered: list[tuple[str, dict[str, str], bytes]] = []
        self.active = 0
        self.max_active = 0
        self.server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    n = len(receiver.attempts[key])
                    receiver.attempts[key].append(time.monotonic())
                    receiver.active += 1
                    receiver.max_active = max(receiver.max_active, receiver.active)
                try:
                    if receiver.handle_s:
                        time.sleep(receiver.handle_s)
                    plan = receiver.respond(key, n)
                    if isinstance(plan, tuple) and plan[0] == "hang":
                        time.sleep(plan[1])
                        plan = (503, {}, b"too late")
                finally:
                    with receiver.lock:  # before answering: the client cannot start its next request earlier
                        receiver.active -= 1
                if plan == "drop":
                    self.close_connection = True
                    return
                status, headers, payload = plan
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.delivered.append((key, dict(self.headers.items()), body))
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout)
                    self.close_connection = True

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def delivered_ids(self) -> list[str]:
        return [key for key, _, _ in self.delivered]


def make_items(n: int, channels: tuple[str, ...] = ("email", "sms")) -> list[tuple[str, TriggerOut]]:
    items = []
    for i in range(n):
        for out in trigger_lines("cart_abandoned", f"u-{i}", 1_790_000_000_000 + i, channels, {"engagement": 1.5 * i},
                                 orjson.dumps({"messageId": f"m-{i}", "event": "Product Added", "properties": {}}),
                                 1_790_000_001_000):
            items.append((f"u-{i}", out))
    return items


def record_id(out: TriggerOut) -> str:
    return orjson.loads(out.line)["id"]


def targets_for(url: str, channels: tuple[str, ...] = ("email", "sms")) -> dict[str, WebhookTarget]:
    return {ch: WebhookTarget(url, SECRETS[ch]) for ch in channels}


def deliver(sink: WebhookSink, *batches: list[Any]) -> None:
    part = sink.build("webhooks", 0, 1)
    try:
        for batch in batches:
            part.write_batch(batch)
    finally:
        part.close()


def failed_entries(url: str, prefix: str = "hl:") -> list[dict[bytes, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        return [fields for _, fields in client.xrange(f"{prefix}webhooks:failed")]
    finally:
        client.close()


def fast_sink(targets: dict[str, WebhookTarget], redis_url: str | None, **kwargs: Any) -> WebhookSink:
    options: dict[str, Any] = {"timeout_s": 2.0, "max_attempts": 5, "base_delay_s": 0.01, "max_delay_s": 0.05}
    options.update(kwargs)
    return WebhookSink(targets, redis_url, **options)


# -- signatures ----------------------------------------------------------------------------


def test_signature_scheme_and_verification() -> None:
    body = b'{"id":"abc","rule":"r"}'
    header = sign(b"s3cret", 1_790_000_000, body)
    import hashlib
    import hmac

    assert header == "sha256=" + hmac.new(b"s3cret", b"1790000000." + body, hashlib.sha256).hexdigest()
    assert verify_signature(b"s3cret", "1790000000", body, header)
    assert verify_signature("s3cret", 1_790_000_000, body, header.encode())
    assert not verify_signature(b"wrong", "1790000000", body, header)
    assert not verify_signature(b"s3cret", "1790000001", body, header)
    assert not verify_signature(b"s3cret", "1790000000", body + b" ", header)
    assert not verify_signature(b"s3cret", "1790000000", body, header[:-1])
    assert not verify_signature(b"s3cret", "1790000000", body, "md5=" + header[7:])
    assert not verify_signature(b"s3cret", "not-a-time", body, header)
    assert not verify_signature(b"s3cret", None, body, header)
    assert not verify_signature(b"s3cret", "1790000000", body, None)
    assert verify_signature(b"s3cret", "1790000000", body, header, tolerance_s=300, now=1_790_000_100)
    assert not verify_signature(b"s3cret", "1790000000", body, header, tolerance_s=300, now=1_790_000_301)


def test_target_repr_hides_the_secret() -> None:
    assert "email-secret" not in repr(WebhookTarget("http://x/", b"email-secret-1"))


# -- configuration -------------------------------------------------------------------------


def test_parse_webhook_specs(tmp_path) -> None:
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text("# webhook secrets\n\nsms = from-file\npush-eu=push-secret\n")
    environ = {"HALFLIFE_WEBHOOK_SECRET_EMAIL": "from-env", "HALFLIFE_WEBHOOK_SECRET_SMS": "env-loses", "PATH": "/bin"}
    secrets = load_webhook_secrets(str(secrets_file), environ)
    assert "PATH" not in secrets
    specs = split_webhook_env(" email=https://a.example/hook , sms=http://127.0.0.1:9000/s?x=1,,") + ["push-eu=https://p/h"]
    targets = parse_webhook_specs(specs, secrets)
    assert targets == {
        "email": WebhookTarget("https://a.example/hook", b"from-env"),
        "sms": WebhookTarget("http://127.0.0.1:9000/s?x=1", b"from-file"),
        "push-eu": WebhookTarget("https://p/h", b"push-secret"),
    }
    assert secret_env_name("push-eu") == "HALFLIFE_WEBHOOK_SECRET_PUSH_EU"
    assert parse_webhook_specs([], {}) == {}
    assert parse_webhook_specs(["x=http://h/"], {"HALFLIFE_WEBHOOK_SECRET_X": "k"})["x"].secret == b"k"


@pytest.mark.parametrize(("specs", "secrets", "message"), [
    (["email"], {"email": "k"}, "expected CHANNEL=URL"),
    (["=https://h/"], {"email": "k"}, "expected CHANNEL=URL"),
    (["email="], {"email": "k"}, "expected CHANNEL=URL"),
    (["my channel=https://h/"], {"my channel": "k"}, "no spaces"),
    (["email=ftp://h/"], {"email": "k"}, "http:// or https://"),
    (["email=h.example/hook"], {"email": "k"}, "http:// or https://"),
    (["email=http:///path"], {"email": "k"}, "with a host"),
    (["email=http://h:notaport/"], {"email": "k"}, "invalid port"),
    (["email=https://a/", "email=https://b/"], {"email": "k"}, "configured twice"),
    (["email=https://a/"], {}, "HALFLIFE_WEBHOOK_SECRET_EMAIL"),
    (["email=https://a/"], {"HALFLIFE_WEBHOOK_SECRET_EMAIL": ""}, "has no secret"),
    (["email=https://a/", "sms=https://b/"], {"email": "k"}, "'sms' has no secret"),
])
def test_parse_webhook_specs_errors(specs: list[str], secrets: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookConfigError, match=message):
        parse_webhook_specs(specs, secrets)


@pytest.mark.parametrize("channels", [
    ["push-eu", "push_eu"],
    ["push-eu", "push_eu", "PUSH.EU"],
    ["Email", "email"],
    ["sms", "push.eu", "PUSH-EU"],
])
def test_channels_sharing_a_secret_variable_are_refused(channels: list[str]) -> None:
    # Each of these sets of channels maps to one HALFLIFE_WEBHOOK_SECRET_* name: they would sign with
    # one secret. Refused, naming the channels and the variable, whether the variable is set or not.
    variable = secret_env_name(channels[-1])
    specs = [f"{ch}=https://h.example/{i}" for i, ch in enumerate(channels)]
    environ = {secret_env_name(ch): f"secret-{ch}" for ch in channels}
    for secrets in (environ, {}):
        with pytest.raises(WebhookConfigError) as info:
            parse_webhook_specs(specs, secrets)
        message = str(info.value)
        colliding = [ch for ch in channels if secret_env_name(ch) == variable]
        assert variable in message and all(repr(ch) in message for ch in colliding), message
        assert "sms" not in message and "secret-" not in message, message  # no bystander, no secret value


def test_channels_sharing_a_variable_with_their_own_file_entries_are_accepted(tmp_path) -> None:
    # An explicit per-channel entry (a secrets file line) disambiguates: each channel signs with its own.
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text("push-eu=secret-a\npush_eu=secret-b\n")
    secrets = load_webhook_secrets(str(secrets_file), {"HALFLIFE_WEBHOOK_SECRET_PUSH_EU": "from-env"})
    targets = parse_webhook_specs(["push-eu=https://h/a", "push_eu=https://h/b"], secrets)
    assert (targets["push-eu"].secret, targets["push_eu"].secret) == (b"secret-a", b"secret-b")
    # Only one of them with its own entry: the other would read the shared variable. Refused.
    with pytest.raises(WebhookConfigError, match="HALFLIFE_WEBHOOK_SECRET_PUSH_EU"):
        parse_webhook_specs(["push-eu=https://h/a", "push_eu=https://h/b", "PUSH.EU=https://h/c"], secrets)
    # Names that differ after the mapping do not collide.
    distinct = {"HALFLIFE_WEBHOOK_SECRET_PUSH_EU": "a", "HALFLIFE_WEBHOOK_SECRET_PUSH_EU2": "b"}
    assert set(parse_webhook_specs(["push-eu=https://h/a", "push-eu2=https://h/b"], distinct)) == {"push-eu", "push-eu2"}


def test_secrets_file_errors(tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("email=ok\njust-a-secret\n")
    with pytest.raises(WebhookConfigError, match=r"bad:2: expected CHANNEL=SECRET"):
        read_secrets_file(str(bad))
    twice = tmp_path / "twice"
    twice.write_text("email=a\nemail=b\n")
    with pytest.raises(WebhookConfigError, match="twice:2: channel 'email' has a secret already"):
        read_secrets_file(str(twice))


def test_sink_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        WebhookSink({}, None, max_attempts=0)
    with pytest.raises(ValueError):
        WebhookSink({}, None, max_in_flight=0)


# -- retry policy ----------------------------------------------------------------------------


def test_backoff_delay_is_full_jitter_under_a_growing_cap() -> None:
    import random

    rng = random.Random(7)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (200, 1.0)]:
        delays = [backoff_delay(attempt, 0.1, 1.0, rng) for _ in range(2000)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.9 * cap and min(delays) < 0.1 * cap  # spread over the whole range


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


# -- delivery ----------------------------------------------------------------------------------


def test_flaky_receiver_gets_every_trigger_once_signed(redis_url: str) -> None:
    items = make_items(30, ("email", "sms", "crm"))  # crm has no webhook: not this sink's business
    wanted = [(key, out) for key, out in items if out.channel != "crm"]
    with Receiver(fail_first=2) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url)
        deliver(sink, items[:40], items[40:])
    ids = receiver.delivered_ids()
    assert sorted(ids) == sorted(record_id(out) for _, out in wanted)
    assert len(set(ids)) == len(ids) == 60
    bodies = {record_id(out): out for _, out in wanted}
    for key, headers, body in receiver.delivered:
        out = bodies[key]
        assert body == out.line  # the record bytes, unchanged
        assert headers["Content-Type"] == "application/json"
        ts, sig = headers["X-Halflife-Timestamp"], headers["X-Halflife-Signature"]
        assert abs(int(ts) - time.time()) < 60
        assert verify_signature(SECRETS[out.channel], ts, body, sig, tolerance_s=300)
        other = "sms" if out.channel == "email" else "email"
        assert not verify_signature(SECRETS[other], ts, body, sig)
        assert not verify_signature(b"wrong", ts, body, sig)
    assert all(len(times) == 3 for times in receiver.attempts.values())
    assert sink.stats() == {"delivered": 60, "retried": 120, "failed": 0, "ignored": 30, "redis_errors": 0}
    assert failed_entries(redis_url) == []


@pytest.mark.parametrize("failure", ["drop", "hang"])
def test_dropped_and_timed_out_requests_are_retried(redis_url: str, failure: str) -> None:
    plan = "drop" if failure == "drop" else ("hang", 0.6)
    items = make_items(6, ("email",))
    with Receiver(lambda _id, n: plan if n == 0 else (200, {}, b"")) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url, timeout_s=0.3)
        deliver(sink, items)
    assert sorted(receiver.delivered_ids()) == sorted(record_id(out) for _, out in items)
    assert all(len(times) == 2 for times in receiver.attempts.values())
    assert (sink.delivered, sink.retried, sink.failed) == (6, 6, 0)
    assert failed_entries(redis_url) == []


def test_attempt_limit_then_failed_stream(redis_url: str) -> None:
    items = make_items(4, ("sms",))
    with Receiver(fail_first=100) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url, max_attempts=3)
        deliver(sink, items)
    assert receiver.delivered == []
    assert sorted(receiver.attempts) == sorted(record_id(out) for _, out in items)
    assert all(len(times) == 3 for times in receiver.attempts.values())
    entries = failed_entries(redis_url)
    assert sorted(e[b"data"] for e in entries) == sorted(out.line for _, out in items)
    assert all(e == {b"data": e[b"data"], b"channel": b"sms", b"error": b"HTTP 503: busy", b"attempts": b"3"} for e in entries)
    assert (sink.delivered, sink.retried, sink.failed) == (0, 8, 4)


def test_permanent_4xx_is_not_retried(redis_url: str) -> None:
    items = make_items(1, ("email",))
    ((_, out),) = items
    with Receiver(lambda _id, n: (400, {"Content-Type": "text/plain"}, b"no such\n  customer")) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url, prefix="shop1:")
        deliver(sink, items)
    assert {k: len(v) for k, v in receiver.attempts.items()} == {record_id(out): 1}
    assert failed_entries(redis_url, "shop1:") == [
        {b"data": out.line, b"channel": b"email", b"error": b"HTTP 400: no such customer", b"attempts": b"1"}
    ]
    assert failed_entries(redis_url) == []
    assert (sink.delivered, sink.retried, sink.failed) == (0, 0, 1)


def test_408_and_429_are_retried_and_redirects_are_not_followed(redis_url: str) -> None:
    statuses = {0: (408, {}, b""), 1: (429, {}, b"")}
    with Receiver(lambda _id, n: statuses.get(n, (200, {}, b""))) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url)
        deliver(sink, make_items(2, ("email",)))
    assert len(receiver.delivered) == 2 and sink.retried == 4
    with Receiver(lambda _id, n: (302, {"Location": "http://127.0.0.1:1/"}, b"")) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url)
        deliver(sink, make_items(1, ("email",)))
    assert [e[b"error"] for e in failed_entries(redis_url)] == [b"HTTP 302"]
    assert sink.retried == 0


def test_unreachable_url_ends_in_failed_stream(redis_url: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    items = make_items(2, ("email",))
    sink = fast_sink(targets_for(url), redis_url, max_attempts=4)
    deliver(sink, items)
    entries = failed_entries(redis_url)
    assert sorted(e[b"data"] for e in entries) == sorted(out.line for _, out in items)
    for e in entries:
        assert set(e) == {b"data", b"channel", b"error", b"attempts"}
        assert e[b"channel"] == b"email" and e[b"attempts"] == b"4"
        assert b"connect" in e[b"error"].lower()
    assert (sink.delivered, sink.retried, sink.failed) == (0, 6, 2)


def test_without_redis_failures_go_to_stderr(capsys) -> None:
    items = make_items(1, ("email",))
    ((_, out),) = items
    with Receiver(lambda _id, n: (422, {}, b"unprocessable")) as receiver:
        sink = fast_sink(targets_for(receiver.url), None)
        deliver(sink, items)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines == [{"stream": "hl:webhooks:failed", "channel": "email", "error": "HTTP 422: unprocessable",
                      "attempts": 1, "data": orjson.loads(out.line)}]


def test_failure_record_waits_for_redis(tmp_path) -> None:
    from engine.testing import RedisServer

    server = RedisServer(str(tmp_path))  # not started yet: Redis is down
    items = make_items(2, ("email",))
    with Receiver(lambda _id, n: (400, {}, b"")) as receiver:
        sink = fast_sink(targets_for(receiver.url), server.url)
        worker = threading.Thread(target=deliver, args=(sink, items))
        worker.start()
        try:
            time.sleep(0.6)
            assert worker.is_alive()  # write_batch blocks until the failure is recorded
            server.start()
            worker.join(timeout=20)
            assert not worker.is_alive()
            entries = failed_entries(server.url)
        finally:
            worker.join(timeout=20)
            server.stop()
    assert sorted(e[b"data"] for e in entries) == sorted(out.line for _, out in items)
    assert sink.failed == 2 and sink.redis_errors > 0


def test_max_in_flight_is_respected(redis_url: str) -> None:
    for limit in (1, 4):
        with Receiver(handle_s=0.03) as receiver:
            sink = fast_sink(targets_for(receiver.url), redis_url, max_in_flight=limit)
            deliver(sink, make_items(12, ("email", "sms")))
        assert len(receiver.delivered) == 24
        assert receiver.max_active == limit


def test_backoff_delays_grow(redis_url: str) -> None:
    items = make_items(30, ("email",))
    with Receiver(fail_first=4) as receiver:
        # A base of 0.1 s keeps the doubling visible above a loaded machine's few tens of ms per retry.
        sink = fast_sink(targets_for(receiver.url), redis_url, base_delay_s=0.1, max_delay_s=10.0, max_attempts=5)
        deliver(sink, items)
    assert len(receiver.delivered) == 30
    gaps = [[b - a for a, b in zip(times, times[1:], strict=False)] for times in receiver.attempts.values()]
    means = [statistics.mean(g[k] for g in gaps) for k in range(4)]  # expected about 0.05, 0.1, 0.2, 0.4
    assert means == sorted(means)
    assert means[3] > 2.5 * means[0]
    for g in gaps:
        for k, gap in enumerate(g):
            assert gap <= 0.1 * 2**k + 0.5  # under the cap, with room for a slow machine


def test_retry_after_is_honoured_and_capped(redis_url: str) -> None:
    items = make_items(2, ("email",))
    with Receiver(lambda _id, n: (429, {"Retry-After": "1"}, b"") if n == 0 else (200, {}, b"")) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url, base_delay_s=0.001, max_delay_s=0.3)
        deliver(sink, items)
    assert len(receiver.delivered) == 2
    for first, second in receiver.attempts.values():
        assert 0.29 <= second - first < 0.95  # waited for Retry-After, but no longer than max_delay_s


def test_receiver_down_for_a_while_then_back(redis_url: str) -> None:
    port = free_port()
    items = make_items(20, ("email", "sms"))
    receiver = Receiver(port=port)
    sink = fast_sink(targets_for(receiver.url), redis_url, max_attempts=40, base_delay_s=0.02, max_delay_s=0.1)
    worker = threading.Thread(target=deliver, args=(sink, items))
    worker.start()
    try:
        time.sleep(0.7)
        assert worker.is_alive()
        receiver.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
    finally:
        worker.join(timeout=30)
        receiver.stop()
    ids = receiver.delivered_ids()
    assert sorted(ids) == sorted(record_id(out) for _, out in items)
    assert len(set(ids)) == len(ids)
    assert sink.delivered == 40 and sink.failed == 0 and sink.retried >= 40
    assert failed_entries(redis_url) == []


def test_in_a_bytewax_dataflow(redis_url: str) -> None:
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    items = make_items(10, ("email",))
    with Receiver(fail_first=1) as receiver:
        sink = fast_sink(targets_for(receiver.url), redis_url)
        flow = Dataflow("webhooks")
        op.output("out", op.input("in", flow, TestingSource(items, batch_size=3)), sink)
        run_main(flow)
    assert sorted(receiver.delivered_ids()) == sorted(record_id(out) for _, out in items)
    assert sink.delivered == 10
    assert all(not p._thread.is_alive() for p in sink.partitions)  # close() stopped the loop
