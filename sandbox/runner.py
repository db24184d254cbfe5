"""Run one untrusted program, isolated, under hard limits.

Layers (each one would stop most attacks alone; together they are the design):
1. bubblewrap: new user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all``) with
   nested user namespaces disabled (``--disable-userns``): no network at all (not even the host's
   loopback), its own pid 1, so every process it starts, daemons included, dies with the sandbox.
   The root filesystem is a read-only tmpfs holding only ``/usr`` (and its ``/bin``, ``/lib``
   links) read-only, a fresh ``/proc``, a read-only ``/dev`` with a size-capped ``/dev/shm``, a
   size-capped ``/tmp``, and ``/work``: a size-capped tmpfs holding the request's files read-only
   (only the compile step writes to the run's host directory, its output bounded by RLIMIT_FSIZE).
   ``/etc``, ``/root``, ``/home`` and the service's files are not there to read.
2. A seccomp filter (``sandbox.isolation.seccomp_filter``): no ptrace (a program that could
   ptrace its namespace's init could outlive the service), io_uring, keyrings, bpf, perf, mounts,
   namespace changes, module loading.
3. Its own uid per request when the service runs as root (``setpriv`` drops to it before
   bubblewrap starts; as root bubblewrap would only pretend to): per-uid limits are per run, and
   whatever still runs as that uid when the request ends is killed. An empty environment.
4. A cgroup per process launch where the cgroup filesystem is writable: the total memory of all
   its processes and tmpfs pages (``memory_mb``), its process count, its OOM kills; every process
   in it is killed at the end. rlimits as well: CPU seconds, address space, processes/threads,
   file size, open files.
5. Its own session / process group, SIGKILLed as a whole at the wall-clock deadline, when the
   output cap is exceeded, or when the request is cancelled (the client left); stdout and stderr
   are read with a cap.
6. A fresh temporary working directory, removed afterwards off the event loop (and, after a
   SIGKILLed service, by the next service's start-up sweep: ``sweep_dead_services``).

Verdicts cannot be forged by the program: ``sandbox_error`` means bubblewrap itself reported no
started child (``--json-status-fd``), never anything the program printed.

Without bubblewrap (or user namespaces) the service refuses to start unless told to run in the
documented weak mode (``--allow-weak-isolation``: layers 3-6 only, no filesystem or network
isolation).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace

from sandbox.isolation import Cgroups, RunCgroup, UidPool, seccomp_filter
from sandbox.languages import LANGUAGES, Language

log = logging.getLogger("sandbox")
NOBODY = 65534  # the uid start-up's bubblewrap check runs as (runs get their own: UidPool)
PR_SET_CHILD_SUBREAPER = 36
_live_children: set[int] = set()  # direct children whose exit asyncio is still waiting for
_subreaper = False
STATUSES = ("ok", "compile_error", "runtime_error", "timeout", "memory_limit", "output_limit", "sandbox_error")


@dataclass
class Limits:
    timeout_s: float = 10.0  # wall clock, from start to the last byte of output
    memory_mb: int = 512  # address space of each process, and (with cgroups) all processes and tmpfs together
    max_processes: int = 64  # processes + threads of the run (RLIMIT_NPROC of its own uid; the cgroup's pids.max)
    max_output_bytes: int = 1 << 20  # stdout + stderr kept; more ends the run as output_limit
    max_file_bytes: int = 16 << 20  # largest file it may write (RLIMIT_FSIZE); /tmp, /work, /dev/shm: 4x this each
    max_open_files: int = 64


@dataclass
class RunResult:
    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --- the service's isolation state: uid pool and cgroups --------------------------------------------
@dataclass
class Isolation:
    uids: UidPool | None  # None: the service is not root, runs share its uid
    cgroups: Cgroups | None  # None: memory is bounded per process only
    cgroup_note: str
    seccomp: bytes | None

    def describe(self) -> dict:
        return {"uid_per_run": self.uids is not None, "cgroups": self.cgroup_note,
                "seccomp": self.seccomp is not None}


_isolation: Isolation | None = None
# not under $TMPDIR: every service on this host must see the same locks, whatever its environment
UID_LOCK_DIR = "/tmp/or1-sandbox-uid-locks"


def isolation() -> Isolation:
    """This process's isolation state, set up on first use (``python -m sandbox`` does it at
    start-up): claim a uid block and kill what dead services' runs left running, create this
    service's cgroup directory and remove dead services' ones."""
    global _isolation
    if _isolation is None:
        name = _service_name()
        uids = UidPool(UID_LOCK_DIR) if os.geteuid() == 0 else None
        if uids is not None:
            killed = uids.sweep_unheld_blocks()
            if killed:
                log.warning("killed %d process(es) left running by stopped sandbox services", killed)
        Cgroups.sweep_dead_services(lambda other: _service_alive(other))
        cgroups, note = Cgroups.create(name)
        if cgroups is None:
            log.warning("no per-run cgroups (%s): memory_mb bounds each process, not a run's total", note)
        _isolation = Isolation(uids, cgroups, note, seccomp_filter())
        atexit.register(shutdown_isolation)
    return _isolation


def shutdown_isolation() -> None:
    """Kill every process of this service's runs and remove its cgroups and run directories."""
    global _isolation
    if _isolation is None:
        return
    if _isolation.cgroups is not None:
        _isolation.cgroups.remove_all()
    if _isolation.uids is not None:
        _isolation.uids.close()
    _isolation = None
    remove_service_dir()


