"""A fork server that runs pytest for mutation testing without paying the interpreter's start-up per mutant.

mutmut 2 writes a mutant into the source tree and then runs a test command; started fresh, that command spends
~95% of its time importing torch and torchvision (about 5 s here) before tests that run for a fraction of a
second. The server imports the third-party modules once, then forks a child per request: the child imports
``uda_perturb`` and the tests from disk (so it sees the mutant), runs ``pytest.main`` and exits with its status.
The client is what mutmut calls; it uses the standard library only, so it starts in milliseconds.

    python fork_runner.py serve SOCKET [PRELOAD ...]      # in the tree mutmut edits
    python fork_runner.py client SOCKET PYTEST_ARGS ...   # mutmut's --runner; exits with pytest's status

This file is run as a script (``uda_perturb/__init__`` must not be imported by the server: its children import
the mutated package) and so imports nothing from the package.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Sequence

# imported once by the server: everything slow the package and its tests import, nothing of the package itself
PRELOAD = ("torch", "torchvision", "numpy", "PIL.Image", "yaml", "pytest")
POLL_SECONDS = 0.05


def run_child(request: dict) -> None:
    """In the forked child: run pytest in the request's folder with its arguments and exit with its status."""
    os.chdir(request["cwd"])
    sys.path.insert(0, request["cwd"])  # as ``python -m pytest`` does: the tree's package shadows an installed one
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import pytest

    try:
        code = int(pytest.main(list(request["args"])))
    except BaseException:  # noqa: BLE001 - a crash in collection is a failing run, never a hung server
        code = 3
    os._exit(code)


def wait_child(pid: int, conn: socket.socket, limit: float) -> int:
    """Wait for the child; kill it when the client goes away (mutmut's timeout killed it) or ``limit`` passes."""
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        readable, _, _ = select.select([conn], [], [], POLL_SECONDS)
        if readable or time.monotonic() > deadline:  # readable with no request pending: the client hung up
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL


def serve(path: str, preload: Sequence[str] = PRELOAD, limit: float = 600.0) -> None:
    """Import ``preload``, then answer requests on the unix socket ``path`` one at a time until asked to stop."""
    sys.dont_write_bytecode = True  # children too: no cached mutant may outlive its run
    for name in preload:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(path).unlink(missing_ok=True)
    server.bind(path)
    server.listen()
    while True:
        conn, _ = server.accept()
        with conn:
            line = conn.makefile("r").readline()
            if not line:
                continue
            request = json.loads(line)
            if request.get("stop"):
                break
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                run_child(request)
            code = wait_child(pid, conn, limit)
            try:
                conn.sendall(f"{code}\n".encode())
            except OSError:
                pass  # the client is gone
    server.close()
    Path(path).unlink(missing_ok=True)


def request(path: str, payload: dict, wait: float = 60.0) -> str:
    """Send one request to the server at ``path`` (waiting up to ``wait`` s for it to listen); return its reply."""
    deadline = time.monotonic() + wait
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as err:
            client.close()
            if time.monotonic() > deadline:
                raise SystemExit(f"no fork server listening on {path}") from err
            time.sleep(0.2)
    with client:
        client.sendall((json.dumps(payload) + "\n").encode())
        return client.makefile("r").readline().strip()


def main(argv: Sequence[str]) -> int:
    """``serve SOCKET [PRELOAD...]``, ``client SOCKET ARGS...`` (exit status = pytest's) or ``stop SOCKET``."""
    if len(argv) < 2 or argv[0] not in ("serve", "client", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    command, path, rest = argv[0], argv[1], list(argv[2:])
    if command == "serve":
        serve(path, rest or PRELOAD)
        return 0
    if command == "stop":
        request(path, {"stop": True}, wait=1.0)
        return 0
    reply = request(path, {"cwd": os.getcwd(), "args": rest})
    code = int(reply) if reply.lstrip("-").isdigit() else 3
    with open(Path(os.getcwd()) / ".fork_runner.log", "a") as log:  # every run's status, for an audit
        log.write(f"{time.strftime('%H:%M:%S')} {code} {' '.join(rest)}\n")
    # mutmut 2 counts only exit status 1 as a killed mutant: a mutant that breaks collection (pytest's 2), a
    # crash (3) or a killed child must count as killed too; "no tests collected" (5) stays a visible non-kill
    return 0 if code == 0 else 5 if code == 5 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
