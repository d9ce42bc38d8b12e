"""Soak: N jobs through 2 workers while faults are injected at random (seeded) moments, counting
executions, not log lines. Each attempt whose training runs to its end leaves a marker in storage
(runs/<job>/attempts/<n>.trained); every job must end completed with exactly one.

Faults, each of them real:
- worker:  a worker that is running a job is SIGKILLed (a supervisor starts a new one), at any
           moment of the job, only mid-training (``--worker-kill-during training``) or at the end
           of training (``end``: from its last step on, while the last checkpoint, the marker, the
           samples and the upload are written); a list (``training,end``) takes turns;
- kernel:  the notebook kernel of a job in mid-training is SIGKILLed, as the out-of-memory killer would;
- redis:   redis-server (``--appendonly yes --appendfsync everysec``) is SIGKILLed and restarted on
           the same folder;
- storage: S3 (a moto server behind a TCP proxy) becomes unreachable while a job uploads: the
           proxy stops listening and resets its connections for a while, moto keeps its state.

Jobs are submitted while the faults happen (a client retries with an idempotency key, as a user
would), each with attempts enough for every planned kill to strike it (a job that uses up its
``max_attempts`` fails, naming them: by design, not a loss). lost: the record vanished or the job did not end completed; stuck: not final by the
deadline; duplicated: more than one marker.

    python bench/soak.py [--jobs 12] [--worker-kills 2] [--kernel-kills 2] [--redis-kills 2]
                         [--outages 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import DATA, free_port, tiny_model, wait_until, workdir

FINAL = ("completed", "failed", "cancelled")


class Redis:
    """A redis-server with the README's persistence, which the soak kills and restarts."""

    def __init__(self, work: Path):
        self.port, self.dir, self.proc = free_port(), work / "redis", None
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--dir", str(self.dir), "--save", ""]
            + ["--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL,
        )
        import redis

        wait_until(lambda: _ping(redis, self.url), 30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _ping(redis, url) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


class Moto:
    """moto in server mode: a real S3 HTTP endpoint on loopback. Never restarted (its state lives
    in memory); outages are made by the proxy in front of it."""

    def __init__(self):
        self.port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, 60)

    def _up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False


class Proxy:
    """A TCP proxy: while stopped nothing listens on its port (connections are refused) and the
    connections it carried are reset, as when a network path or a load balancer goes away."""

    def __init__(self, target_port: int):
        self.port, self.target = free_port(), target_port
        self.server: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            _close(server)
        with self.lock:
            conns, self.conns = self.conns, set()
        for conn in conns:
            try:  # reset, not a clean close: the client sees the outage at once
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:  # its pump closed it meanwhile
                continue
            _close(conn)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.server is not server:  # stopped meanwhile
                    _close(client)
                    _close(upstream)
                    continue
                self.conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns -= {src, dst}
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept or recv
    except OSError:
        pass
    sock.close()


