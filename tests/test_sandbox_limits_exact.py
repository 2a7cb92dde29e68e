"""preflab.sandbox: exact values a run sees or reports (mutation-gdh round).

Each test pins a number or status that a plausible bug would change: the output cap to the byte, the shared-memory
cap in bytes and in pages, processes_left of a lone main process, a uid already in use never handed out, folders
of `files=` writable by the fresh uid, run_tests verdicts on runs that stopped, raised or had their limits passed
through, unix datagram sockets refused by domain, and the kill loop's rescan (a process forked meanwhile, a setsid()
daemon of a non-root run)."""
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from preflab.sandbox import _host, run_python, run_tests
from preflab.sandbox.runner import _run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="fresh uid and SysV caps need a root caller")


def test_output_of_exactly_the_cap_is_kept_whole_and_more_is_cut_to_the_cap():
    """max_output_bytes=100: 100 bytes are an ordinary run; 150 bytes end it with exactly the first 100 kept."""
    exact = run_python("import sys\nsys.stdout.write('x' * 100)", timeout_s=5, memory_mb=128, max_output_bytes=100)
    assert (exact.status, exact.stdout, exact.truncated, exact.limits_hit) == ("ok", "x" * 100, False, ())
    over = run_python("import sys\nsys.stdout.write('y' * 150)", timeout_s=5, memory_mb=128, max_output_bytes=100)
    assert over.status == "output_limit" and over.truncated and "output" in over.limits_hit
    assert over.stdout == "y" * 100


@as_root
def test_a_lone_main_process_that_times_out_leaves_no_process_behind():
    """The main process is not a leftover: a single-process busy loop that hits the wall clock has
    processes_left == 0 and no refusal (a count that included it would call the run a guard escape)."""
    r = run_python("while True:\n    pass", timeout_s=1.0, memory_mb=128)
    assert r.status == "timeout" and "wall" in r.limits_hit
    assert r.processes_left == 0 and r.refused == ()


