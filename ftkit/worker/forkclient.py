"""The process a kernel manager starts for a forked kernel: it asks the worker's zygote
(``ftkit.worker.zygote``) for a kernel on its connection file, then stands in for it. It relays
signals (an interrupt, a stop) to the kernel and exits with the kernel's exit status, so that
jupyter_client and nbclient see an ordinary kernel process; if it is killed, the zygote kills the
kernel.

Run as a script (``python -S forkclient.py CONNECTION_FILE``), never imported: it uses the standard
library only, so that it starts in milliseconds.
"""

import json
import os
import signal
import socket
import sys


def main() -> int:
    connection_file = sys.argv[1]
    request = {"connection_file": connection_file, "cwd": os.getcwd(), "env": dict(os.environ)}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["FTKIT_ZYGOTE_SOCKET"])
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    replies = conn.makefile("rb")
    pid = json.loads(replies.readline())["pid"]
    pid_file = connection_file + ".kernel-pid"
    with open(pid_file + ".tmp", "w") as out:  # kernels.kernel_pid reads it: the process to
        out.write(str(pid))  # watch or kill; renamed into place, so never read half written
    os.replace(pid_file + ".tmp", pid_file)

    def relay(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(sig, relay)
    try:
        line = replies.readline()  # {"exit": status}, once the kernel has ended
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass
    status = json.loads(line)["exit"] if line else 1
    return status if status >= 0 else 128 - status  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
