"""The mutation fork server: each request runs pytest on the files as they are on disk *now* (a mutant written
after the server started is seen), returns pytest's status, and a test that hangs is killed when its client goes
away (mutmut's timeout), leaving the server able to answer the next request."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import benchmark_module

fork_runner = benchmark_module("mutation_testing/fork_runner")

RUNNER = Path(fork_runner.__file__)
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and unix sockets")


def client(sock: Path, cwd: Path, *args: str, timeout: float = 60) -> int:
    return subprocess.run([sys.executable, str(RUNNER), "client", str(sock), "-q", "-p", "no:cacheprovider",
                           *args], cwd=cwd, timeout=timeout, capture_output=True).returncode


def test_fork_server_sees_each_edit_and_survives_a_killed_client(tmp_path):
    (tmp_path / "target.py").write_text("def value():\n    return 1\n")
    (tmp_path / "test_target.py").write_text("import target\n\ndef test_value():\n    assert target.value() == 1\n")
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(600)\n")
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([sys.executable, str(RUNNER), "serve", str(sock), "json"], cwd=tmp_path)
    try:
        assert client(sock, tmp_path, "test_target.py") == 0
        (tmp_path / "target.py").write_text("def value():\n    return 2\n")  # a "mutant", same size
        assert client(sock, tmp_path, "test_target.py") == 1
        assert not list(tmp_path.rglob("*.pyc")), "the server must not leave bytecode that could shadow a mutant"
        start = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            client(sock, tmp_path, "test_hang.py", timeout=3)
        (tmp_path / "target.py").write_text("def value():\n    return 1\n")
        assert client(sock, tmp_path, "test_target.py") == 0  # the hung child was killed, the server answers
        assert time.monotonic() - start < 60
        # mutmut 2 counts only status 1 as killed: a collection error (pytest's 2) must reach it as 1
        (tmp_path / "test_broken.py").write_text("import target\n\ntarget.missing()\n")
        assert client(sock, tmp_path, "test_broken.py") == 1
        log = (tmp_path / ".fork_runner.log").read_text().splitlines()
        assert [line.split()[1] for line in log] == ["0", "1", "0", "2"]  # the killed client logged nothing
    finally:
        subprocess.run([sys.executable, str(RUNNER), "stop", str(sock)], capture_output=True, timeout=30)
        server.wait(timeout=30)
    assert server.returncode == 0 and not sock.exists()
