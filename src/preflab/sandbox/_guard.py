"""Sandbox guard: the first code of every sandboxed interpreter; it makes starting a process fail loudly.

Run by the runner as `python -I -B -c <bootstrap>` (see `bootstrap`): it executes this file's source in a namespace
of its own and calls `start(report_fd)`, which installs the guard and then runs `main.py` as `__main__`. Standalone
(stdlib only, no preflab imports, Python >= 3.8 syntax): it runs inside the sandbox, with any `python=` interpreter.

What it does, in this order:
1. seccomp (OS level; no_new_privs is already set by the launcher): execve and execveat fail with EPERM from now on,
   so no program can be executed by any route, including ones that get around step 2 (a raw syscall, a library's
   own fork/exec, a module copy of `_posixsubprocess`). Forking alone stays possible at this level (threads share
   the syscall) and is bounded by the process limit.
2. an audit hook (PEP 578; hooks cannot be removed) that refuses, by raising `SandboxRefused` (a PermissionError,
   errno EPERM) before anything happens: os.system, os.popen and subprocess (event subprocess.Popen), os.exec*,
   os.posix_spawn/posix_spawnp, os.fork, os.forkpty and what builds on them (os.spawn*, pty.fork/spawn,
   multiprocessing's fork start method), `_posixsubprocess.fork_exec` called directly (replaced by a refusing
   function; multiprocessing's spawn/forkserver methods use it; a fresh copy of the module, which would hold the
   original, is refused at its import), ctypes library loading, symbol lookup and
   `from_address` (ctypes.dlopen, ctypes.dlsym, ctypes.cdata), importing cffi, and new subinterpreters (their
   audit hooks would be empty; refused at creation and at the import of the modules that make them). The hook
   uses no global names (everything is bound as a default argument), so monkeypatching builtins or `os` does not
   switch it off.
3. every refusal is written as a line "R <call>" to `report_fd` (a pipe the caller reads after the run), so a
   program that catches the exception and carries on is still rated as refused; if that line cannot be written
   (the program closed or flooded the pipe) the process ends at once with exit status 126.

The first line written to `report_fd` is "G <what is refused>" once 1-2 are in place, or "F <message>" (exit 125)
if they could not be installed, in which case `main.py` never runs. The Python-level refusal is not the security
boundary (a program that deliberately corrupts the interpreter's memory could bypass it); the OS-level limits of
the launcher and step 1 are.
"""
import os
import sys

EPERM = 1
REFUSED_EXIT = 126
# audit arch, execve, execveat (include/uapi/linux/audit.h, asm/unistd.h)
_SECCOMP = {"x86_64": (0xC000003E, 59, 322), "aarch64": (0xC00000B7, 221, 281)}
FORK_EXEC_EVENT = "_posixsubprocess.fork_exec"
REFUSED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
    "subprocess.Popen", FORK_EXEC_EVENT, "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
    "ctypes.call_function", "cpython.PyInterpreterState_New",
})
# the subinterpreter modules are refused at import: refusing only the creation event crashes CPython 3.12.1
# (SIGSEGV after the hook raises in PyInterpreterState_New), and 3.13.0 creates the interpreter without the event
# reaching a sys.addaudithook hook; _testcapi / _testinternalcapi have run_in_subinterp
SUBINTERPRETER_MODULES = frozenset({"_xxsubinterpreters", "_interpreters", "_testcapi", "_testinternalcapi"})
# a fresh copy of _posixsubprocess (re-imported after `del sys.modules[...]`, importlib.util.module_from_spec,
# _imp.create_dynamic: each raises the "import" event; a cached import raises none) would hold the original fork_exec,
# whose preexec_fn runs Python in a forked child: refused (the guard imports it once, before the hook is in place)
FRESH_FORK_EXEC_MODULE = "_posixsubprocess"
REFUSED_IMPORTS = frozenset({"cffi", "_cffi_backend", FRESH_FORK_EXEC_MODULE}) | SUBINTERPRETER_MODULES
REASON = ("refused by preflab.sandbox: sandboxed code may not start processes, execute programs or call C "
          "functions through ctypes/cffi")
SUMMARY = ("execve/execveat denied (seccomp); os.system, os.popen, subprocess, os.exec*, os.posix_spawn*, "
           "os.fork/forkpty (os.spawn*, pty, multiprocessing), ctypes library loading and cffi refused (audit hook)")


class SandboxRefused(PermissionError):
    """A process start (or foreign call) refused inside preflab.sandbox; its message names the call."""


SandboxRefused.__module__ = "preflab.sandbox"


def _shown(value) -> str:
    """A short rendering of a command or argv that runs no code of the program (builtin types only)."""
    kind = type(value)
    if kind is bytes:
        value, kind = value.decode("utf-8", "replace"), str
    if kind is str:
        text = repr(value)
    elif (kind is list or kind is tuple) and all(type(v) is str or type(v) is bytes for v in value):
        text = repr([v.decode("utf-8", "replace") if type(v) is bytes else v for v in value])
    elif value is None:
        text = ""
    else:
        text = "<" + kind.__name__ + ">"
    return text if len(text) <= 200 else text[:197] + "..."


