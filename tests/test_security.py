"""Security properties, each against real servers.

* JSON only: a pickled task message on the broker is refused and never unpickled;
* namespaces (tenants) sharing one Redis and one bucket/directory are isolated in
  both tiers;
* ``rediss://``: the hot tier and the worker's URL-built client work over TLS with
  a private CA;
* Redis ACL: a user restricted to its namespace's keys runs every HotStore/Threads
  operation, and is refused (nothing written) outside its namespace;
* no secret (Redis password, AWS secret key) in a real worker's INFO log or in the
  CLI's output.

Server-side encryption settings are checked in ``test_cold_conformance.py``
(``test_sse_settings_are_passed_to_s3``, SSE-S3 and SSE-KMS) and for the worker's
settings here (``test_worker_settings_encrypt_archives_with_sse_kms``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kombu.exceptions import ContentDisallowed

from storage import HotStore, HotStoreAccessDenied, ThreadNotFound
from storage.cold import ColdStore, FileColdStore, S3ColdStore, object_key
from storage.embedded import (
    EmbeddedRedis,
)
from storage.tiered import Threads
from tasks.local.processes import WorkerProcess, client_app
from tasks.stores import build_threads, hot_redis_from_settings
from tests.conftest import msg, redis_contents, s3_client_for
from tests.servers import MotoServer

REPO = Path(__file__).resolve().parent.parent
RESULT_TIMEOUT = 60


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def settings_for(redis_url: str, cold_url: str, **extra: Any) -> dict[str, Any]:
    """An ``agent_threads`` settings dict as celeryconfig builds it."""
    return {
        "redis_url": redis_url,
        "cold_url": cold_url,
        "namespace": "at",
        "ttl_seconds": 3600,
        **extra,
    }


# -- a. JSON only: a pickled message is refused, never executed --------------------------


class RunsCodeWhenUnpickled:
    """A pickle payload that, if anyone unpickles it, creates ``marker`` and sets the
    Redis key ``key`` (any code could run the same way)."""

    def __init__(self, marker: Path, port: int, key: str) -> None:
        self.code = (
            "import pathlib, redis\n"
            f"pathlib.Path({str(marker)!r}).write_text('executed')\n"
            f"redis.Redis(port={port}).set({key!r}, 'executed')\n"
        )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def pickled_task_body(payload: object) -> bytes:
    """A task-protocol-2 body ``(args, kwargs, embed)`` serialised with pickle."""
    return pickle.dumps(((payload,), {}, EMBED))


def publish_raw(app: Celery, task: str, body: bytes, content_type: str) -> str:
    """Put a hand-made task-protocol-2 message on the threads queue, as any client of
    the broker could; returns its task id."""
    task_id = f"raw-{uuid.uuid4().hex}"
    queue = app.amqp.queues[app.conf.agent_threads["queue"]]
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "someone@elsewhere",
        "ignore_result": False,
    }
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers=headers,
            content_type=content_type,
            content_encoding="binary" if content_type.endswith("serialize") else "utf-8",
            correlation_id=task_id,
            reply_to="",
            delivery_mode=2,
        )
    return task_id


def test_pickled_task_message_is_rejected_and_never_executed(
    celery_stack: Celery,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = celery_stack
    hot = redis_server.client()  # db 0, the worker's hot tier
    broker = redis_server.client(db=1)
    # Control 1: the payload really runs code when unpickled.
    control = pickled_task_body(
        RunsCodeWhenUnpickled(tmp_path / "control", redis_server.port, "control")
    )
    pickle.loads(control)  # noqa: S301 - our own payload, unpickled on purpose
    assert (tmp_path / "control").read_text() == "executed"
    assert hot.get("control") == b"executed"
    hot.delete("control")
    # Control 2: the same hand-made message, JSON-encoded, reaches the worker and runs.
    json_body = json.dumps([[], {"thread_id": f"raw-json-{uuid.uuid4().hex}"}, EMBED]).encode()
    json_id = publish_raw(app, "threads.create", json_body, "application/json")
    assert app.AsyncResult(json_id).get(timeout=RESULT_TIMEOUT)["status"] == "created"

    marker, key = tmp_path / "pwned", "pwned-by-pickle"
    pickled = pickled_task_body(RunsCodeWhenUnpickled(marker, redis_server.port, key))
    with caplog.at_level(logging.ERROR):
        task_id = publish_raw(app, "threads.create", pickled, "application/x-python-serialize")
        # A normal task on the same queue, sent after it: the consumer takes the
        # messages of one queue in order, so once this one ran, the pickled one was
        # dealt with (and any unpickling would have run its code by then).
        after = app.signature("threads.create", kwargs={"thread_id": f"after-{task_id}"})
        assert after.apply_async().get(timeout=RESULT_TIMEOUT)["status"] == "created"

    assert not marker.exists(), "the pickled payload was executed by the worker"
    assert hot.get(key) is None, "the pickled payload was executed by the worker"
    assert app.AsyncResult(task_id).state == "PENDING"  # no task ran, no result stored
    # the worker saw it and said why it refused it (its log quotes the raw body)
    refused = [r for r in caplog.records if key in r.getMessage()]
    assert refused, "the worker did not report refusing the message"
    assert refused[0].exc_info is not None
    assert isinstance(refused[0].exc_info[1], ContentDisallowed)
    assert "untrusted content of type pickle" in str(refused[0].exc_info[1])
    # refused for good: neither waiting in the queue nor held for redelivery
    queue = app.conf.agent_threads["queue"]
    assert all(task_id.encode() not in raw for raw in broker.lrange(queue, 0, -1))
    assert all(task_id.encode() not in raw for raw in broker.hvals("unacked"))
    hot.close()
    broker.close()


# -- b. namespaces (tenants) are isolated in both tiers ---------------------------------


@pytest.fixture(params=["s3", "file"])
def tenant_cold(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str | None], ColdStore]:
    """Cold stores over ONE bucket (or directory) and ONE prefix, per namespace."""
    if request.param == "s3":
        client, bucket = request.getfixturevalue("s3_bucket")
        return lambda ns: S3ColdStore(client, bucket, "threads", namespace=ns)
    return lambda ns: FileColdStore(tmp_path / "cold", "threads", namespace=ns)


def stored_object_keys(store: ColdStore) -> list[str]:
    """The archives' (manifests') keys; their parts sit under ``<key>.parts/`` beside them."""
    if isinstance(store, S3ColdStore):
        listed = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
        return sorted(item["Key"] for item in listed if ".parts/" not in item["Key"])
    assert isinstance(store, FileColdStore)
    return sorted(
        str(p.relative_to(store.root)) for p in store.root.rglob("*.json.gz") if p.is_file()
    )


def test_namespaces_sharing_redis_and_bucket_are_isolated(
    redis_client: redis.Redis, tenant_cold: Callable[[str | None], ColdStore]
) -> None:
    a = Threads(HotStore(redis_client, namespace="tenant-a"), tenant_cold("tenant-a"))
    b = Threads(HotStore(redis_client, namespace="tenant-b"), tenant_cold("tenant-b"))
    a.open("shared", "new", state={"tenant": "a"})
    a.append("shared", [msg("a1", "secret of tenant a")])
    a.open("only-a", "new", state={"tenant": "a"})
    a.append("only-a", [msg("a1"), msg("a2")])
    assert a.flush("shared").evicted  # a's "shared" lives only in the cold tier now

    # the same thread id is free in the other namespace, in both tiers
    assert b.open("shared", "new", state={"tenant": "b"}) == "created"
    assert b.append("shared", [msg("b1")]).appended_ids == ("b1",)
    assert b.load("shared") == [msg("b1")]
    assert b.load_state("shared") == {"tenant": "b"}

    def a_is_intact() -> None:
        assert a.load("only-a") == [msg("a1"), msg("a2")]
        assert a.load_state("only-a") == {"tenant": "a"}

    # b can neither read, write, fork from, flush, hydrate nor delete a's threads
    for call in (
        lambda: b.load("only-a"),
        lambda: b.load_state("only-a"),
        lambda: b.append("only-a", [msg("b-injected")]),
        lambda: b.save_state("only-a", {"tenant": "b"}),
        lambda: b.truncate_from("only-a", "a1"),
        lambda: b.replace_all("only-a", [msg("b-injected")]),
        lambda: b.acquire_lease("only-a", "b-turn", 60_000),
        lambda: b.open("only-a", "continue"),
        lambda: b.open("b-fork", "fork", source="only-a"),
    ):
        with pytest.raises(ThreadNotFound):
            call()
    assert b.flush("only-a").status == "absent"
    assert b.hydrate("only-a").status == "absent"
    assert b.delete("only-a") is False
    a_is_intact()
    a.flush("only-a")  # and the same once a's thread is cold only
    assert b.hydrate("only-a").status == "absent"
    assert b.flush("only-a").status == "absent"
    assert b.delete("only-a") is False
    assert not b.hot.exists("b-fork")
    a_is_intact()

    # both archive the same id side by side, under namespaced object keys
    assert b.flush("shared").status == "archived"
    keys = stored_object_keys(a.cold)
    assert len(keys) == 3
    assert sum(k.startswith("threads/tenant-a/") for k in keys) == 2
    b_key = object_key("threads/tenant-b", "shared")
    assert [k for k in keys if k.startswith("threads/tenant-b/")] == [b_key]
    assert object_key("threads/tenant-a", "shared") in keys
    # a store without a namespace on the same prefix (single-tenant layout) sees neither
    assert tenant_cold(None).read("shared") is None

    # deleting b's "shared" leaves a's "shared" (cold) untouched, and vice versa
    assert b.delete("shared") is True
    assert a.hydrate("shared").status == "restored"
    assert a.load("shared") == [msg("a1", "secret of tenant a")]
    with pytest.raises(ThreadNotFound):
        b.load("shared")
    # and every hot key is in its namespace
    for key in redis_client.keys("*"):
        assert key.startswith((b"tenant-a:", b"tenant-b:")), key
    assert not [k for k in redis_client.keys("*") if k.startswith(b"tenant-b:{only-a}")]


def test_worker_settings_put_each_namespace_under_its_own_prefix(tmp_path: Path) -> None:
    """``build_threads`` (the worker's storage) keys a non-default namespace's archives
    under ``prefix/<namespace>/``; the default namespace keeps ``prefix/<shard>/``."""
    with EmbeddedRedis() as server:
        url = f"file://{tmp_path / 'cold'}"
        default = build_threads(settings_for(server.url, url))
        tenant = build_threads(settings_for(server.url, url, namespace="tenant-a"))
        try:
            assert isinstance(default.cold, FileColdStore)
            assert isinstance(tenant.cold, FileColdStore)
            assert default.cold.prefix == "threads"
            assert tenant.cold.prefix == "threads/tenant-a"
            for store in (default, tenant):
                store.open("t1", "new", state={"ns": store.hot.namespace})
                assert store.flush("t1").status == "archived"
            assert default.hydrate("t1").status == "restored"
            assert tenant.hydrate("t1").status == "restored"
            assert default.load_state("t1") == {"ns": "at"}
            assert tenant.load_state("t1") == {"ns": "tenant-a"}
        finally:
            default.hot.redis.close()
            tenant.hot.redis.close()


# -- c. TLS: rediss:// with a private CA -----------------------------------------------


def write_tls_material(folder: Path) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("agent-threads test CA"))
        .issuer_name(name("agent-threads test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["key"].chmod(0o600)
    return paths


class TlsUnsupported(RuntimeError):
    """The redis-server binary was built without TLS."""


class TlsRedis(EmbeddedRedis):
    """redis-server with TLS only (``--port 0``: no plaintext listener)."""

    def __init__(self, folder: Path, tls: dict[str, Path]) -> None:
        super().__init__(data_dir=folder)
        self.tls = tls
        self.extra_args = [
            "--port", "0",  # overrides the plaintext port given first
            "--tls-port", str(self.port),
            "--tls-cert-file", str(tls["cert"]),
            "--tls-key-file", str(tls["key"]),
            "--tls-ca-cert-file", str(tls["ca"]),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, ssl_ca_certs=str(self.tls["ca"]), **kwargs)

    def start(self) -> TlsRedis:
        try:
            super().start()
        except RuntimeError as exc:
            if "Bad directive" in str(exc) or "tls" in str(exc).lower():
                raise TlsUnsupported(str(exc)[-500:]) from exc
            raise
        return self


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    folder = tmp_path_factory.mktemp("tls")
    server = TlsRedis(folder, write_tls_material(folder))
    try:
        server.start()
    except TlsUnsupported as exc:
        pytest.skip(f"{server.binary} was built without TLS support: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_hot_tier_works_over_rediss_with_a_private_ca(tls_redis: TlsRedis, tmp_path: Path) -> None:
    client = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_redis.tls["ca"]))
    try:
        threads = Threads(HotStore(client, namespace="tls"), FileColdStore(tmp_path / "cold"))
        threads.open("t1", "new", state={"over": "tls"})
        threads.append("t1", [msg("m1"), msg("m2")])
        threads.hot.fork("t1", "t2", "m1")
        assert threads.flush("t1").evicted
        assert threads.load("t1") == [msg("m1"), msg("m2")]  # hydrated over TLS
        assert threads.load("t2") == [msg("m1")]
        assert threads.load_state("t2") == {"over": "tls"}
        assert client.connection_pool.connection_class is redis.SSLConnection
    finally:
        client.close()


def test_tls_port_refuses_plaintext_and_unverified_servers(tls_redis: TlsRedis) -> None:
    quick: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1, "retry": None}
    plain = redis.Redis(port=tls_redis.port, **quick)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()  # TLS only: no plaintext listener at all
    plain.close()
    unverified = redis.Redis.from_url(tls_redis.url, **quick)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate verify failed"):
        unverified.ping()  # the system CAs do not know the private CA
    unverified.close()


def test_worker_client_builder_accepts_rediss_url_with_ca_option(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """``AGENT_THREADS_REDIS_URL=rediss://host:port/0?ssl_ca_certs=/path/ca.pem`` is all
    a worker needs: redis-py reads TLS options from the URL's query."""
    url = f"{tls_redis.url}?ssl_ca_certs={tls_redis.tls['ca']}&ssl_cert_reqs=required"
    client = hot_redis_from_settings({"redis_url": url})
    try:
        assert client.ping()
    finally:
        client.close()
    store = build_threads(settings_for(url, f"file://{tmp_path / 'cold'}"))
    try:
        store.open("w1", "new")
        store.append("w1", [msg("m1")])
        assert store.flush("w1").evicted
        assert store.load("w1") == [msg("m1")]
    finally:
        store.hot.redis.close()


def test_worker_process_reads_the_rediss_url_from_the_environment(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    url = f"{tls_redis.url}?ssl_ca_certs={tls_redis.tls['ca']}"
    env = {
        **os.environ,
        "AGENT_THREADS_REDIS_URL": url,
        "AGENT_THREADS_COLD_URL": f"file://{tmp_path / 'cold'}",
    }
    code = (
        "from tasks.app import threads\n"
        "store = threads()\n"
        "store.open('env-tls', 'new')\n"
        "print(store.append('env-tls', [{'id': 'm1', 'body': 1}]).appended_ids)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "('m1',)"
    check = tls_redis.client()
    assert check.exists("at:{env-tls}:meta") == 1
    check.close()


# -- d. Redis ACL: a user confined to its namespace ----------------------------------------

ACL_PASSWORD = f"acl-{uuid.uuid4().hex}"
HOT_STORE_ACL = (
    "on resetkeys ~{ns}:* resetchannels -@all "
    "+evalsha +script|load +multi +exec +exists +lrange +del "
    "+zadd +zrem +zrangebyscore +zrevrange +zrange +zcard +zscore "
    "+get +set +hexists +hget +hmget +hgetall +hkeys +hset +hdel +hincrby "
    "+llen +rpush +ltrim +pexpire +persist +pttl +rename +time"
)
"""The ACL we recommend for one namespace's HotStore (also the flush/hydrate halves of
``Threads``): its keys only (``<ns>:*``, which includes the activity index
``<ns>:activity``), no pub/sub channels, and only the commands agent-threads sends
(EVALSHA and SCRIPT LOAD for the Lua scripts, MULTI/EXEC/EXISTS/LRANGE for ``load``,
the activity ZSET commands, SET NX PX of the idle-flush lock, DEL of restore staging
keys) plus the commands the scripts call (Redis checks those against the caller's ACL too)::

    ACL SETUSER <user> on ><password> resetkeys ~<ns>:* resetchannels -@all
        +evalsha +script|load +multi +exec +exists +lrange +del
        +zadd +zrem +zrangebyscore +zrevrange +zrange +zcard +zscore
        +get +set +hexists +hget +hmget +hgetall +hkeys +hset +hdel +hincrby
        +llen +rpush +ltrim +pexpire +persist +pttl +rename +time

Commands that take no key (KEYS, SCAN, RANDOMKEY, FLUSHDB, ...) would let a tenant
see or destroy other tenants' keys whatever its key pattern: the rule refuses them
(``+@all -@dangerous`` would still allow SCAN and RANDOMKEY).
"""


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[EmbeddedRedis]:
    """A dedicated redis-server: ACL users are server-wide and outlive FLUSHDB."""
    with EmbeddedRedis() as server:
        admin = server.client()
        admin.execute_command(
            "ACL",
            "SETUSER",
            "tenant-a",
            f">{ACL_PASSWORD}",
            *HOT_STORE_ACL.format(ns="tenant-a").split(),
        )
        admin.close()
        yield server


@pytest.fixture
def acl_client(acl_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    admin = acl_redis.client()
    admin.flushdb()
    admin.close()
    client = acl_redis.client(username="tenant-a", password=ACL_PASSWORD)
    try:
        yield client
    finally:
        client.close()


def test_acl_user_confined_to_its_namespace_runs_every_operation(
    acl_redis: EmbeddedRedis, acl_client: redis.Redis, tmp_path: Path
) -> None:
    admin = acl_redis.client()
    admin.script_flush()  # the tenant's own SCRIPT LOAD must be allowed
    hot = HotStore(acl_client, namespace="tenant-a")
    threads = Threads(hot, FileColdStore(tmp_path / "cold", namespace="tenant-a"), restore_chunk=2)

    assert threads.open("t1", "new", state={"step": 1}) == "created"
    assert hot.create("t1") is False
    assert threads.append("t1", [msg(f"m{i}") for i in range(5)]).appended_ids[-1] == "m4"
    assert [m["id"] for m in threads.load("t1", 1, 2)] == ["m1", "m2"]
    assert [m["id"] for m in hot.tail("t1", 1)] == ["m4"]
    assert hot.info("t1").length == hot.length("t1") == 5
    assert hot.fork("t1", "t2", up_to_id="m2").created
    assert threads.truncate_from("t2", "m1").removed_ids == ("m1", "m2")
    assert threads.replace_all("t2", [msg("summary")]).changed
    assert threads.save_state("t1", {"step": 2}) > 0
    assert threads.load_state("t1") == {"step": 2}
    assert threads.acquire_lease("t1", "turn-1", 60_000).owner == "turn-1"
    assert threads.append("t1", [msg("m5")], owner="turn-1").appended_ids == ("m5",)
    assert threads.flush("t1", release_owner="turn-1").evicted
    assert threads.hydrate("t1").status == "restored"  # 6 records: staged in 3 chunks
    assert [m["id"] for m in threads.load("t1")] == [f"m{i}" for i in range(6)]
    admin.zadd(hot.layout.activity_of("t2"), {"t2": 1})  # idle for decades
    admin.hset(hot.keys("t2").meta, "updated", 1)
    assert hot.idle_threads(1000)[0][0] == "t2"
    assert hot.active_threads()
    assert hot.activity_count() == 2
    with pytest.raises(HotStoreAccessDenied, match=r"(?i)scan"):
        hot.reconcile_activity()  # the reconciler's user needs +scan (docs/reliability.md)
    report = threads.flush_idle(0)
    assert "t2" in report.evicted
    assert threads.open("t2", "continue") == "restored"
    assert threads.delete("t2") is True
    assert threads.release_lease("t1", "nobody") is False
    assert not admin.keys("tenant-a:*staging*")
    assert all(key.startswith(b"tenant-a:") for key in admin.keys("*"))
    admin.close()


Attempt = Callable[[HotStore, Threads, redis.Redis], object]
OUTSIDE_THE_NAMESPACE: dict[str, Attempt] = {
    "create": lambda hot, _, __: hot.create("new"),
    "append": lambda hot, _, __: hot.append("t1", [msg("a-injected")]),
    "load": lambda hot, _, __: hot.load("t1"),
    "exists": lambda hot, _, __: hot.exists("t1"),
    "info": lambda hot, _, __: hot.info("t1"),
    "load-state": lambda hot, _, __: hot.load_state("t1"),
    "save-state": lambda hot, _, __: hot.save_state("t1", {"owner": "a"}),
    "truncate": lambda hot, _, __: hot.truncate_from("t1", "b1"),
    "replace": lambda hot, _, __: hot.replace_all("t1", []),
    "fork": lambda hot, _, __: hot.fork("t1", "copy"),
    "acquire-lease": lambda hot, _, __: hot.acquire_lease("t1", "a-turn", 60_000),
    "delete": lambda hot, _, __: hot.delete("t1"),
    "mark-active": lambda hot, _, __: hot.mark_active("t1"),
    "idle-threads": lambda hot, _, __: hot.idle_threads(0),
    "flush": lambda _, threads, __: threads.flush("t1"),
    "hydrate": lambda _, threads, __: threads.hydrate("t1"),
    "tiered-delete": lambda _, threads, __: threads.delete("t1"),
    "tiered-append": lambda _, threads, __: threads.append("t1", [msg("a-injected")]),
    # raw commands: a key of the other namespace, and key-less commands that would
    # reveal or destroy every tenant's keys whatever the key pattern
    "raw-get": lambda _, __, client: client.get("tenant-b:{t1}:state"),
    "raw-eval": lambda _, __, client: client.eval(
        "return redis.call('GET', KEYS[1])", 1, "tenant-b:{t1}:state"
    ),
    "keys": lambda _, __, client: client.keys("*"),
    "scan": lambda _, __, client: client.scan(0),
    "randomkey": lambda _, __, client: client.randomkey(),
    "flushdb": lambda _, __, client: client.flushdb(),
}
RAW_ATTEMPTS = [
    OUTSIDE_THE_NAMESPACE[name]
    for name in ("raw-get", "raw-eval", "keys", "scan", "randomkey", "flushdb")
]


@pytest.mark.parametrize("attempt", OUTSIDE_THE_NAMESPACE.values(), ids=OUTSIDE_THE_NAMESPACE)
def test_acl_user_is_refused_outside_its_namespace_and_writes_nothing(
    acl_redis: EmbeddedRedis, acl_client: redis.Redis, tmp_path: Path, attempt: Attempt
) -> None:
    """The tenant-a user's client used with namespace "tenant-b": every call fails
    (NOPERM) and nothing changes in Redis. Through the stores the refusal is the
    permanent ``HotStoreAccessDenied`` naming the namespace (Celery does not retry
    it); raw commands get redis-py's ``NoPermissionError``."""
    admin = acl_redis.client()
    victim = HotStore(admin, namespace="tenant-b")
    victim.create("t1", state={"owner": "b"})
    victim.append("t1", [msg("b1")])
    HotStore(acl_client, namespace="tenant-a").create("mine")
    before = redis_contents(admin)

    wrong = HotStore(acl_client, namespace="tenant-b")
    wrong_threads = Threads(wrong, FileColdStore(tmp_path / "cold", namespace="tenant-b"))
    with pytest.raises(
        (HotStoreAccessDenied, redis.exceptions.NoPermissionError), match=r"(?i)no permissions"
    ) as refused:
        attempt(wrong, wrong_threads, acl_client)
    if attempt not in RAW_ATTEMPTS:
        assert isinstance(refused.value, HotStoreAccessDenied)
        assert not refused.value.transient
        assert "'tenant-b'" in str(refused.value)

    assert redis_contents(admin) == before
    assert victim.load("t1") == [msg("b1")]
    admin.close()


def test_wrong_password_is_a_permanent_typed_error(acl_redis: EmbeddedRedis) -> None:
    """redis-py raises a wrong password as a ConnectionError; retrying it eight times
    would only delay the real message, so the store makes it permanent."""
    client = acl_redis.client(username="tenant-a", password="not-the-password")
    hot = HotStore(client, namespace="tenant-a")
    with pytest.raises(HotStoreAccessDenied, match="tenant-a") as refused:
        hot.create("t1")
    assert not refused.value.transient
    assert "not-the-password" not in str(refused.value)
    client.close()


# -- f. no secret in a real worker's log or in the CLI's output ---------------------------------


class PasswordRedis(EmbeddedRedis):
    """redis-server with ``requirepass``."""

    def __init__(self, password: str) -> None:
        super().__init__(extra_args=["--requirepass", password])
        self.password = password

    def client(self, **kwargs: object) -> redis.Redis:
        return super().client(password=self.password, **kwargs)


@pytest.mark.slow
def test_no_secret_in_worker_info_log_or_cli_output(s3_server: MotoServer, tmp_path: Path) -> None:
    redis_password = f"rpw-{uuid.uuid4().hex}"
    aws_secret = f"aws-{uuid.uuid4().hex}"
    bucket = f"secrets-{uuid.uuid4().hex[:12]}"
    s3_client_for(s3_server.url).create_bucket(Bucket=bucket)
    queues = ["secret-threads", "secret-default"]
    log_path = tmp_path / "worker.log"
    with PasswordRedis(redis_password) as server:
        base = f"redis://:{redis_password}@127.0.0.1:{server.port}"
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_COLD_URL": f"s3://{bucket}/threads",
            "AGENT_THREADS_S3_ENDPOINT_URL": s3_server.url,
            "AGENT_THREADS_QUEUE": queues[0],
            "AGENT_THREADS_DEFAULT_QUEUE": queues[1],
            "AWS_ACCESS_KEY_ID": "AKIAAGENTTHREADSTEST",
            "AWS_SECRET_ACCESS_KEY": aws_secret,
            "COLUMNS": "200",
        }
        client = client_app("secret-client", env, queues)
        worker = WorkerProcess(
            env, queues, name="secrets", log_path=str(log_path), cwd=str(REPO), loglevel="INFO"
        )
        worker.start()
        try:
            worker.wait_ready(client)

            def run(name: str, **kwargs: Any) -> Any:
                sent = client.signature(name, kwargs=kwargs).apply_async()
                return sent.get(timeout=RESULT_TIMEOUT)

            assert run("threads.create", thread_id="s1", state={"a": 1})["status"] == "created"
            assert run("threads.append", thread_id="s1", messages=[msg("m1")])["appended_ids"]
            assert run("threads.flush", thread_id="s1")["evicted"] is True
            assert run("threads.load", thread_id="s1")["messages"] == [msg("m1")]
            with pytest.raises(ThreadNotFound):
                run("threads.append", thread_id="missing", messages=[msg("m1")])
        finally:
            worker.stop()
            client.close()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tasks.cli", *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )

        outputs = [
            cli("inspect", "s1"),
            cli("inspect", "--json", "s1"),
            cli("inspect", "missing"),
            cli("ls"),
            cli("stats"),
            cli("flush-idle", "--older-than", "0"),
            cli(
                "--redis-url",
                f"redis://:wrong-{redis_password}@127.0.0.1:{server.port}/0",
                "inspect",
                "s1",
            ),
        ]

    log = log_path.read_text(errors="replace")
    assert "threads.flush" in log  # INFO lines were written
    assert "succeeded" in log
    assert "ThreadNotFound" in log  # and the failing task was logged
    cli_text = "".join(done.stdout + done.stderr for done in outputs)
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert "m1" in outputs[0].stdout
    assert outputs[2].returncode != 0
    for secret in (redis_password, aws_secret):
        assert secret not in log, "a secret was written to the worker log"
        assert secret not in cli_text, "a secret was printed by the CLI"


# -- e. server-side encryption of archives, from the worker's settings ------------------------


KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/agent-threads-security-test"


def test_worker_settings_encrypt_archives_with_sse_kms(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    s3_server: MotoServer,
    s3_bucket: tuple[Any, str],
) -> None:
    """``AGENT_THREADS_S3_SSE=aws:kms`` and ``AGENT_THREADS_S3_SSE_KMS_KEY_ID`` reach
    every archive the worker writes, the first one and every compare-and-swap replace."""
    client, bucket = s3_bucket
    store = build_threads(
        settings_for(
            redis_server.url,
            f"s3://{bucket}/threads",
            s3_endpoint_url=s3_server.url,
            s3_sse="aws:kms",
            s3_sse_kms_key_id=KMS_KEY_ARN,
        )
    )
    try:
        assert isinstance(store.cold, S3ColdStore)
        store.open("enc", "new")
        store.append("enc", [msg("m1")])
        for round_ in range(2):  # create-only write, then an If-Match replace
            assert store.flush("enc").status == "archived"
            head = client.head_object(Bucket=bucket, Key=store.cold.key("enc"))
            assert head["ServerSideEncryption"] == "aws:kms", round_
            assert head["SSEKMSKeyId"] == KMS_KEY_ARN, round_
            store.append("enc", [msg(f"m{round_ + 2}")])
        assert [m["id"] for m in store.load("enc")] == ["m1", "m2", "m3"]
    finally:
        store.hot.redis.close()