def bwrap_available() -> str | None:
    """None if bubblewrap can create its namespaces here, else the reason it cannot."""
    if shutil.which("bwrap") is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    cmd = _privilege_drop(NOBODY) + ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
                                     "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                                     "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                                     "/usr/bin/true"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start: {exc}"
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.strip()[:300]}"
    return None


def _privilege_drop(uid: int) -> list[str]:
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--no-new-privs"]
    return []  # the service already runs unprivileged; the user namespace maps it


def _bwrap(workdir: str, limits: Limits, writable_workdir: bool, seccomp_fd: int | None, status_fd: int) -> list[str]:
    """bubblewrap's arguments. ``writable_workdir`` (the compile step): ``/work`` is the host run
    directory, so the build output stays for the runs; otherwise ``/work`` is a size-capped tmpfs
    with the run directory's files bound read-only into it, so a run writes nothing to the host."""
    tmpfs_bytes = str(4 * limits.max_file_bytes)
    if writable_workdir:
        work = ["--bind", workdir, "/work"]
    else:
        work = ["--size", tmpfs_bytes, "--tmpfs", "/work"]
        for name in sorted(os.listdir(workdir)):
            work += ["--ro-bind", os.path.join(workdir, name), f"/work/{name}"]
    return ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--hostname", "sandbox", "--json-status-fd", str(status_fd),
            *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--size", tmpfs_bytes, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--size", tmpfs_bytes, "--tmpfs", "/tmp", *work, "--remount-ro", "/", "--chdir", "/work",
            "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/work",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--"]


def _set_limits(limits: Limits, cpu_s: int, cgroup: RunCgroup | None):
    def apply() -> None:
        if cgroup is not None:
            cgroup.attach()  # before anything else runs: every descendant is in it, and cannot leave
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


async def _read_capped(stream: asyncio.StreamReader, sink: bytearray, budget: list[int],
                       over: asyncio.Event) -> None:
    """Keep at most the budget; past it, signal and go on draining to EOF (asyncio's
    ``Process.wait`` also waits for the pipes to close, so they must be read to the end)."""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        keep = max(0, min(len(chunk), budget[0]))
        sink += chunk[:keep]
        budget[0] -= len(chunk)
        if budget[0] < 0:
            over.set()


def _become_subreaper() -> None:
    """Adopt our sandboxes' orphans instead of leaving them to the host's init.

    bubblewrap's outer process exits without reaping the namespace's init, which then waits, a
    zombie, for the host's pid 1. Some container inits reap late or never; the zombies still
    count towards the sandbox uid's RLIMIT_NPROC and new sandboxes fail with EAGAIN (measured:
    one zombie per run, bwrap failing after ~60 runs). As a subreaper this process gets them.
    """
    global _subreaper
    if not _subreaper:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _subreaper = True


