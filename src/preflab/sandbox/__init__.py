"""Run untrusted Python (model-written code and tests) in a limited subprocess (Linux only).

    from preflab.sandbox import run_python, run_tests
    r = run_python("print(input()[::-1])", stdin="abc", timeout_s=2)   # r.status == "ok", r.stdout == "cba\\n"
    [o.passed for o in run_tests("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3"])]   # [True]

What it is for: containing model-written code that is buggy or games its reward (hangs, floods, allocates, forks,
forges a test verdict, reads secrets from the environment or the home folder). The limits are the kernel's (rlimits,
namespaces, Landlock, seccomp) where this machine offers them, and `SandboxResult.isolation` says which; it is not a
virtual machine: a determined attacker with a kernel exploit, or with the weaker non-root set-up below, is not
stopped by it. Run untrusted code from outside your organisation in a VM or container as well.

Each run gets a fresh temporary working folder (also HOME and TMPDIR) holding `main.py` and any `files`, run by
`python -I -B` (isolated mode: no PYTHON* variables, no user site-packages, no bytecode files), which first runs the
guard (`_guard.py`, below) and then `main.py` as `__main__`, as `python main.py` would. A small launcher
(`_launcher.py`) applies the limits below and then execs the interpreter; `SandboxResult.isolation` says which were
actually applied on this machine. If the rlimits, the uid switch, the mounts, the seccomp filter
or Landlock (where the kernel offers it) fail, nothing runs (SandboxError); the network and IPC namespaces and
Landlock's availability are best effort and reported.

What is isolated (any caller)
- Processes and foreign code: starting a process fails loudly. os.system, os.popen, subprocess, os.exec*,
  os.posix_spawn*, os.fork/forkpty (and os.spawn*, pty, multiprocessing built on them), ctypes library loading,
  symbol lookup and from_address, cffi, new subinterpreters and a fresh copy of `_posixsubprocess` (it would hold
  the unguarded fork_exec) raise `SandboxRefused` (a PermissionError) from an
  audit hook installed before `main.py` runs; the run's status is then "refused" and `SandboxResult.refused` names
  the calls, even when the program caught the exception and went on (a program that cuts the guard's report pipe
  ends at its next refused call, exit status 126). A guarded run that still has processes of its own alive when
  it ends got past the guard some other way: it is "refused" too (root callers, or a user namespace, count them).
  Under that, a seccomp filter denies execve/execveat, so code
  that gets around the hook still cannot execute a program. If the guard cannot be installed nothing runs.
- Time: wall clock (`timeout_s`; the whole process group is killed) and CPU seconds per process (RLIMIT_CPU).
  When a run ends, its leftover processes are SIGKILLed and waited for (pidfds, at most 2 s) before
  `run_python` returns.
- Memory: address space per process (RLIMIT_AS = `memory_mb`); Python raises MemoryError (or a subclass, such as
  numpy's _ArrayMemoryError), reported as "memory".
  Memory outside RLIMIT_AS is closed off: memfd_create/memfd_secret are refused (seccomp) and SysV shared memory
  is capped at `memory_mb` in the run's own IPC namespace (refused where the cap cannot be set).
- Output: stdout and stderr are read with a byte cap each (`max_output_bytes`); past it the run is killed.
- Files: largest writable file (RLIMIT_FSIZE = `max_file_mb`), at most 256 open files, no core dumps.
- Environment: nothing is inherited. The child sees PATH, HOME, TMPDIR, LANG, PYTHONDONTWRITEBYTECODE and
  OMP/OPENBLAS/MKL_NUM_THREADS=1 (threads count against the process limit), plus what `env` adds.
- Local sockets: socket(AF_UNIX) is refused by a seccomp filter, so no pathname socket (D-Bus, /dev/log,
  ssh-agent, a 0666 socket in /tmp) and no abstract socket of the host can be reached; io_uring (which seccomp
  cannot see) is refused too; syscalls through another ABI (32-bit, x32) kill the process. The filter is
  required: where it cannot be installed nothing runs (SandboxError).
- IPC: a private IPC namespace per run (root: unshare; non-root: inside a user namespace): SysV shared memory,
  semaphores and message queues die with the run and are never visible to the host or to another run. Where no
  IPC namespace can be made, SysV IPC is refused instead (seccomp).
- Network (block_network=True): a new network namespace with no interface up (root; non-root where user
  namespaces are allowed), else TCP via Landlock ABI >= 4; `SandboxResult.isolation["network"]` says which.
- Landlock (Linux >= 5.13): writes are allowed only beneath the working folder and to /dev/null; everything else,
  including world-writable /tmp and /dev/shm and symlinks that point out, is denied. With ABI >= 4, TCP
  bind/connect is denied too; with ABI >= 6, the child cannot signal processes outside the sandbox. A Landlock
  domain also keeps the child from ptracing or reading /proc/<pid>/environ|mem of processes outside it.
- When the caller is root (checked on this machine: kernel 6.18, root with CAP_SYS_ADMIN):
  * user: the child runs as a fresh unprivileged uid/gid drawn for this run, no supplementary groups,
    no_new_privs. Root-owned files that are not world-writable cannot be written, mode-0600/0700 files and
    folders cannot be read, and other processes cannot be signalled or traced.
  * processes: RLIMIT_NPROC = `max_processes` for that uid (processes and threads), so a fork bomb stops
    there; when the run ends every process of that uid is killed (pidfd-pinned, so never an unrelated one),
    including ones that left the process group with setsid().
  * /proc: in a private mount namespace, a fresh procfs with hidepid=2 (Linux >= 5.8; best effort, reported as
    `isolation["proc"]`): the run sees only its own processes, not the caller's or anyone's command lines.
  * mounts: only if the interpreter lives under a folder the fresh uid cannot enter (e.g. a venv pointing into
    /root), a private mount namespace covers that folder with an empty tmpfs and binds back only the
    interpreter's trees; the rest of that folder is invisible. The caller's mounts are never changed.
- When the caller is not root, every run warns (`SandboxWarning`) and:
  * reads: Landlock read rules confine reads and execution to /usr, /lib*, /bin, /sbin, /etc, /dev, /proc,
    /sys/devices/system/cpu, the interpreter's trees and the working folder, so the caller's home (~/.ssh,
    tokens, 0600 files) is out of reach. Without Landlock this does not hold, and the warning says so.
  * processes: the run has its own user namespace (where unprivileged user namespaces are allowed); when it
    ends, every process in that namespace (or one nested in it) is killed, including ones that called setsid().

What is not isolated
- /proc for non-root callers (and root on Linux < 5.8): every process and its command line can be listed and read
  (/proc/<pid>/environ of other processes cannot). Do not pass secrets on command lines.
- `SandboxResult.limits_hit` is read partly from the program's own stderr (a MemoryError line, "File too large", a
  failed fork): a program can add those labels to its own failed run, never turn a run into "ok".
- Reading as root: any file readable by "other" users (most of /usr, /etc, world-readable project files) can be
  read; only writing is confined. Do not put secrets in world-readable files.
- Memory is limited per process, not in total: up to `max_processes` x `memory_mb`. Disk use inside the working
  folder is limited per file (`max_file_mb`) and by the wall time, not in total (on a tmpfs /tmp that is RAM).
- fork itself is refused in Python only (threads use the same syscall): a program that reaches it some other way
  (memory corruption through ctypes.memmove, a C extension it wrote) gets processes up to `max_processes`, all
  killed at the end, none able to execute a program.
- The seccomp filter denies only the calls above: every other syscall the kernel allows an unprivileged process
  is available (CPU, kernel bugs). No cgroups: CPU share, total memory and pids are not accounted as a group.
- Not root: the child keeps the caller's uid. It can trace the caller's processes where Landlock is missing and
  signal them where Landlock's ABI is below 6; RLIMIT_NPROC counts all of the caller's processes, so it is set to (their count at start +
  `max_processes`) and is approximate; without a user namespace, leftovers are killed by process group only (a
  child that calls setsid() can outlive the run); without Landlock, the child can read and write whatever the
  caller can.
- Without Landlock and as root, the fresh uid can still write world-writable places (/tmp, /dev/shm).
- `run_tests` verdicts: see `preflab.sandbox.checks`. Tests made of top-level asserts (`assert f(x)`, `assert not
  f(x)`, `assert f(x) OP literal`, chains, `abs(f(x) - a) < tol`) are judged on the caller's side and cannot be
  forged; any other test (an assert in a loop or function, `raise`) runs whole in the sandbox, and a few generic
  lines of code (an atexit hook driving the inherited pipes, a trace function that jumps over assert lines) forge
  its pass. `TestOutcome.judged_by_caller` says which.
"""
from preflab.sandbox.checks import TestOutcome, run_tests
from preflab.sandbox.runner import SandboxError, SandboxResult, SandboxWarning, run_python

__all__ = ["SandboxError", "SandboxResult", "SandboxWarning", "TestOutcome", "run_python", "run_tests"]
