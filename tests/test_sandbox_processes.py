"""preflab.sandbox refuses every way of starting a process (and ctypes/cffi) loudly: the call raises SandboxRefused,
the run's status is "refused" and names the call even when the program catches the exception and carries on; under
that, seccomp denies execve so a program that gets around the Python guard still cannot execute anything."""
import os
import sys
import textwrap

import pytest

from preflab.sandbox import _guard, _host, run_python, run_tests
from preflab.sandbox.runner import PAST_THE_GUARD, _run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")
LIMITS = dict(timeout_s=10, memory_mb=256)

# each statement would create ./made (inside the run's own folder) if it ran; refused = the call as reported
CALLS = {
    "os.system": ("os.system('touch made')", "os.system('touch made')"),
    "os.popen": ("os.popen('touch made').read()", "subprocess.Popen(['/bin/sh', '-c', 'touch made'])"),
    "os.execv": ("os.execv('/usr/bin/touch', ['touch', 'made'])", "os.exec(['touch', 'made'])"),
    "os.execvpe": ("os.execvpe('touch', ['touch', 'made'], {})", "os.exec(['touch', 'made'])"),
    "os.spawnv": ("os.spawnv(os.P_WAIT, '/usr/bin/touch', ['touch', 'made'])", "os.fork()"),
    "os.spawnlp": ("os.spawnlp(os.P_WAIT, 'touch', 'touch', 'made')", "os.fork()"),
    "os.posix_spawn": ("os.posix_spawn('/usr/bin/touch', ['touch', 'made'], {})",
                       "os.posix_spawn(['touch', 'made'])"),
    "os.posix_spawnp": ("os.posix_spawnp('touch', ['touch', 'made'], {})", "os.posix_spawn(['touch', 'made'])"),
    "os.fork": ("os.fork() or os._exit(0)", "os.fork()"),
    "os.forkpty": ("os.forkpty()", "os.forkpty()"),
    "pty.spawn": ("import pty; pty.spawn(['touch', 'made'])", "os.forkpty()"),
    "subprocess.run": ("import subprocess; subprocess.run(['touch', 'made'])", "subprocess.Popen(['touch', 'made'])"),
    "subprocess.Popen(shell=True)": ("import subprocess; subprocess.Popen('touch made', shell=True).wait()",
                                     "subprocess.Popen(['/bin/sh', '-c', 'touch made'])"),
    "_posixsubprocess.fork_exec": ("import _posixsubprocess; _posixsubprocess.fork_exec([b'touch', b'made'])",
                                   "_posixsubprocess.fork_exec(['touch', 'made'])"),
    "multiprocessing fork": ("import multiprocessing as mp; mp.get_context('fork').Process(target=print).start()",
                             "os.fork()"),
    "multiprocessing spawn": ("import multiprocessing as mp; mp.get_context('spawn').Process(target=print).start()",
                              "_posixsubprocess.fork_exec("),
    "ctypes libc system": ("import ctypes; ctypes.CDLL(None).system(b'touch made')", "ctypes.dlopen()"),
    "ctypes named library": ("import ctypes; ctypes.CDLL('libc.so.6')", "ctypes.dlopen('libc.so.6')"),
    "ctypes pythonapi": ("import ctypes; ctypes.pythonapi.PyOS_snprintf", "ctypes.dlsym('PyOS_snprintf')"),
    "ctypes from_address": ("import ctypes; ctypes.c_char.from_address(id(1))", "ctypes.cdata()"),
    "cffi": ("import cffi", "import cffi"),
    "subinterpreter": ("import _xxsubinterpreters as s; s.create()", "import _xxsubinterpreters"),
    "subinterpreter (Python 3.13)": ("import _interpreters as s; s.create()", "import _interpreters"),
    "subinterpreter (test C API)": ("import _testcapi; _testcapi.run_in_subinterp('pass')", "import _testcapi"),
    "a fresh _posixsubprocess (re-import)": ("import sys; del sys.modules['_posixsubprocess']; import _posixsubprocess",
                                             "import _posixsubprocess"),
    "a fresh _posixsubprocess (module_from_spec)": (
        "import importlib.util as u; u.module_from_spec(u.find_spec('_posixsubprocess'))", "import _posixsubprocess"),
    "a fresh _posixsubprocess (_imp.create_dynamic)": (
        "import _imp, importlib.machinery as m; _imp.create_dynamic(m.PathFinder.find_spec('_posixsubprocess'))",
        "import _posixsubprocess"),
    "os.system in a thread": ("import threading; t = threading.Thread(target=os.system, args=('touch made',)); "
                              "t.start(); t.join()", "os.system('touch made')"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_way_to_start_a_process_raises_and_the_run_is_refused(name):
    statement, reported = CALLS[name]
    code = textwrap.dedent(f"""
        import os
        try:
            {statement}
        except Exception as e:
            print(type(e).__name__, e.errno if isinstance(e, OSError) else None)
        print("carried on", os.path.exists("made"))
    """)
    r = run_python(code, **LIMITS)
    assert r.status == "refused" and not r.ok, (r.status, r.stderr)
    assert r.refused and r.refused[0].startswith(reported), r.refused
    lines = r.stdout.splitlines()
    assert lines[-1] == "carried on False"         # the program caught the exception; nothing ran
    if name not in ("pty.spawn", "os.system in a thread"):
        assert lines[0] == "SandboxRefused 1"       # PermissionError, errno EPERM
    # pty.spawn: pty.fork catches the refused os.forkpty (an OSError) and falls back to openpty, which fails here;
    # a thread's exception is printed by threading, not caught by the program: both are still refused runs.
    # Subinterpreters are refused at the import of their module: refused at creation only, CPython 3.12.1 crashed
    # (SIGSEGV, status "killed") and 3.13.0 created one without the event reaching the hook


def test_an_uncaught_refusal_names_the_call_in_the_traceback():
    r = run_python("import os\ndef reward(x):\n    os.system('touch made')\n    return x\nprint(reward(1))", **LIMITS)
    assert r.status == "refused" and r.returncode == 1 and r.stdout == ""
    assert r.refused == ("os.system('touch made')",)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("preflab.sandbox.SandboxRefused: [Errno 1] os.system('touch made') refused by "
                           "preflab.sandbox: sandboxed code may not start processes"), last
    assert "main.py\", line 3, in reward" in r.stderr
    assert "execve/execveat denied" in r.isolation["processes"]


def test_ordinary_programs_are_untouched():
    code = textwrap.dedent("""
        import json, threading, numpy, platform, sys
        out = []
        t = threading.Thread(target=lambda: out.append(int(numpy.arange(4).sum())))
        t.start(); t.join()
        print(json.dumps(out), platform.system(), __name__, __file__.endswith("/main.py"), sys.argv)
    """)
    r = run_python(code, **LIMITS)
    assert r.status == "ok" and r.refused == (), r.stderr
    assert r.stdout == "[6] Linux __main__ True ['main.py']\n"
    r = run_python("def f():\n    raise ValueError('boom')\nf()", **LIMITS)       # tracebacks as `python main.py`
    assert r.status == "error" and r.stderr.startswith('Traceback (most recent call last):\n  File "/')
    assert "guard" not in r.stderr and r.stderr.strip().endswith("ValueError: boom")


@pytest.fixture
def guard_with_a_hole(monkeypatch, tmp_path):
    """The guard without its refusal of a fresh `_posixsubprocess` (as before that refusal): a program can then fork
    past the guard, which shows what the OS-level limits and the runner do with one that got around it."""
    source = open(_guard.__file__, encoding="utf-8").read()
    holed = source.replace('"_cffi_backend", FRESH_FORK_EXEC_MODULE}', '"_cffi_backend"}')
    assert holed != source
    (tmp_path / "guard.py").write_text(holed, encoding="utf-8")
    monkeypatch.setattr(_guard, "__file__", str(tmp_path / "guard.py"))  # `bootstrap` reads its source from there


def test_exec_is_denied_by_seccomp_even_where_the_python_guard_is_bypassed(guard_with_a_hole):
    # A fresh copy of _posixsubprocess (not the guard's refusing replacement) reaches fork + execve directly.
    code = textwrap.dedent("""
        import os, sys
        sys.modules.pop("_posixsubprocess", None)
        import _posixsubprocess
        err_r, err_w = os.pipe()
        pid = _posixsubprocess.fork_exec([b"/usr/bin/touch", b"made"], [b"/usr/bin/touch"], True, (err_w,), None,
                                         None, -1, -1, -1, -1, -1, -1, err_r, err_w, False, False, -1, None, None,
                                         None, -1, None, False)
        os.close(err_w)
        os.waitpid(pid, 0)
        print(os.read(err_r, 100), os.path.exists("made"))
    """)
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the fork_exec argument list is that of Python 3.11")
    assert run_python(code, **LIMITS).stdout == "b'OSError:1:' False\n"          # execve: EPERM
    assert _run_python(code, python_guard=False, **LIMITS).stdout == "b'' True\n"  # without the guard it runs


@pytest.mark.skipif(os.geteuid() != 0, reason="counting a run's processes by its fresh uid needs root")
def test_a_process_started_past_the_guard_is_killed_and_the_run_is_refused(guard_with_a_hole):
    # preexec_fn runs Python in the forked child: it leaves the process group and sleeps (a daemon); the main
    # program exits 0 at once. The run must not count as "ok" (run_tests would pass it): refused, daemon killed.
    code = textwrap.dedent("""
        import os, sys, time
        sys.modules.pop("_posixsubprocess", None)
        import _posixsubprocess
        def daemon():
            os.setsid()
            time.sleep(60)
        err_r, err_w = os.pipe()
        pid = _posixsubprocess.fork_exec([b"/bin/true"], [b"/bin/true"], True, (err_w,), None, None, -1, -1, -1, -1,
                                         -1, -1, err_r, err_w, False, False, -1, None, None, None, -1, daemon, False)
        print(pid > 0)
    """)
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the fork_exec argument list is that of Python 3.11")
    r = run_python(code, **LIMITS)
    assert r.stdout == "True\n" and r.returncode == 0 and r.processes_left == 1
    assert r.status == "refused" and r.refused == (PAST_THE_GUARD.format(n=1),)
    assert _host.processes_of(r.sandbox_uid) == []
    unguarded = _run_python(code, python_guard=False, **LIMITS)   # no guard, nothing to get past: as before
    assert unguarded.status == "ok" and unguarded.processes_left == 1 and unguarded.refused == ()


def test_the_report_cannot_be_silenced_or_turned_into_a_setup_failure():
    close_all = "import os\nos.closerange(3, 256)\ntry:\n    os.system('true')\nexcept OSError:\n    pass\nprint('on')"
    r = run_python(close_all, **LIMITS)
    assert r.returncode == 126 and r.status == "error" and r.stdout == ""   # ended at the refusal, not "ok"
    forge = ("import os\nfor fd in range(3, 1 << 16):\n    try:\n        os.write(fd, b'F forged\\nG forged\\n')\n"
             "    except OSError:\n        pass\nprint('on')")
    r = run_python(forge, **LIMITS)                   # no SandboxError: only the guard's first line can say that
    assert r.status == "ok" and r.stdout == "on\n" and r.refused == ()


def test_a_test_that_starts_a_process_fails_even_with_the_right_value():
    code = "import os\ndef add(a, b):\n    os.system('true')\n    return a + b\n"
    caught = "import os\ndef add(a, b):\n    try:\n        os.system('true')\n    except OSError:\n        pass\n" \
             "    return a + b\n"
    for program in (code, caught):
        [outcome] = run_tests(program, ["assert add(1, 2) == 3"], timeout_s=5, memory_mb=256)
        assert not outcome.passed and outcome.result.status == "refused"
    assert run_tests("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3"], timeout_s=5)[0].passed
