"""Run as a subprocess by the fault tests: flush one thread and die by SIGKILL right
after the snapshot upload, before the hot tier records it or evicts (a worker crash
at the worst moment).

    python -m tests.crash_flush REDIS_URL COLD_SPEC THREAD_ID
    COLD_SPEC: s3|<endpoint>|<bucket>   or   file|<root>
"""

from __future__ import annotations

import os
import signal
import sys

import redis

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.tiered import Threads
from tests.conftest import s3_client_for


def cold_from_spec(spec: str) -> ColdStore:
    kind, *rest = spec.split("|")
    if kind == "s3":
        endpoint, bucket = rest
        return S3ColdStore(s3_client_for(endpoint), bucket)
    return FileColdStore(rest[0])


def main() -> None:
    redis_url, spec, thread_id = sys.argv[1:4]
    cold = cold_from_spec(spec)
    real_write = cold.write_bytes

    def write_then_die(tid: str, data: bytes, if_match: str | None) -> str:
        real_write(tid, data, if_match)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    cold.write_bytes = write_then_die  # type: ignore[method-assign]
    Threads(HotStore(redis.Redis.from_url(redis_url)), cold).flush(thread_id)


if __name__ == "__main__":
    main()