def _reap_orphans() -> None:
    """Reap adopted zombies; never a pid asyncio is waiting on (that would steal its status)."""
    import glob

    for children_file in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            pids = [int(p) for p in open(children_file).read().split()]
        except OSError:
            continue
        for pid in pids:
            if pid in _live_children:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state == "Z":
                    os.waitpid(pid, os.WNOHANG)
            except (OSError, IndexError, ChildProcessError):
                pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _kill_sandbox(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the namespace's init, let bubblewrap reap it, then SIGKILL whatever is left.

    Killing bubblewrap's init (the outer bwrap's child) ends every process of the pid namespace,
    daemons included; the outer bwrap then reaps it and exits by itself. Killing the outer one
    first would orphan the init as a zombie that only the host's pid 1 can reap (and some
    container inits never do: measured here, one zombie per killed run).
    """
    pid = proc.pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    if not children:
        # killed before bubblewrap started the namespace's init (a request cancelled at once): no
        # init to reap, so end the outer process now rather than wait for the program to finish; an
        # init forked meanwhile dies with it (--die-with-parent) and this subreaper collects it
        _kill_group(pid)
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=5.0)
    except asyncio.TimeoutError:
        pass
    _kill_group(pid)


async def _execute(argv: list[str], stdin: str, limits: Limits, timeout_s: float, where: "_Where",
                   writable_workdir: bool = False) -> RunResult:
    """Start ``argv`` in the run's sandbox and supervise it to the end. Cancelling the calling task
    (the client left) kills the run before the cancellation goes on."""
    iso = isolation()
    cpu_s = max(1, int(timeout_s) + 1)
    _become_subreaper()
    child_fds: list[int] = []
    status_read = None
    cmd = _privilege_drop(where.uid)
    if where.isolated:
        seccomp_fd = None
        if iso.seccomp is not None:
            seccomp_fd, seccomp_write = os.pipe()  # bubblewrap reads the filter from it
            os.write(seccomp_write, iso.seccomp)
            os.close(seccomp_write)
            child_fds.append(seccomp_fd)
        status_read, status_write = os.pipe()  # bubblewrap reports the child it started, the program cannot
        os.set_blocking(status_read, False)
        child_fds.append(status_write)
        cmd += _bwrap(where.workdir, limits, writable_workdir, seccomp_fd, status_write)
    cmd += argv
    cgroup = None
    t0 = time.monotonic()
    try:
        if iso.cgroups is not None:
            cgroup = iso.cgroups.new(f"run-{where.uid}-{time.monotonic_ns()}", limits.memory_mb * 2**20,
                                     limits.max_processes)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd="/" if where.isolated else where.workdir, start_new_session=True, pass_fds=child_fds,
            preexec_fn=_set_limits(limits, cpu_s, cgroup), env={"PATH": "/usr/bin"})
    except BaseException as exc:  # OSError, or cancelled while starting
        if cgroup is not None:
            cgroup.remove()
        if not isinstance(exc, OSError):
            raise
        return RunResult("sandbox_error", stderr=f"could not start: {exc}")
    finally:
        for fd in child_fds:
            os.close(fd)
    _live_children.add(proc.pid)
    try:
        result = await _supervise(proc, stdin, limits, timeout_s, t0)
    except asyncio.CancelledError:
        await asyncio.shield(_kill_sandbox(proc))
        raise
    finally:
        _live_children.discard(proc.pid)
        if cgroup is not None:
            cgroup.kill()  # anything that survived its namespace's end
        _reap_orphans()
        started = _bwrap_started(status_read) if status_read is not None else True
        if status_read is not None:
            os.close(status_read)
        oom_kills = cgroup.oom_kills() if cgroup is not None else 0
        if cgroup is not None:
            # not awaited: rmdir may wait for killed processes to finish exiting; the verdict need not
            asyncio.get_running_loop().run_in_executor(None, cgroup.remove)
    if not started:
        result.status = "sandbox_error"  # bubblewrap failed before starting the program
    elif oom_kills and result.status in ("runtime_error", "ok"):
        result.status = "memory_limit"  # the run's cgroup hit memory_mb and the kernel killed a process
    return result


def _bwrap_started(status_fd: int) -> bool:
    """Whether bubblewrap reported starting the program (``{"child-pid": N}`` on its status fd)."""
    data = b""
    try:
        while len(data) < 65536:
            chunk = os.read(status_fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    for line in data.decode(errors="replace").splitlines():
        try:
            if "child-pid" in json.loads(line):
                return True
        except (json.JSONDecodeError, TypeError):
            continue
    return False


def _ignore_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def _supervise(proc: asyncio.subprocess.Process, stdin: str, limits: Limits, timeout_s: float,
                     t0: float) -> RunResult:
    out, err = bytearray(), bytearray()
    budget = [limits.max_output_bytes]
    over = asyncio.Event()

    async def feed() -> None:
        try:
            proc.stdin.write(stdin.encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.stdin.close()

    readers = asyncio.gather(feed(), _read_capped(proc.stdout, out, budget, over),
                             _read_capped(proc.stderr, err, budget, over))
    over_wait = asyncio.ensure_future(over.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait({readers, over_wait}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if not done:
            timed_out = True
    except asyncio.CancelledError:
        readers.cancel()
        readers.add_done_callback(_ignore_outcome)  # no "exception was never retrieved" noise
        raise
    finally:
        over_wait.cancel()
    if timed_out or over.is_set():
        await _kill_sandbox(proc)
    try:
        await asyncio.wait_for(proc.wait(), timeout=max(0.5, timeout_s - (time.monotonic() - t0)))
    except asyncio.TimeoutError:
        timed_out = True
        await _kill_sandbox(proc)
        await proc.wait()
    _kill_group(proc.pid)  # anything left in the group (the namespace is gone with bwrap anyway)
    try:
        await asyncio.wait_for(readers, timeout=2.0)  # the pipes reach EOF once the group is dead
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass
    wall = time.monotonic() - t0
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    code = proc.returncode
    # what the program printed never decides sandbox_error: _execute does, from bubblewrap's report
    if over.is_set():
        status = "output_limit"
    elif timed_out or code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        status = "timeout"
    elif code == 0:
        status = "ok"
    elif code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr:
        status = "output_limit"
    elif "MemoryError" in stderr or "bad_alloc" in stderr or "Cannot allocate memory" in stderr:
        status = "memory_limit"
    else:
        status = "runtime_error"
    return RunResult(status, stdout, stderr, code, round(wall, 4))


@dataclass
class _Where:
    """Where a request's processes run: its host directory, its uid, bubblewrap or not."""
    workdir: str
    uid: int
    isolated: bool


