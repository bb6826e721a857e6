"""Warm start for pipeline jobs: one process imports torch, torchvision and timm once, and forks a
child for each ``mtwork`` command, so a job no longer pays those imports (4-6 s of CPU on the 2-core
reference machine, docs/benchmarks.md "Per-job start-up"), about 80 times per default run.

Opt-in through the environment: ``MTWORK_WARM_START=1``. The workflow sets it for its local jobs (the
Snakefile's shell prefix); ``MTWORK_WARM_START=0`` switches it off, and it is always off inside a Slurm
job (``SLURM_JOB_ID`` set), where another job of the same user on the node must not run in this job's
allocation. Everything else runs as before, in its own process.

How a command runs (``run_warm``, called by ``mtwork.cli.main`` when invoked as the console script):

1. The client (the ``mtwork`` process the job started, which has imported nothing heavy) connects to
   the server of its *key*: a hash of the interpreter, the mtwork source files (paths, sizes,
   modification times) and the whole environment. Code edits or a different environment therefore
   get a server of their own, never a stale one. No server: it starts one (under a file lock, so
   parallel jobs start one between them) and waits until it listens.
2. It sends its argv, working directory, environment and umask, and passes its stdin/stdout/stderr
   file descriptors over the Unix socket (SCM_RIGHTS).
3. The server forks. The child takes over those descriptors, directory, environment and umask,
   restores the default signal handlers, starts a process group of its own, runs
   ``mtwork.cli.main(argv)`` exactly as the job would have, and sends back the exit status. Output,
   progress and tracebacks go to the job's own log as before.
4. Signals: the client forwards SIGTERM, SIGINT and SIGHUP to the child's process group (a cancelled
   Snakemake job stops its training); if the client dies (SIGKILL), the child sees its connection
   close and kills its process group. A child that dies without sending a status (killed by a signal)
   gives the job exit status 1 and a line saying so.

The server never runs a torch operation (so no thread pool or CUDA context exists before the fork),
serves children concurrently, and exits after ``IDLE_SECONDS`` without a job. If it cannot start, the
client says so on stderr and runs the command in its own process.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: Environment variable that switches warm start on ("1") or off ("0"; unset: off).
ENV_SWITCH = "MTWORK_WARM_START"
#: A server exits after this many seconds with no job running and none arriving.
IDLE_SECONDS = float(os.environ.get("MTWORK_WARM_IDLE", "60"))
#: How long a client waits for a server it started to listen (its imports take seconds).
START_TIMEOUT = 120.0
#: What the server imports before serving: the modules behind the pipeline's commands (mtwork/cli.py),
#: which bring in torch, torchvision, timm, open_clip, pandas, scipy and matplotlib. Not peft (LoRA only,
#: 1.4 s): a LoRA job imports it itself.
PRELOAD = ("torch", "torchvision", "timm", "open_clip", "mtwork.cli", "mtwork.config", "mtwork.plan", "mtwork.workflow",
           "mtwork.data.synthdrive", "mtwork.data.check", "mtwork.pretrain", "mtwork.pretrain.clip",
           "mtwork.checkpoints.importer", "mtwork.train", "mtwork.train_vit", "mtwork.evaluate",
           "mtwork.report.tables", "mtwork.report.vit_tables", "mtwork.report.vit_protocol_tables")
#: Variables that differ between shells of one job without changing what a command does.
_VOLATILE_ENV = ("PWD", "OLDPWD", "_", "SHLVL")


def enabled(environ: Optional[Dict[str, str]] = None) -> bool:
    """Whether this command should go through a warm server (``ENV_SWITCH`` = 1, outside Slurm jobs)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_SWITCH, "0") == "1" and "SLURM_JOB_ID" not in environ and hasattr(socket, "send_fds")


def server_key(environ: Optional[Dict[str, str]] = None) -> str:
    """16 hex digits naming the server that may run this process's commands (module docstring, 1)."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0".encode())
    package = _package_dir()
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    for name in sorted(k for k in environ if k not in _VOLATILE_ENV):
        digest.update(f"{name}={environ[name]}\0".encode())
    return digest.hexdigest()[:16]


def socket_dir() -> Path:
    """A directory only this user can enter: $XDG_RUNTIME_DIR or the temporary directory, mtwork-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"mtwork-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise OSError(f"{path}: not a private directory of this user")
    return path


# ---- messages: one JSON object per line ------------------------------------------------------------


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _recv_line(conn: socket.socket, buffer: bytearray) -> Optional[dict]:
    """The next JSON line from ``conn`` (None at end of stream); ``buffer`` keeps what follows it."""
    while b"\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


# ---- client ---------------------------------------------------------------------------------------