def describe(event: str, args: tuple) -> str:
    """`event(args)` as a reader would write the call, e.g. "os.system('touch x')"."""
    if event == "import":
        return "import " + str(args[0])
    detail = None
    if event in ("os.system", "ctypes.dlopen", FORK_EXEC_EVENT) and args:
        detail = args[0]
    elif event in ("os.exec", "os.posix_spawn", "subprocess.Popen", "ctypes.dlsym") and len(args) > 1:
        detail = args[1]
    return event + "(" + _shown(detail) + ")"


def make_hook(report_fd: int):
    """The audit hook: refuse (report, then raise) the events above; every other event passes untouched."""

    def preflab_sandbox_audit(event, args, _events=REFUSED_EVENTS, _imports=REFUSED_IMPORTS, _fd=report_fd,
                              _write=os.write, _exit=os._exit, _describe=describe, _refused=SandboxRefused,
                              _reason=REASON, _eperm=EPERM, _code=REFUSED_EXIT, _Exception=Exception,
                              _OSError=OSError, _str=str):
        if event == "import":
            if args[0] not in _imports:
                return
        elif event not in _events:
            return
        try:
            what = _describe(event, args)
        except _Exception:
            what = _str(event)
        try:
            _write(_fd, ("R " + what + "\n").encode("utf-8", "replace"))
        except _OSError:
            _exit(_code)  # the report cannot be written: end the run rather than let the refusal go unseen
        raise _refused(_eperm, what + " " + _reason)

    return preflab_sandbox_audit


def deny_exec_syscalls() -> None:
    """A seccomp filter on top of the launcher's: execve and execveat fail with EPERM."""
    import ctypes
    import struct

    entry = _SECCOMP.get(os.uname().machine)
    if entry is None:
        raise OSError("no seccomp syscall numbers for architecture " + os.uname().machine)
    arch, execve, execveat = entry
    ld_w, jeq, ret = 0x20, 0x15, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | EPERM
    prog = [(ld_w, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, allow),  # another ABI: the launcher's filter kills it
            (ld_w, 0, 0, 0), (jeq, 2, 0, execve), (jeq, 1, 0, execveat), (ret, 0, 0, allow), (ret, 0, 0, deny)]
    code = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(buf)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, fprog, 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_SECCOMP): " + os.strerror(err))


def refuse_fork_exec(hook) -> None:
    """Replace `_posixsubprocess.fork_exec` (no audit event of its own) by a function that is refused."""
    import _posixsubprocess

    def fork_exec(*args, _hook=hook, _event=FORK_EXEC_EVENT, _refused=SandboxRefused, _eperm=EPERM,
                  _reason=REASON, **kwargs):
        _hook(_event, args[:1])
        raise _refused(_eperm, _event + " " + _reason)

    _posixsubprocess.fork_exec = fork_exec


def install(report_fd: int) -> None:
    os.set_blocking(report_fd, False)  # a flooded pipe makes a refusal end the run, never hang it
    deny_exec_syscalls()
    hook = make_hook(report_fd)
    refuse_fork_exec(hook)
    sys.addaudithook(hook)


def run_main(path: str) -> None:
    """Run `path` as `__main__`, as `python main.py` would (absolute `__file__`, `sys.argv == ['main.py']`)."""
    import importlib.machinery

    main = sys.modules["__main__"]
    full = os.path.abspath(path)
    main.__file__, main.__cached__ = full, None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", full)
    sys.argv[:] = [path]
    try:
        with open(full, "rb") as f:
            code = compile(f.read(), full, "exec", dont_inherit=True)
        exec(code, main.__dict__)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - printed as the interpreter would, without the guard's own frames
        e.__traceback__ = e.__traceback__.tb_next
        sys.excepthook(type(e), e, e.__traceback__)
        sys.exit(1)


def start(report_fd: int) -> None:
    try:
        install(report_fd)
    except BaseException as e:  # noqa: BLE001 - any failure means the guard is not in place: run nothing
        try:
            os.write(report_fd, ("F guard: " + type(e).__name__ + ": " + str(e).replace("\n", " ") + "\n").encode())
        finally:
            os._exit(125)
    os.write(report_fd, ("G " + SUMMARY + "\n").encode())
    run_main("main.py")


def bootstrap(report_fd: int) -> str:
    """The `-c` program: this file's source, run in its own namespace (not `__main__`'s), then `start`."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return (f"exec(compile({source + chr(10) + f'start({int(report_fd)})' + chr(10)!r}, '<preflab.sandbox guard>', "
            f"'exec'), {{'__name__': 'preflab_sandbox_guard', '__builtins__': __builtins__}})")