class Program:
    """One request's program, written and (for compiled languages) built once, then run any number
    of times (one per test): ``async with Program(...) as program: await program.run(stdin)``.

    Compilation runs under its own limits (``Language.compile_timeout_s`` / ``compile_memory_mb``),
    whatever the request's; a failed or timed-out build is ``compile_error`` for every run.
    """

    def __init__(self, language: str, code: str, limits: Limits | None = None, isolated: bool = True,
                 extra_files: dict[str, str] | None = None):
        self.limits = limits or Limits()
        self.lang: Language | None = LANGUAGES.get(language)
        self.language, self.code, self.isolated, self.extra_files = language, code, isolated, extra_files or {}
        self.failed: RunResult | None = None  # the result every run returns when the program cannot run
        self.where: _Where | None = None

    async def __aenter__(self) -> "Program":
        if self.lang is None:
            self.failed = RunResult("sandbox_error",
                                    stderr=f"unknown language {self.language!r}; known: {sorted(LANGUAGES)}")
            return self
        uids = isolation().uids
        uid = uids.acquire() if uids is not None else os.geteuid()
        self.where = _Where(new_run_dir(), uid, self.isolated)
        files = {self.lang.source: self.code, **self.extra_files}
        for name, text in files.items():
            with open(os.path.join(self.where.workdir, name), "w") as f:
                f.write(text)
        if os.geteuid() == 0:
            for name in [*files, ""]:
                os.chown(os.path.join(self.where.workdir, name), uid, uid)
        if self.lang.compile:
            build_limits = replace(self.limits, memory_mb=self.lang.compile_memory_mb)
            built = await _execute(list(self.lang.compile), "", build_limits, self.lang.compile_timeout_s,
                                   self.where, writable_workdir=True)
            if built.status != "ok":
                reason = (f"compilation timed out after {self.lang.compile_timeout_s:g} s"
                          if built.status == "timeout" else "compilation failed")
                self.failed = RunResult("compile_error", built.stdout, f"{reason}:\n{built.stderr}",
                                        built.exit_code, built.wall_s)
        return self

    async def run(self, stdin: str = "", timeout_s: float | None = None) -> RunResult:
        """One run; ``timeout_s`` (at most the request's) when less time is left for it."""
        if self.failed is not None:
            return replace(self.failed)
        timeout_s = self.limits.timeout_s if timeout_s is None else min(timeout_s, self.limits.timeout_s)
        return await _execute(list(self.lang.run), stdin, self.limits, timeout_s, self.where)

    async def __aexit__(self, *exc) -> None:
        if self.where is None:
            return
        uids = isolation().uids
        # off the event loop: killing leftovers and removing a directory may take a while
        await asyncio.shield(asyncio.to_thread(self._clean_up, uids))

    def _clean_up(self, uids: UidPool | None) -> None:
        if uids is not None:
            uids.release(self.where.uid, kill_leftovers=isolation().cgroups is None)
        remove_run_dir(self.where.workdir)