class Soak:
    def __init__(self, args):
        self.args, self.rng = args, random.Random(args.seed)
        self.work = workdir()
        self.redis = Redis(self.work)
        self.moto = Moto()
        self.proxy = Proxy(self.moto.port)
        self.workers: list[subprocess.Popen] = []
        self.jobs: list[str] = []
        self.faults = {"worker": 0, "kernel": 0, "redis": 0, "storage": 0}
        self.started = time.monotonic()
        self.submitted = threading.Event()

    def say(self, line: str) -> None:
        print(f"  {time.monotonic() - self.started:6.1f} s  {line}", flush=True)

    # -- set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        from ftkit.client import Client
        from ftkit.config import Settings

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "soak-key")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "soak-secret")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self.redis.start()
        self.proxy.start()
        import boto3

        endpoint = f"http://127.0.0.1:{self.moto.port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="soak"
        )
        self.model = tiny_model(self.work)
        self.settings = Settings.from_env(
            {},
            redis_url=self.redis.url,
            storage="s3://soak/ftkit",
            s3_endpoint_url=f"http://127.0.0.1:{self.proxy.port}",
            scratch_dir=str(self.work / "scratch"),
            allowed_model_dirs=(str(self.work),),
            heartbeat_seconds=0.5,
            worker_grace_seconds=4.0,
        )
        self.client = Client(self.settings)
        self.dataset = self.client.upload_dataset(DATA)
        self.workers = [self.start_worker(), self.start_worker()]

    def start_worker(self) -> subprocess.Popen:
        n = len(list(self.work.glob("worker*.log")))
        scratch = self.work / f"worker{n}"
        scratch.mkdir()
        env = {**os.environ, **self.settings.to_env(), "FTKIT_SCRATCH_DIR": str(scratch)}
        return subprocess.Popen(
            [sys.executable, "-m", "ftkit.cli", "worker"],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=open(self.work / f"worker{n}.log", "wb"),
            stderr=subprocess.STDOUT,
        )

    # -- a user who keeps trying ---------------------------------------------------------------
    def patiently(self, fn, what: str, timeout: float = 300):
        """What a user does through an outage: try again, the same request, until it answers."""
        from ftkit.errors import FtkitError

        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn()
            except FtkitError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what}: {exc}") from exc
                time.sleep(0.5)

    def submit_all(self) -> None:
        for n in range(self.args.jobs):
            if n >= 2:  # two at once, the rest while the faults happen
                time.sleep(self.rng.uniform(0, self.args.submit_gap))
            key = f"soak-{self.args.seed}-{n}"
            job = self.patiently(
                lambda key=key: self.client.submit(
                    self.dataset,
                    base_model=str(self.model),
                    max_steps=self.args.steps,
                    batch_size=4,
                    gradient_accumulation_steps=2,
                    max_seq_length=256,
                    save_steps=10,
                    # every planned kill may strike the same job: none may use up its attempts
                    max_attempts=1 + self.args.worker_kills + self.args.kernel_kills,
                    idempotency_key=key,
                ),
                f"submit job {n}",
            )
            self.jobs.append(job.id)
        self.submitted.set()

    def records(self) -> list[dict]:
        return self.patiently(lambda: [self.client.store.get(j) for j in list(self.jobs)], "read")

    def all_final(self) -> bool:
        from ftkit.errors import FtkitError

        try:
            return self.submitted.is_set() and all(r["status"] in FINAL for r in self.records())
        except (FtkitError, TimeoutError):
            return False

    # -- faults --------------------------------------------------------------------------------
    def when(self, condition, what: str):
        """Wait for a fault's moment; None when every job ended first (the fault is not injected)."""
        from ftkit.errors import FtkitError

        deadline = time.monotonic() + self.args.deadline
        while time.monotonic() < deadline and not self.all_final():
            try:
                found = condition()
            except FtkitError:
                found = None
            if found:
                return found
            time.sleep(0.1)
        self.say(f"no moment for {what}: skipped")
        return None

    def busy_worker(self, during: str):
        def at_the_moment(record: dict) -> bool:
            step = record.get("current_step") or 0
            if during == "training":
                return record["status"] == "training" and step <= self.args.steps * 2 // 3
            if during == "end":
                return record["status"] in ("training", "saving") and step >= self.args.steps - 1
            return True

        running = [w for w in self.client.workers() if w.get("current_job")]
        running = [w for w in running if at_the_moment(self.client.store.get(w["current_job"]))]
        procs = {p.pid: p for p in self.workers if p.poll() is None}
        return next(((w, procs[w["pid"]]) for w in running if w["pid"] in procs), None)

    def kill_worker(self) -> None:
        kinds = self.args.worker_kill_during.split(",")
        during = kinds[self.faults["worker"] % len(kinds)]
        found = self.when(lambda: self.busy_worker(during), f"a worker kill ({during})")
        if found:
            info, proc = found
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.workers[self.workers.index(proc)] = self.start_worker()
            self.faults["worker"] += 1
            self.say(
                f"SIGKILLed worker {info['worker_id']} running job {info['current_job']} ({during})"
            )

    def kill_kernel(self) -> None:
        import psutil

        def mid_training():
            procs = {p.pid for p in self.workers if p.poll() is None}
            for w in self.client.workers():
                job, pid = w.get("current_job"), w.get("kernel_pid")
                if not job or not pid or w["pid"] not in procs:
                    continue
                record = self.client.store.get(job)
                step = record.get("current_step") or 0
                if record["status"] == "training" and 1 <= step <= self.args.steps * 2 // 3:
                    try:  # the worker's kernel: its child, or its zygote's (a forked kernel)
                        if w["pid"] in {p.pid for p in psutil.Process(pid).parents()}:
                            return job, pid, step
                    except psutil.Error:
                        pass
            return None

        found = self.when(mid_training, "a kernel kill")
        if found:
            job, pid, step = found
            os.kill(pid, signal.SIGKILL)
            self.faults["kernel"] += 1
            self.say(f"SIGKILLed the kernel of job {job} at step {step}")

    def kill_redis(self) -> None:
        if self.all_final():
            self.say("no moment for a Redis kill: skipped")
            return
        self.redis.kill()
        down = self.rng.uniform(0.5, 2.0)
        time.sleep(down)
        self.redis.start()
        self.faults["redis"] += 1
        self.say(f"SIGKILLed redis-server, restarted it on its AOF after {down:.1f} s")

    def cut_storage(self) -> None:
        def uploading():
            return next((r["job_id"] for r in self.records() if r["status"] == "saving"), None)

        job = self.when(uploading, "a storage outage")
        if job:
            before = self.storage_retries()
            self.proxy.stop()
            cut = time.monotonic()
            # "saving" starts in the kernel, before the worker uploads: hold the outage until a
            # worker has run into it (or a minute has passed), then for the outage's own length.
            deadline = cut + 60
            while self.storage_retries() == before and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(self.rng.uniform(self.args.outage_seconds / 3, self.args.outage_seconds))
            self.proxy.start()
            self.faults["storage"] += 1
            self.say(
                f"storage unreachable while job {job} saves, for {time.monotonic() - cut:.0f} s"
            )

    def storage_retries(self) -> int:
        """How often a worker or a kernel met the storage outage and waited: the workers' logs,
        and the jobs' logs (what kernels print)."""
        needle = "storage unreachable, retrying"
        in_workers = sum(
            log.read_text(errors="replace").count(needle) for log in self.work.glob("worker*.log")
        )
        in_kernels = 0
        for job_id in list(self.jobs):
            try:
                in_kernels += sum(needle in line for line in self.client.store.logs(job_id, 500))
            except Exception:  # the broker is down too, or the record is gone: count what we can
                pass
        return in_workers + in_kernels

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        self.setup()
        self.started = time.monotonic()
        submitter = threading.Thread(target=self.submit_all, daemon=True)
        submitter.start()
        plan = (
            ["worker"] * self.args.worker_kills
            + ["kernel"] * self.args.kernel_kills
            + ["redis"] * self.args.redis_kills
            + ["storage"] * self.args.outages
        )
        self.rng.shuffle(plan)
        act = {
            "worker": self.kill_worker,
            "kernel": self.kill_kernel,
            "redis": self.kill_redis,
            "storage": self.cut_storage,
        }
        for fault in plan:
            time.sleep(self.rng.uniform(1, self.args.fault_gap))
            act[fault]()
        submitter.join(timeout=self.args.deadline)
        deadline = time.monotonic() + self.args.deadline
        while time.monotonic() < deadline and not self.all_final():
            time.sleep(1)
        return self.count()

    def count(self) -> dict:
        from ftkit.errors import JobNotFound

        completed = lost = stuck = duplicated = 0
        for job_id in self.jobs:
            try:
                record = self.client.store.get(job_id)
            except JobNotFound:
                lost += 1
                self.say(f"job {job_id}: its record vanished")
                continue
            markers = self.client.storage.trained_markers(job_id)
            status = record["status"]
            self.say(
                f"job {job_id}: {status}, attempt {record.get('attempt')}, markers {markers}"
                + (f", error {record.get('error')}" if record.get("error") else "")
            )
            if status not in FINAL:
                stuck += 1
            elif status == "completed" and markers:
                completed += 1
            else:
                lost += 1
            duplicated += len(markers) > 1
        lost += self.args.jobs - len(self.jobs)  # a submit that never got an answer
        waited = self.storage_retries()
        return {
            "jobs": self.args.jobs,
            "worker kills": self.faults["worker"],
            "kernel kills": self.faults["kernel"],
            "Redis kills": self.faults["redis"],
            "storage outages": self.faults["storage"],
            "completed": completed,
            "lost": lost,
            "stuck": stuck,
            "duplicated": duplicated,
            "wall time": f"{time.monotonic() - self.started:.0f} s",
            "storage retries waited out": waited,
        }

    def close(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGKILL)
        self.proxy.stop()
        for proc in (self.redis.proc, self.moto.proc):
            if proc is not None:
                proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"  kept {self.work}")


