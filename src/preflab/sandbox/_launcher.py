"""Sandbox launcher: applies the isolation, then execs the untrusted interpreter.

Run by `preflab.sandbox.runner` as `python -I -S _launcher.py <status_fd> <config>` (config: hex of a marshal-ed
dict; marshal rather than json keeps the start-up short). It is a standalone
script (stdlib only, no preflab imports: `-I -S` leaves neither the script's folder nor site-packages on sys.path).
It runs as the caller's user, applies every limit in this order, and then `execve`s the interpreter on `main.py`:

1. mount namespace (root only, only when the interpreter lives under a folder the sandbox user cannot enter, e.g.
   a venv pointing into /root): a private namespace in which that folder is covered by an empty read-only-by-mode
   tmpfs with only the interpreter trees bound back in; the rest of the folder is hidden.
   Also for root (best effort, reported): /proc in that private mount namespace is a fresh procfs with
   hidepid=2, so the sandbox uid sees only its own processes (not other processes' command lines, which may carry
   secrets). Only on Linux >= 5.8, where each procfs mount has its own options (before, the options were shared
   with the host's /proc).
2. namespaces (root: `unshare(CLONE_NEWIPC|CLONE_NEWNET)`; non-root: the same inside a new user namespace): a
   private IPC namespace (SysV shared memory, semaphores and message queues die with the run and cannot link runs;
   shared memory is capped at `memory_mb` in it) and, when the network is blocked, a network namespace in which the
   child sees only a loopback interface that is down (no TCP/UDP, no abstract unix sockets of the host).
3. resource limits: RLIMIT_CORE=0, RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE.
4. privilege drop (root only): supplementary groups cleared, gid and uid set to a fresh unprivileged id chosen by
   the caller, then RLIMIT_NPROC (which Linux does not enforce for uid 0).
5. no_new_privs, then Landlock (Linux >= 5.13): writes allowed only beneath the working folder and to /dev/null;
   TCP bind/connect denied (ABI >= 4); signals and abstract unix sockets scoped to the sandbox (ABI >= 6).
   Non-root callers also get Landlock read rules: reads and execution only beneath the system folders, the
   interpreter's trees and the working folder (the caller's home and its 0600 files are out of reach).
6. seccomp filter (any user): socket(AF_UNIX) (pathname and abstract unix sockets: D-Bus, /dev/log, ssh-agent),
   memfd_create and memfd_secret (memory outside RLIMIT_AS), shmget when step 2 could not cap shared memory (all of
   SysV IPC when there is no private IPC namespace), and io_uring_setup (syscalls that seccomp cannot see) fail
   with EPERM; a syscall of another architecture (32-bit/x32 entry points) kills the process.
7. parent-death signal SIGKILL, working folder, umask, then execve.

What was applied is written to `status_fd` as lines "I <aspect>\t<text>" (close-on-exec, so the caller sees EOF
once the exec succeeded); a failure that would weaken a requested limit writes "F <message>" and exits with 125.
"""
import ctypes
import marshal
import os
import resource
import signal
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
SECCOMP_MODE_FILTER = 2

# Landlock (include/uapi/linux/landlock.h); syscall numbers are shared by x86_64 and aarch64.
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
FS_EXECUTE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
FS_MAKE_ALL = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR

# seccomp (include/uapi/linux/seccomp.h, filter.h): audit arch, syscall numbers denied with EPERM, socket's number.
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, {"memfd_create": 319, "memfd_secret": 447, "io_uring_setup": 425, "shmget": 29,
                            "semget": 64, "msgget": 68}, 41),
    "aarch64": (0xC00000B7, {"memfd_create": 279, "memfd_secret": 447, "io_uring_setup": 425, "shmget": 194,
                             "semget": 190, "msgget": 186}, 198),
}
AF_UNIX, EPERM = 1, 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class Fatal(Exception):
    pass


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def expose_hidden(hidden: dict[str, list[str]]) -> str:
    """Cover each folder the sandbox user cannot enter with a tmpfs and bind only `targets` back in."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private propagation first, so nothing below can ever reach the caller's mount namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for folder, targets in hidden.items():
        fds = [(t, os.open(t, os.O_PATH)) for t in targets]  # opened before the folder is covered
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for target, fd in fds:
            os.makedirs(target, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            os.close(fd)
    return "private mount namespace; " + ", ".join(f"{k} hidden except {v}" for k, v in hidden.items())


MS_NOEXEC = 8


def private_proc(unshared: bool) -> str:
    """/proc as a fresh procfs with hidepid=2 in a private mount namespace (root): other uids' processes are
    invisible. Best effort; the result says what was done. `unshared`: the mount namespace already exists."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) < (5, 8):
        return "other processes visible (/proc not remounted: per-mount procfs options need Linux >= 5.8)"
    try:
        if not unshared:
            _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below reaches the caller's mount namespace
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    except OSError as e:
        return f"other processes visible ({e.strerror})"
    return "fresh /proc with hidepid=2: only the run's own processes are visible"