async def run_program(language: str, code: str, stdin: str = "", limits: Limits | None = None,
                      isolated: bool = True, extra_files: dict[str, str] | None = None) -> RunResult:
    """Run ``code`` in ``language`` with ``stdin``; never raises for anything the program does."""
    async with Program(language, code, limits, isolated, extra_files) as program:
        return await program.run(stdin)


# --- run directories ------------------------------------------------------------------------------
# Each service keeps its runs' working directories under RUNS_ROOT/svc-<pid>-<start time>, so a
# service started after one that was SIGKILLed can tell the dead one's leftovers from the live
# directories of another service on the same host, and remove them.
RUNS_ROOT = os.path.join(tempfile.gettempdir(), "or1-sandbox-runs")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _service_name(pid: int | None = None) -> str:
    """``svc-<pid>-<start time>``: names this service's run directories and cgroups."""
    pid = pid or os.getpid()
    return f"svc-{pid}-{_start_time(pid)}"


def _service_alive(name: str) -> bool:
    parts = name.split("-")
    return len(parts) == 3 and parts[0] == "svc" and parts[1].isdigit() and _service_name(int(parts[1])) == name


def _service_dir() -> str:
    path = os.path.join(RUNS_ROOT, _service_name())
    os.makedirs(path, mode=0o711, exist_ok=True)
    return path


def remove_service_dir() -> None:
    remove_run_dir(os.path.join(RUNS_ROOT, _service_name()))


def new_run_dir() -> str:
    return tempfile.mkdtemp(prefix="run-", dir=_service_dir())


def remove_run_dir(path: str) -> None:
    """Remove a directory tree; never raises (what cannot be removed is logged and left).

    Iterative and relative to one open directory at a time, so any depth works: ``shutil.rmtree``
    recurses (a tree 3,000 levels deep raised ``RecursionError``) and joins paths (past PATH_MAX).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
        return
    stack = [(None, _remove_files(fd))]  # (this directory's name in its parent, subdirectories left)
    try:
        while stack:
            name, subdirs = stack[-1]
            if subdirs:
                sub = subdirs.pop()
                try:
                    child = os.open(sub, flags, dir_fd=fd)
                except OSError:
                    continue
                os.close(fd)
                fd = child
                stack.append((sub, _remove_files(fd)))
                continue
            stack.pop()
            if name is None:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                log.warning("could not remove a directory under %s: %s", path, exc)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _remove_files(dir_fd: int) -> list[str]:
    """Unlink every non-directory in the open directory; return its subdirectories' names."""
    subdirs = []
    try:
        os.fchmod(dir_fd, stat.S_IRWXU)  # a program may have left it unreadable or unwritable
    except OSError:
        pass
    try:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=dir_fd)
                except OSError:
                    pass
    except OSError:
        pass
    return subdirs


def sweep_dead_services() -> int:
    """Remove the run directories of services that are no longer running (SIGKILLed ones leave
    theirs behind); returns how many services' directories were removed."""
    removed = 0
    try:
        entries = os.listdir(RUNS_ROOT)
    except OSError:
        return 0
    for entry in entries:
        if not entry.startswith("svc-") or _service_alive(entry):
            continue  # not a service's, or that service is alive
        remove_run_dir(os.path.join(RUNS_ROOT, entry))
        removed += 1
    return removed