@as_root
def test_shared_memory_is_capped_at_the_memory_limit_in_bytes_and_pages():
    """In the run's IPC namespace shmmax = memory_mb MiB (bytes) and shmall = that many pages (shmall counts
    pages, not bytes)."""
    code = "print(open('/proc/sys/kernel/shmmax').read().strip(), open('/proc/sys/kernel/shmall').read().strip())"
    r = run_python(code, timeout_s=5, memory_mb=64)
    assert r.status == "ok", r.stderr
    assert r.stdout.split() == [str(64 << 20), str((64 << 20) // os.sysconf("SC_PAGE_SIZE"))]
    assert "shared memory capped at 64 MB" in r.isolation["ipc"]


@as_root
def test_a_uid_that_live_processes_run_as_is_never_handed_out(monkeypatch):
    """allocate_uid skips a candidate uid that has a live process (here `sleep`, run as base + 7) and takes the
    next candidate (base + 8)."""
    busy = _host._UID_BASE + 7
    sleeper = subprocess.Popen(["sleep", "30"], user=busy, group=busy)
    draws = iter([7, 8])
    monkeypatch.setattr(_host.secrets, "randbelow", lambda n: next(draws))
    lock = None
    try:
        uid, lock = _host.allocate_uid()
        assert uid == _host._UID_BASE + 8
        assert not (_host._LOCK_DIR / str(busy)).exists()  # the skipped candidate's lock is released
    finally:
        sleeper.kill()
        sleeper.wait()
        if lock is not None:
            lock.unlink(missing_ok=True)


@as_root
def test_folders_made_for_files_belong_to_the_run():
    """files={'pkg/data.txt': ...}: the run (a fresh uid) can append to the file and create a new one beside it."""
    code = textwrap.dedent("""
        with open("pkg/data.txt", "a") as f:
            f.write("c")
        with open("pkg/new.txt", "w") as f:
            f.write("b")
        print(open("pkg/data.txt").read(), open("pkg/new.txt").read())
    """)
    r = run_python(code, files={"pkg/data.txt": "a"}, timeout_s=5, memory_mb=128)
    assert r.status == "ok", r.stderr
    assert r.stdout == "ac b\n"


def test_a_caller_judged_test_fails_when_the_run_times_out_after_its_value():
    """The value (3) arrives, then a non-daemon thread keeps the interpreter alive: the run times out at timeout_s
    (not later), and a run that did not end ok never passes, whatever its values."""
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\ndef f():\n    return 3\n"
    out = run_tests(code, ["assert f() == 3"], timeout_s=1.0, memory_mb=128)[0]
    assert out.judged_by_caller and not out.passed
    assert out.result.status == "timeout" and out.result.wall_s < 2.5


def test_a_comparison_that_raises_fails_the_test():
    """`assert f() < 3` with f() == 'a': Python raises TypeError, so the test fails (judged on the caller's side),
    while the same comparison with a number passes."""
    raising, fine = run_tests("def f(x):\n    return x\n", ["assert f('a') < 3", "assert f(2) < 3"], timeout_s=2.0,
                              memory_mb=128)
    assert raising.judged_by_caller and raising.result.status == "ok"
    assert (raising.passed, fine.passed) == (False, True)


def test_run_tests_applies_the_sandbox_limits_it_is_given():
    """max_output_bytes reaches every test's run: 500 bytes printed against a cap of 100 is an output_limit and
    the test fails; the same code with the default cap passes."""
    code = "print('x' * 500)\ndef f():\n    return 1\n"
    capped = run_tests(code, ["assert f() == 1"], timeout_s=2.0, memory_mb=128, max_output_bytes=100)[0]
    assert capped.result.status == "output_limit" and not capped.passed
    assert run_tests(code, ["assert f() == 1"], timeout_s=2.0, memory_mb=128)[0].passed


def test_unix_datagram_sockets_are_refused_and_inet_sockets_are_not():
    """seccomp refuses socket(AF_UNIX, ...) whatever its type (a SOCK_DGRAM to a host socket such as /dev/log is
    refused with EPERM, nothing is delivered), while socket(AF_INET, SOCK_STREAM) can still be created (the
    filter reads the domain, not the type)."""
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o755)
    address = os.path.join(folder, "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    os.chmod(address, 0o666)
    server.settimeout(0.3)
    code = textwrap.dedent(f"""
        import socket
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"escaped", {address!r})
            print("SENT")
        except OSError as e:
            print("unix", e.errno)
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        print("inet created")
    """)
    try:
        r = run_python(code, timeout_s=5, memory_mb=128)
        try:
            received = server.recv(64)
        except OSError:
            received = b""
    finally:
        server.close()
        os.unlink(address)
        os.rmdir(folder)
    assert r.status == "ok", r.stderr
    assert r.stdout == "unix 1\ninet created\n" and received == b""


def test_a_process_that_appears_in_a_later_scan_is_killed_too():
    """_kill_until_gone rescans after each round: a process the first scan did not list (forked meanwhile) is
    killed as well, and both are counted."""
    first, second = (subprocess.Popen(["sleep", "30"]) for _ in range(2))
    scans = []

    def scan():
        scans.append(1)
        live = [p.pid for p in (first, second) if p.poll() is None]
        return live[:1] if len(scans) == 1 else live

    try:
        assert _host._kill_until_gone(scan, lambda pid: True, timeout_s=5.0) == 2
        assert (first.wait(timeout=5), second.wait(timeout=5)) == (-9, -9)
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_a_non_root_runs_setsid_daemon_is_killed_with_its_user_namespace(monkeypatch):
    """Non-root: a child that calls setsid() leaves the process group but not the run's user namespace; it is
    gone when run_python returns."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = textwrap.dedent("""
        import os, sys, time
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.close(r)
            os.write(w, b"x")
            os.close(w)
            os.closerange(0, 3)
            time.sleep(60)
            os._exit(0)
        os.read(r, 1)
        print(pid)
    """)
    with pytest.warns(UserWarning, match="non-root caller"):
        r = _run_python(code, python_guard=False, timeout_s=5, memory_mb=128)
    if "user namespace" not in r.isolation.get("ipc", ""):
        pytest.skip("no user namespace for the run here: " + r.isolation.get("ipc", ""))
    assert r.status == "ok" and r.processes_left == 1
    pid = int(r.stdout)
    deadline = time.monotonic() + 2
    while os.path.exists(f"/proc/{pid}") and not _host._is_zombie(str(pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}") or _host._is_zombie(str(pid))