def isolate_namespaces(as_root: bool, block_network: bool, shm_bytes: int) -> dict[str, str]:
    """A private IPC namespace (always) and network namespace (when blocked); non-root: inside a user namespace."""
    flags = CLONE_NEWIPC | (CLONE_NEWNET if block_network else 0)
    report = {}
    try:
        if as_root:
            _check(libc.unshare(flags), "unshare(CLONE_NEWIPC|CLONE_NEWNET)")
        else:
            uid, gid = os.getuid(), os.getgid()
            _check(libc.unshare(CLONE_NEWUSER | flags), "unshare(CLONE_NEWUSER|CLONE_NEWIPC|CLONE_NEWNET)")
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except OSError as e:
        report["ipc"] = f"no IPC namespace ({e.strerror}): SysV IPC objects are shared with the host"
        if block_network:
            report["network"] = f"no network namespace ({e.strerror})"
        return report
    report["ipc"] = ("private IPC namespace (SysV objects die with the run)" + ("" if as_root else
                     ", in a user namespace of the run") + _cap_shm(shm_bytes))
    if block_network:
        report["network"] = "network namespace (no interface up)"
    return report


def _cap_shm(shm_bytes: int) -> str:
    """Cap SysV shared memory in the new IPC namespace at `shm_bytes` (it is not counted in RLIMIT_AS)."""
    try:
        for name, value in (("shmmax", shm_bytes), ("shmall", max(1, shm_bytes // os.sysconf("SC_PAGE_SIZE")))):
            with open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write(str(value))
        return f"; shared memory capped at {shm_bytes >> 20} MB"
    except OSError as e:
        return f"; shared memory not capped ({e.strerror})"


def seccomp_filter(deny_shmget: bool, deny_sysv: bool) -> str:
    """Install the seccomp filter described in the module docstring (needs no_new_privs). `deny_shmget`: also
    refuse SysV shared memory (when it could not be capped in the run's IPC namespace); `deny_sysv`: refuse all
    SysV IPC (when the run has no IPC namespace of its own)."""
    entry = _SECCOMP_ARCH.get(os.uname().machine)
    if entry is None:
        raise Fatal(f"no seccomp filter for architecture {os.uname().machine}")
    arch, denied, socket_nr = entry
    optional = {"shmget": deny_shmget or deny_sysv, "semget": deny_sysv, "msgget": deny_sysv}
    denied = {k: v for k, v in denied.items() if optional.get(k, True)}
    ld_w, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, deny = 0x7FFF0000, 0x80000000, 0x00050000 | EPERM
    prog = [(ld_w, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld_w, 0, 0, 0)]
    if arch == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 syscall numbers
    for nr in denied.values():
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, deny)]
    # socket(domain, ...): the domain is args[0]; its low 32 bits are at offset 16 (little-endian).
    prog += [(jeq, 0, 3, socket_nr), (ld_w, 0, 0, 16), (jeq, 0, 1, AF_UNIX), (ret, 0, 0, deny), (ret, 0, 0, allow)]
    code = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(buf)))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0), "prctl(PR_SET_SECCOMP)")
    return ("seccomp: unix sockets, " + ", ".join(denied) + " refused; foreign syscall ABIs killed")