TABLE = [
    "jobs",
    "worker kills",
    "kernel kills",
    "Redis kills",
    "storage outages",
    "completed",
    "lost",
    "stuck",
    "duplicated",
    "wall time",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--worker-kills", type=int, default=2)
    parser.add_argument("--kernel-kills", type=int, default=2)
    parser.add_argument("--redis-kills", type=int, default=2)
    parser.add_argument("--outages", type=int, default=2, help="storage outages during an upload")
    parser.add_argument("--steps", type=int, default=30, help="training steps per job")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--worker-kill-during",
        default="job",
        help="kill a worker at any moment of a job (job), mid-training (training) or from a job's "
        "last step on (end); a comma-separated list takes turns",
    )
    parser.add_argument("--outage-seconds", type=float, default=15.0, help="longest storage outage")
    parser.add_argument("--fault-gap", type=float, default=10.0, help="most seconds between faults")
    parser.add_argument(
        "--submit-gap", type=float, default=8.0, help="most seconds between submits"
    )
    parser.add_argument(
        "--deadline", type=float, default=900.0, help="seconds to wait for a moment or an end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (worker logs)")
    args = parser.parse_args()
    for during in args.worker_kill_during.split(","):
        if during not in ("job", "training", "end"):
            parser.error(f"--worker-kill-during: {during!r} is not one of job, training, end")
    soak = Soak(args)
    try:
        counts = soak.run()
    finally:
        soak.close()
    print("| " + " | ".join(TABLE) + " |")
    print("|" + " --- |" * len(TABLE))
    print("| " + " | ".join(str(counts[k]) for k in TABLE) + " |")
    print(f"storage retries waited out: {counts['storage retries waited out']}")
    print("COUNTS " + json.dumps(counts))
    faults = ", ".join(f"{counts[k]} {k}" for k in TABLE[1:5])
    print(
        "RESULT "
        + json.dumps(
            {
                f"soak: N={counts['jobs']} jobs, 2 workers, {faults} (counts of one run)": (
                    f"completed {counts['completed']}, lost {counts['lost']}, stuck {counts['stuck']}, "
                    f"duplicated {counts['duplicated']} ({counts['wall time']})"
                )
            }
        )
    )


if __name__ == "__main__":
    main()
