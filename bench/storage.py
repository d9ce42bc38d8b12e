"""Upload/download throughput and peak memory of ftkit's Storage for a large file against an S3
endpoint (moto server on loopback), beside a plain s3fs put/get of the same file, in one run.
Each measurement runs in a fresh process so its peak RSS is its own.

    python bench/storage.py [--mb 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
mode, endpoint, src, dest = sys.argv[2:6]
start = time.perf_counter()
if mode.startswith("ftkit"):
    from ftkit.storage import Storage
    st = Storage("s3://bench/ftkit", endpoint_url=endpoint)
    if mode == "ftkit-put":
        st.put_file(src, "big.bin")
    else:
        st.get_file(("big.bin",), dest)
else:
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    if mode == "s3fs-put":
        fs.put_file(src, "bench/plain/big.bin")
    else:
        fs.get_file("bench/plain/big.bin", dest)
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, endpoint: str, src: Path, dest: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), mode, endpoint, str(src), str(dest)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp(prefix="ftkit-storage-bench-"))
    try:
        time.sleep(2)
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        src = work / "big.bin"
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.mb):
                f.write(block)
        rows = {}
        for mode in ("s3fs-put", "ftkit-put", "s3fs-get", "ftkit-get"):
            rows[mode] = run(mode, endpoint, src, work / f"{mode}.out")
            (work / f"{mode}.out").unlink(missing_ok=True)
        print(f"{args.mb} MB file against moto server on loopback (each in a fresh process):")
        print(f"  {'':10} {'MB/s':>8} {'peak MB':>9}")
        for mode, r in rows.items():
            print(f"  {mode:10} {args.mb / r['seconds']:8.1f} {r['peak_mb']:9.0f}")
        figures = {}
        for op in ("put", "get"):
            f, p = rows[f"ftkit-{op}"], rows[f"s3fs-{op}"]
            print(
                f"  {op}: throughput ftkit/s3fs {p['seconds'] / f['seconds']:.2f}, peak memory ftkit/s3fs "
                f"{f['peak_mb'] / p['peak_mb']:.2f}"
            )
            figures[f"S3 {op} of {args.mb} MB (ftkit / plain s3fs)"] = (
                f"throughput {p['seconds'] / f['seconds']:.2f}, peak memory {f['peak_mb']:.0f} / {p['peak_mb']:.0f} MB"
            )
        print("RESULT " + json.dumps(figures))
    finally:
        server.terminate()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