def set_limits(limits: dict[str, int]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, value in limits.items():
        rid = getattr(resource, "RLIMIT_" + name.upper())
        soft, hard = (value, value + 1) if name == "cpu" else (value, value)
        _, cur_hard = resource.getrlimit(rid)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(rid, (soft, hard))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise Fatal(f"could not switch to uid {uid}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise Fatal("regained root after dropping privileges")


def count_own_processes() -> int:
    uid, n = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return n


def landlock(workdir: str, block_network: bool, readable: list[str] | None) -> str:
    numbers = _LANDLOCK_SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return "no Landlock (unknown syscall numbers on this architecture)"
    create, add_rule, restrict = numbers
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return f"no Landlock ({os.strerror(ctypes.get_errno())})"
    fs = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_ALL
    fs |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    rules = [(workdir, fs | (FS_READ if readable is not None else 0)),
             ("/dev/null", FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0))]
    if readable is not None:
        rules += [(path, FS_READ) for path in readable if os.path.exists(path)]
        fs |= FS_READ
    net = NET_BIND_TCP | NET_CONNECT_TCP if (abi >= 4 and block_network) else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = ctypes.create_string_buffer(struct.pack("<QQQ", fs, net, scoped))
    ruleset = _check(libc.syscall(create, attr, ctypes.c_size_t(24), ctypes.c_uint32(0)), "landlock_create_ruleset")
    for path, rights in rules:
        fd = os.open(path, os.O_PATH)
        if not os.path.isdir(path):
            rights &= FS_WRITE_FILE | FS_TRUNCATE | FS_EXECUTE | FS_READ_FILE  # file rules take file rights only
        rule = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd))
        _check(libc.syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint32(0)),
               f"landlock_add_rule {path}")
        os.close(fd)
    _check(libc.syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
    os.close(ruleset)
    parts = ["writes only beneath the working folder and to /dev/null"]
    if readable is not None:
        shown = ", ".join(p for p in readable if os.path.exists(p))
        parts.append(f"reads only beneath {shown} and the working folder")
    parts.append("TCP bind/connect denied" if net else "TCP not restricted")
    parts.append("signals and abstract unix sockets scoped" if scoped else "signals not scoped")
    return f"Landlock ABI {abi}: " + "; ".join(parts)


def _fatal(status_fd: int, message: str) -> None:
    os.write(status_fd, ("F " + message.replace("\n", " ") + "\n").encode())
    os._exit(125)


def main() -> None:
    status_fd = int(sys.argv[1])
    os.set_inheritable(status_fd, False)  # closed by a successful execve: the caller then sees EOF
    cfg = marshal.loads(bytes.fromhex(sys.argv[2]))
    report: dict[str, str] = {}
    try:
        if os.getppid() != cfg["parent_pid"]:
            raise Fatal("the calling process is gone")
        as_root = cfg["uid"] is not None
        if cfg["hidden"]:
            report["mounts"] = expose_hidden(cfg["hidden"])
        if as_root:
            report["proc"] = private_proc(unshared=bool(cfg["hidden"]))
        report.update(isolate_namespaces(as_root, cfg["block_network"], cfg["limits"]["as"]))
        set_limits(cfg["limits"])
        if as_root:
            drop_privileges(cfg["uid"], cfg["gid"])
            resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_processes"], cfg["max_processes"]))
            report["user"] = f"uid {cfg['uid']} (unprivileged, fresh for this run); process limit enforced"
        else:
            n = count_own_processes() + cfg["max_processes"]
            set_limits({"nproc": n})
            report["user"] = f"caller's uid {os.getuid()}; process limit approximate ({n} for the whole user)"
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        report["filesystem"] = landlock(cfg["workdir"], cfg["block_network"], cfg["readable"])
        ipc = report.get("ipc", "")
        report["syscalls"] = seccomp_filter(deny_shmget="capped at" not in ipc, deny_sysv=ipc.startswith("no "))
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != cfg["parent_pid"]:
            raise Fatal("the calling process is gone")
        os.chdir(cfg["workdir"])
        os.umask(0o022)
    except (Fatal, OSError, ValueError) as e:
        _fatal(status_fd, f"{type(e).__name__}: {e}")
    lines = "".join(f"I {k}\t{v}\n" for k, v in report.items())
    if not as_root and "user namespace" in report.get("ipc", ""):  # lets the caller find every process of the run
        lines += f"U {os.stat('/proc/self/ns/user').st_ino}\n"
    os.write(status_fd, lines.encode())
    try:
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as e:
        _fatal(status_fd, f"execve {cfg['argv'][0]}: {e}")


if __name__ == "__main__":
    main()
