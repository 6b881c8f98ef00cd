#!/usr/bin/env python3
"""
How much slower is a stored file served from S3 than from local disk?  Two
in-process servers on the reactor, one with ``+files`` on disk (sendfile),
one with ``--files s3://...`` on moto's S3 server (streamed through the
upstream client), each holding the same 50 MB file; ``curl`` downloads it
from each in turn, alternating, and the ratio of the median times is
printed.  moto is not a real S3 (Python, on loopback, keeping objects in
memory): the figure says what the relay costs over a fast store, not what
a real bucket does.  Hand-run only::

    /work/venv/bin/python benchmarks/bench_s3files.py [--size-mb 50] [--rounds 5]

Everything binds to 127.0.0.1; moto and the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto did not start")


def store_blob(files, data: bytes) -> str:
    """
    (In a thread.)  Store C{data} in a file store; return its digest.
    """
    writer = files.writer()
    writer.write(data)
    return writer.commit()


def link_cached(context, sha256: str, size: int, filename: str) -> str:
    """
    Make the stored blob a cached file of the mirror root/pypi, as a first
    download would; return its URL path.
    """
    from devpi_tx.model import releases

    path = releases.relpath("root/pypi", sha256, filename)
    entry = {"rel": "releasefile", "project": "big", "version": "1.0", "url": "http://127.0.0.1:9/big.tgz"}
    entry.update(sha256=sha256, size=size, last_modified=time.time(), mirror=True, stored=True)
    with context.storage.transaction() as tx:
        tx.set(releases.file_key(path), entry)
        tx.set(releases.blob_key(sha256), 1)
    return "/" + path


def curl_seconds(url: str, expected: str) -> float:
    out = subprocess.run(["curl", "-s", "-f", url], check=True, capture_output=True).stdout
    if hashlib.sha256(out).hexdigest() != expected:
        raise SystemExit(f"{url}: wrong bytes")
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", os.devnull, url], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    moto, endpoint = start_moto()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    from twisted.internet import defer, task, threads
    from twisted.internet.endpoints import serverFromString

    from devpi_tx.config import ServerConfig
    from devpi_tx.service import build_context, make_site
    from devpi_tx.storage.s3 import make_client

    make_client().create_bucket(Bucket="bench")
    data = os.urandom(args.size_mb * 1024 * 1024)
    expected = hashlib.sha256(data).hexdigest()
    tmp = tempfile.mkdtemp(prefix="bench-s3files-")
    results: dict[str, list[float]] = {"local": [], "s3": []}

    async def run(reactor_) -> None:
        urls = {}
        contexts = []
        for name, files in (("local", None), ("s3", "s3://bench/devpi")):
            config = ServerConfig(
                serverdir=os.path.join(tmp, name), mirror_url="http://127.0.0.1:9/simple/", files=files
            )
            context = build_context(config, reactor=reactor_)
            contexts.append(context)
            sha256 = await threads.deferToThread(store_blob, context.files, data)
            path = link_cached(context, sha256, len(data), "big-1.0.tar.gz")
            port = await serverFromString(reactor_, "tcp:0:interface=127.0.0.1").listen(make_site(context))
            urls[name] = f"http://127.0.0.1:{port.getHost().port}{path}"
        for _ in range(args.rounds):
            for name, url in urls.items():
                results[name].append(await threads.deferToThread(curl_seconds, url, expected))
        for context in contexts:
            context.close()

    try:
        task.react(lambda r: defer.ensureDeferred(run(r)))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        moto.terminate()
        moto.wait(10)
    local, s3 = statistics.median(results["local"]), statistics.median(results["s3"])
    mb = args.size_mb
    print(
        f"{mb} MB file, median of {args.rounds}: local {local * 1000:.0f} ms ({mb / local:.0f} MB/s), ",
        end="",
    )
    print(f"S3 on moto {s3 * 1000:.0f} ms ({mb / s3:.0f} MB/s); S3/local time ratio {s3 / local:.1f}")


if __name__ == "__main__":
    main()
    # The servers' worker threads (sendfile, botocore's pool) are not
    # daemons and are not stopped by closing the contexts: leave at once.
    sys.stdout.flush()
    os._exit(0)
