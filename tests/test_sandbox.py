"""preflab.sandbox: normal runs, stdin, limits, and containment of hostile programs.

Hostile programs run with tight limits (1 s, 128 MB, a handful of processes) so that a containment bug cannot
load the shared machine. Root-only checks (fresh uid, process limit, uid sweep) are skipped for other users.
"""
import os
import socket
import sys
import tempfile
import textwrap
import time

import pytest

from preflab.sandbox import SandboxError, run_python, run_tests
from preflab.sandbox import _host

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="fresh uid and RLIMIT_NPROC need a root caller")
HOSTILE = dict(timeout_s=1.0, memory_mb=128, max_processes=6)


def mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


# ---------------------------------------------------------------- ordinary programs


def test_output_stdin_and_files():
    code = textwrap.dedent("""
        import sys
        data = sys.stdin.read()
        print(data.upper(), end="")
        print(open("data/extra.txt").read(), file=sys.stderr)
    """)
    r = run_python(code, stdin="hello\nworld", files={"data/extra.txt": "side file"}, timeout_s=5)
    assert r.status == "ok" and r.ok and r.returncode == 0
    assert r.stdout == "HELLO\nWORLD"
    assert r.stderr == "side file\n"
    assert r.limits_hit == () and not r.truncated
    assert 0 < r.wall_s < 5


def test_large_stdin_does_not_block():
    r = run_python("import sys\nprint(len(sys.stdin.read()))", stdin="x" * 300_000, timeout_s=5)
    assert r.status == "ok" and r.stdout == "300000\n"


def test_exception_is_an_error_with_traceback():
    r = run_python("def f():\n    raise ValueError('boom')\nf()", timeout_s=5)
    assert r.status == "error" and r.returncode == 1
    assert r.stderr.strip().endswith("ValueError: boom") and "main.py" in r.stderr


def test_output_cap_kills_the_run():
    r = run_python("while True:\n    print('x' * 999)", timeout_s=5, max_output_bytes=3000)
    assert r.status == "output_limit" and r.truncated and "output" in r.limits_hit
    assert len(r.stdout) == 3000 and set(r.stdout) <= {"x", "\n"}
    assert r.wall_s < 5


