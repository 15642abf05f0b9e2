"""A real S3-compatible server for the object-store tests: moto's standalone server, started as
its own process on 127.0.0.1 and stopped by the fixture that started it.

Clients reach it the way they reach any S3 endpoint: botocore (and so s3fs, zarr and pyarrow
through fsspec) reads ``AWS_ENDPOINT_URL`` and the credentials from the environment, which
:func:`s3_environment` sets for the test and for the subprocesses it starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import stop_process

BUCKET = "lscindex-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """Run ``python -m moto.server`` on a free local port; yield its endpoint URL."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        stop_process(proc, timeout=10)


def s3_environment(endpoint: str) -> dict[str, str]:
    """What botocore needs to use ``endpoint`` with moto's fixed test credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def make_bucket(name: str = BUCKET) -> None:
    """Create ``name`` on the endpoint the environment names (s3fs: a bucket is a top folder)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists(name):
        fs.mkdir(name)


def environment_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
