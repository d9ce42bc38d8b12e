"""Upload/download throughput and peak memory of ftkit's Storage for a large file against an S3
endpoint -- a moto server on loopback, not a real S3: no network, no real service's limits --
beside a plain s3fs put/get of the same file, in one run. Each measurement runs in a fresh process
so its peak RSS is its own. ftkit's put goes in 16 MiB multipart parts (the part count is read
back from the object's ETag); an upload whose source fails half-way is aborted, and what it left
is listed: no object, no unfinished multipart upload.

    python bench/storage.py [--mb 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
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
extra = {}
if mode.startswith("ftkit"):
    import boto3
    from ftkit.storage import Storage
    st = Storage("s3://bench/ftkit", endpoint_url=endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    if mode == "ftkit-put":
        st.put_file(src, "big.bin")
        etag = s3.head_object(Bucket="bench", Key="ftkit/big.bin")["ETag"].strip('"')
        extra["parts"] = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
    elif mode == "ftkit-abort":
        import io
        size = os.path.getsize(src)
        class FailsHalfWay(io.RawIOBase):
            def __init__(self):
                self.inner, self.sent = open(src, "rb"), 0
            def readable(self):
                return True
            def readinto(self, buffer):
                if self.sent >= size // 2:
                    raise OSError("source failed half-way")
                n = self.inner.readinto(buffer)
                self.sent += n
                return n
        try:
            st._copy_up(FailsHalfWay(), st.path("broken.bin"), size)
        except OSError:
            pass
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bench").get("Contents", [])]
        extra["visible"] = "ftkit/broken.bin" in keys
        extra["unfinished"] = len(s3.list_multipart_uploads(Bucket="bench").get("Uploads", []))
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
print(json.dumps({"seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
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
    parser.add_argument("--repeat", type=int, default=3)
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
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # interleaved: drift on the machine hits both alike
            for mode in ("s3fs-put", "ftkit-put", "s3fs-get", "ftkit-get", "ftkit-abort"):
                runs.setdefault(mode, []).append(run(mode, endpoint, src, work / f"{mode}.out"))
                (work / f"{mode}.out").unlink(missing_ok=True)
        print(
            f"{args.mb} MB file against a moto server on loopback (each in a fresh process), "
            f"median (min-max) of {args.repeat}:"
        )
        print(f"  {'':10} {'MB/s':>22} {'peak MB':>9}")
        for mode, found in runs.items():
            if mode != "ftkit-abort":
                speeds = [args.mb / r["seconds"] for r in found]
                print(
                    f"  {mode:10} {statistics.median(speeds):8.1f} ({min(speeds):.1f}-{max(speeds):.1f})"
                    f" {statistics.median(r['peak_mb'] for r in found):9.0f}"
                )
        parts = sorted({r["parts"] for r in runs["ftkit-put"]})
        aborts = runs["ftkit-abort"]
        visible = sum(r["visible"] for r in aborts)
        unfinished = sum(r["unfinished"] for r in aborts)
        print(f"  ftkit's put went up in {'/'.join(map(str, parts))} multipart parts")
        print(
            f"  {len(aborts)} uploads failing half-way, aborted: objects visible {visible}, "
            f"unfinished multipart uploads left {unfinished}"
        )
        figures = {
            f"S3 multipart put of {args.mb} MB, and a put whose source fails half-way (moto server "
            f"on loopback), N={args.repeat}": (
                f"whole put: {'/'.join(map(str, parts))} parts of 16 MiB; failed puts aborted: "
                f"objects visible {visible}, unfinished uploads {unfinished}"
            )
        }
        for op in ("put", "get"):
            ratios = [
                p["seconds"] / f["seconds"] for f, p in zip(runs[f"ftkit-{op}"], runs[f"s3fs-{op}"])
            ]
            mine = statistics.median(r["peak_mb"] for r in runs[f"ftkit-{op}"])
            theirs = statistics.median(r["peak_mb"] for r in runs[f"s3fs-{op}"])
            print(
                f"  {op}: throughput ftkit/s3fs {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}), peak memory {mine:.0f} / {theirs:.0f} MB"
            )
            figures[
                f"S3 {op} of {args.mb} MB, ftkit / plain s3fs (moto server on loopback), "
                f"N={args.repeat}"
            ] = (
                f"throughput {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}), "
                f"peak memory {mine:.0f} / {theirs:.0f} MB"
            )
        print("RESULT " + json.dumps(figures))
    finally:
        server.terminate()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