def test_rejects_bad_arguments():
    with pytest.raises(SandboxError, match="relative path"):
        run_python("pass", files={"../escape.py": ""})
    with pytest.raises(SandboxError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(SandboxError, match="memory_mb"):
        run_python("pass", memory_mb=1)


# ---------------------------------------------------------------- the five containment cases


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", **HOSTILE)
    assert r.status == "timeout" and r.returncode < 0
    assert set(r.limits_hit) & {"wall", "cpu"}
    assert r.wall_s < 1.0 + 1.0


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    r = run_python("while True:\n    pass", timeout_s=10, cpu_s=1, memory_mb=128)
    assert r.status == "timeout" and "cpu" in r.limits_hit and "wall" not in r.limits_hit
    assert 0.9 <= r.cpu_s < 2.5 and r.wall_s < 10


@pytest.mark.parametrize("bomb", ["x = bytearray(10**9)", "l = []\nwhile True:\n    l.append(' ' * 10**6)"])
def test_memory_bomb_is_reported_as_memory(bomb):
    r = run_python(bomb, timeout_s=5, memory_mb=128)
    assert r.status == "memory" and "memory" in r.limits_hit
    assert r.stderr.strip().endswith("MemoryError")


@as_root
def test_fork_bomb_is_capped_and_fully_killed():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = run_python(bomb, **HOSTILE)
    assert r.status == "timeout" and "processes" in r.limits_hit
    assert 1 <= r.processes_left <= HOSTILE["max_processes"]
    assert r.sandbox_uid is not None and _host.processes_of(r.sandbox_uid) == []


@as_root
def test_escaped_daemon_is_killed_and_does_not_hold_the_run():
    code = textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        print("parent done")
    """)
    start = time.monotonic()
    r = run_python(code, timeout_s=5, memory_mb=128)
    assert r.status == "ok" and r.stdout == "parent done\n"
    assert time.monotonic() - start < 3
    assert r.processes_left == 1 and _host.processes_of(r.sandbox_uid) == []


def test_writing_outside_the_working_folder_is_blocked():
    root_owned = tempfile.mkdtemp()                    # 0700, owned by the caller
    world_writable = tempfile.mkdtemp()
    os.chmod(world_writable, 0o777)                    # only Landlock stops this one
    code = textwrap.dedent(f"""
        import os
        for path in [{root_owned!r}, {world_writable!r}, "/dev/shm"]:
            try:
                with open(os.path.join(path, "pwned.txt"), "w") as f:
                    f.write("x")
                print("WROTE", path)
            except OSError as e:
                print("blocked", type(e).__name__)
        os.symlink({world_writable!r} + "/via_link.txt", "link.txt")
        try:
            open("link.txt", "w").write("x")
            print("WROTE via symlink")
        except OSError as e:
            print("blocked", type(e).__name__)
        os.mkdir("sub")
        with open("sub/inside.txt", "w") as f:
            f.write("fine")
        print("inside", open("sub/inside.txt").read())
    """)
    try:
        r = run_python(code, timeout_s=5, memory_mb=128)
        assert r.status == "ok", r.stderr
        lines = r.stdout.splitlines()
        assert lines[:4] == ["blocked PermissionError"] * 4, r.stdout
        assert lines[4] == "inside fine"
        assert os.listdir(root_owned) == [] and os.listdir(world_writable) == []
        assert not os.path.exists("/dev/shm/pwned.txt")
        assert "Landlock" in r.isolation["filesystem"]
    finally:
        for d in (root_owned, world_writable):
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("PREFLAB_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code = "import os\nprint(sorted(os.environ))\nprint('hunter2' in repr(dict(os.environ)))"
    r = run_python(code, timeout_s=5, env={"TASK_ID": "7"})
    assert r.status == "ok"
    names, leaked = r.stdout.splitlines()
    assert eval(names) == sorted(["PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS",
                                  "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TASK_ID"])
    assert leaked == "False"


def test_network_is_blocked():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = textwrap.dedent(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1)
            print("CONNECTED")
        except OSError as e:
            print("blocked", type(e).__name__)
    """)
    try:
        r = run_python(code, timeout_s=5, memory_mb=128)
    finally:
        server.close()
    assert r.status == "ok" and r.stdout.startswith("blocked"), r.stdout
    assert r.isolation.get("network", "").startswith("network namespace") or "TCP bind/connect denied" in \
        r.isolation["filesystem"]


@as_root
def test_runs_as_a_fresh_unprivileged_uid_and_leaves_mounts_alone():
    before = mountinfo()
    r = run_python("import os\nprint(os.getuid(), os.getgid(), os.getgroups())", timeout_s=5)
    assert r.status == "ok"
    uid, gid, groups = r.stdout.split(maxsplit=2)
    assert int(uid) == int(gid) == r.sandbox_uid >= 1_000_000_000 and groups.strip() == "[]"
    assert mountinfo() == before


# ---------------------------------------------------------------- run_tests


def test_run_tests_verdicts():
    code = "def add(a, b):\n    return a + b\n"
    tests = ["assert add(1, 2) == 3", "assert add(1, 2) == 4", "while True:\n    pass", "assert add('a', 'b') == 'ab'"]
    outcomes = run_tests(code, tests, timeout_s=1.5, memory_mb=128, max_workers=2)
    assert [o.passed for o in outcomes] == [True, False, False, True]
    assert [o.result.status for o in outcomes] == ["ok", "error", "timeout", "ok"]
    assert outcomes[1].result.stderr.strip().endswith("AssertionError")


def test_run_tests_early_exit_does_not_pass():
    cheat = "import os\nos._exit(0)\ndef add(a, b):\n    return 0\n"
    outcomes = run_tests(cheat, ["assert add(1, 2) == 3"], timeout_s=2.0, memory_mb=128)
    assert outcomes[0].result.status == "ok" and not outcomes[0].passed


# ---------------------------------------------------------------- set-up failures and the non-root path


def test_a_launch_failure_raises_instead_of_running():
    with pytest.raises(SandboxError, match="execve /nonexistent/python"):
        run_python("print(1)", python="/nonexistent/python", timeout_s=5)


def test_non_root_code_path_reports_its_weaker_limits(monkeypatch):
    # Exercises the caller-is-not-root branch (no uid switch; approximate process limit) on this machine.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = run_python("print('hi')", timeout_s=5, memory_mb=128)
    assert r.status == "ok" and r.stdout == "hi\n" and r.sandbox_uid is None
    assert "approximate" in r.isolation["user"]
