"""A worker's kernel zygote: one process that imports the training stack once, then forks a fresh
kernel for each job. A fork copies the imported state in milliseconds and shares its memory, so a
job's kernel starts warm without a warm-up running beside the job, and no state crosses jobs: each
kernel starts from the zygote's state, never from another job's.

    python -m ftkit.worker.zygote SOCKET      (kernels.ForkServer starts it)

It prints ``ready`` once warm, or ``problem {...}`` lines (``stack.Problem``) and exits 3 when
the stack a job needs does not import. Each connection on SOCKET (``ftkit/worker/forkclient.py``)
brings a connection file, a working folder, an environment and three file descriptors (the kernel's
stdin, stdout and stderr); the zygote forks, answers ``{"pid": N}``, and when the kernel ends,
``{"exit": status}``. A client that goes away takes its kernel with it. The zygote dies with its
worker, and each kernel with the zygote (``PR_SET_PDEATHSIG``).

Used only where no CUDA device is visible: a process that has touched CUDA cannot fork kernels
that use it (GPU workers keep a warm spare kernel instead, see ``kernels.KernelPool``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import socket
import sys
import traceback

from ..core.lifetime import die_with_parent


def run_kernel(request: dict, fds: list[int]) -> None:
    """In the forked child: become an ipykernel on the request's connection file."""
    die_with_parent()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # ipykernel exits when its parent changes: the parent is this zygote, not the worker
    os.environ["JPY_PARENT_PID"] = str(os.getppid())
    os.environ.pop("FTKIT_ZYGOTE_SOCKET", None)
    # its watch on its parent: read from JPY_PARENT_PID when ipykernel was imported (here, before
    # the fork), so given again
    sys.argv = [
        "ipykernel_launcher",
        "-f",
        request["connection_file"],
        f"--IPKernelApp.parent_handle={os.getppid()}",
    ]
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    kernels: dict[socket.socket, int] = {}  # client connection -> its kernel's pid
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = receive(conn)
                except (OSError, ValueError) as exc:  # a client that died mid-request
                    print(f"ftkit zygote: a request failed: {exc}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    status = 1
                    try:
                        selector.close()
                        listener.close()
                        for other in kernels:
                            other.close()
                        conn.close()
                        run_kernel(request, fds)
                        status = 0
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        os._exit(status)
                for fd in fds:
                    os.close(fd)
                try:
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                except OSError:  # its client is gone: so is the kernel
                    os.kill(pid, signal.SIGKILL)
                    conn.close()
                    continue
                kernels[conn] = pid
                selector.register(conn, selectors.EVENT_READ)
            else:  # the client sends nothing more: readable means it has gone
                conn = key.fileobj  # type: ignore[assignment]
                if not conn.recv(1):
                    selector.unregister(conn)
                    try:
                        os.kill(kernels.pop(conn), signal.SIGKILL)
                    except (KeyError, ProcessLookupError):
                        pass
                    conn.close()
        reap(kernels, selector)


def receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request (a JSON line) and its three file descriptors."""
    conn.settimeout(30)
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    try:
        while not message.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                raise ValueError("the request ended early")
            message += more
        conn.settimeout(None)
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} file descriptors, not 3")
        return json.loads(message), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def reap(kernels: dict[socket.socket, int], selector: selectors.BaseSelector) -> None:
    """Kernels that ended: their exit status to their client."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        for conn, kernel in list(kernels.items()):
            if kernel == pid:
                kernels.pop(conn)
                selector.unregister(conn)
                try:
                    conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


def main() -> None:
    die_with_parent()
    idle = os.environ.pop("FTKIT_ZYGOTE_IDLE", "") == "1"
    if idle:  # the warm-up takes only CPU time that jobs (of other workers too) leave
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from ftkit.stack import import_problems

    problems = import_problems()  # what a job imports, for real: the worker's start-up check
    for problem in problems:
        print("problem", json.dumps(dataclasses.asdict(problem)), flush=True)
    if problems:
        sys.exit(3)
    from ftkit.training.warmup import preload

    preload()
    if idle:  # its kernels run at normal priority
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    serve(sys.argv[1])


if __name__ == "__main__":
    main()