def _connect(path: Path) -> Optional[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _start_server(path: Path) -> Optional[socket.socket]:
    """Start a server listening on ``path`` unless another client just did; a connection to it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find its socket
        conn = _connect(path)
        if conn is not None:
            return conn
        path.unlink(missing_ok=True)  # a dead server's socket file
        log = open(path.with_suffix(".log"), "ab")
        # Started where the job runs, so that relative PYTHONPATH entries find the same mtwork; -P keeps
        # that directory itself off sys.path, as it is for the console script (Python >= 3.11).
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        server = subprocess.Popen([sys.executable, *safe_path, "-m", "mtwork.warmstart", "serve", str(path), str(_package_dir())],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and server.poll() is None:
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.05)
    return None


def _package_dir() -> Path:
    """The mtwork package this process runs (the server must import the same one)."""
    return Path(__file__).resolve().parent


def run_warm(argv: Sequence[str]) -> Optional[int]:
    """Run ``mtwork argv`` in a child of the warm server; its exit status, or None when no server could
    be reached (the caller then runs the command itself)."""
    try:
        path = socket_dir() / f"{server_key()}.sock"
    except OSError as exc:
        print(f"mtwork: warm start unavailable ({exc}); running in this process", file=sys.stderr)
        return None
    for _attempt in range(2):  # a server that is just exiting (idle) drops the connection: start another
        try:
            conn = _connect(path) or _start_server(path)
        except OSError as exc:
            print(f"mtwork: warm start unavailable ({exc}); running in this process", file=sys.stderr)
            return None
        if conn is None:
            print(f"mtwork: no warm-start server came up at {path} (its log: {path.with_suffix('.log')}); "
                  "running in this process", file=sys.stderr)
            return None
        with conn:
            request = {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()}
            buffer = bytearray()
            try:
                socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
                hello = _recv_line(conn, buffer)
            except OSError:
                hello = None
            if hello is None or "pid" not in hello:
                continue  # nothing ran: safe to try again
            return _wait_for_child(conn, buffer, int(hello["pid"]))
    print("mtwork: the warm-start server closed the connection twice; running in this process", file=sys.stderr)
    return None


def _wait_for_child(conn: socket.socket, buffer: bytearray, child: int) -> int:
    """Forward this process's termination signals to the child's process group; its exit status."""

    def forward(signum, _frame):
        try:
            os.killpg(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    reply = _recv_line(conn, buffer)
    if reply is None or "exit" not in reply:
        print(f"mtwork: the command's process {child} ended without an exit status (killed by a signal?)", file=sys.stderr)
        return 1
    return int(reply["exit"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- server ---------------------------------------------------------------------------------------


def _child(conn: socket.socket, listener: socket.socket, request: dict, fds: List[int]) -> None:
    """In the forked child: become the job's process and run its command; never returns."""
    code = 1
    try:
        listener.close()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)  # a group of its own: the client's signals reach the loader workers too
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as Python sets it up for a process of its own
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV_SWITCH, None)  # processes this command starts (DDP workers) run as usual
        os.umask(int(request["umask"]))
        sys.argv = ["mtwork", *request["argv"]]
        _send(conn, {"pid": os.getpid()})

        def watch_client():
            # The client's end closes only when it exits: then nobody waits for this command any more.
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.killpg(0, signal.SIGKILL)

        threading.Thread(target=watch_client, daemon=True).start()
        from mtwork.cli import main

        try:
            code = int(main(request["argv"]) or 0)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, {"exit": code})
    except BaseException:  # noqa: BLE001 - whatever happens, the job's log gets it and the child ends
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def serve(path: Path, package: Path) -> None:
    """Import the heavy modules, listen on ``path`` and fork a child per request until idle. Exits
    without listening (the client then runs its command itself) unless it runs the mtwork of the
    client, ``package``."""
    if _package_dir() != package.resolve():
        sys.exit(f"this server would run {_package_dir()}, the client runs {package}")
    os.environ.setdefault("TQDM_MININTERVAL", "20")  # as mtwork.cli.main sets it for a job log
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an optional part missing: the child imports (and reports) it itself
            print(f"preload {module}: {exc}", file=sys.stderr, flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    inode = path.stat().st_ino
    listener.listen(64)
    children: set = set()
    idle_since = time.monotonic()
    print(f"mtwork warm-start server {os.getpid()} listening on {path}", file=sys.stderr, flush=True)
    try:
        while True:
            while children:  # reap finished children
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                if not children:
                    idle_since = time.monotonic()
            if not children and time.monotonic() - idle_since > IDLE_SECONDS:
                return
            listener.settimeout(1.0)
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            fds: List[int] = []
            try:
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = _recv_line(conn, bytearray(message))  # a long environment may arrive in pieces
                if request is None:
                    raise ValueError("connection closed inside the request")
                if len(fds) != 3:
                    raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
            except (OSError, ValueError) as exc:
                print(f"bad request: {exc}", file=sys.stderr, flush=True)
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                _child(conn, listener, request, fds)
            children.add(pid)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        listener.close()
        try:
            if path.stat().st_ino == inode:  # still this server's socket file
                path.unlink()
        except OSError:
            pass


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m mtwork.warmstart serve SOCKET PACKAGE_DIR")
