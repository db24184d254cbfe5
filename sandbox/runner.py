"""Run one untrusted program, isolated, under hard limits.

Layers (each one would stop most attacks alone; together they are the design):
1. bubblewrap: new user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all``): no
   network at all (not even the host's loopback), its own pid 1, so every process it starts,
   daemons included, dies with the sandbox. The root filesystem is empty except ``/usr`` (and
   its ``/bin``, ``/lib`` links) read-only, a fresh ``/proc`` and ``/dev``, a size-capped
   ``/tmp`` and the run's own working directory at ``/work``. ``/etc``, ``/root``, ``/home``
   and the service's files are not there to read.
2. An unprivileged uid (65534) when the service runs as root (``setpriv`` drops it before
   bubblewrap starts; as root bubblewrap would only pretend to), an empty environment.
3. rlimits: CPU seconds, address space, processes/threads (per uid), file size, open files.
4. Its own session / process group, SIGKILLed as a whole at the wall-clock deadline or when the
   output cap is exceeded; stdout and stderr are read with a cap.
5. A fresh temporary working directory, removed afterwards (and, after a SIGKILLed service, by the
   next service's start-up sweep: ``sweep_dead_services``).

Without bubblewrap (or user namespaces) the service refuses to start unless told to run in the
documented weak mode (``--allow-weak-isolation``: layers 2-5 only, no filesystem or network
isolation).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace

from sandbox.languages import LANGUAGES, Language

NOBODY = 65534
PR_SET_CHILD_SUBREAPER = 36
_live_children: set[int] = set()  # direct children whose exit asyncio is still waiting for
_subreaper = False
STATUSES = ("ok", "compile_error", "runtime_error", "timeout", "memory_limit", "output_limit", "sandbox_error")


@dataclass
class Limits:
    timeout_s: float = 10.0  # wall clock, from start to the last byte of output
    memory_mb: int = 512  # address space of each process
    max_processes: int = 64  # processes + threads of the sandbox uid (RLIMIT_NPROC)
    max_output_bytes: int = 1 << 20  # stdout + stderr kept; more ends the run as output_limit
    max_file_bytes: int = 16 << 20  # largest file it may write (RLIMIT_FSIZE); /tmp is capped at 4x this
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


def bwrap_available() -> str | None:
    """None if bubblewrap can create its namespaces here, else the reason it cannot."""
    if shutil.which("bwrap") is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    cmd = _privilege_drop() + ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr",
                               "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                               "--symlink", "usr/lib64", "/lib64", "/usr/bin/true"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start: {exc}"
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.strip()[:300]}"
    return None


def _privilege_drop() -> list[str]:
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all"]
    return []  # the service already runs unprivileged; the user namespace maps it


def _bwrap(workdir: str, limits: Limits) -> list[str]:
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(4 * limits.max_file_bytes), "--tmpfs", "/tmp",
            "--bind", workdir, "/work", "--chdir", "/work",
            "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/work",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--"]


def _set_limits(limits: Limits, cpu_s: int):
    def apply() -> None:
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


async def _execute(cmd: list[str], stdin: str, limits: Limits, timeout_s: float, cwd: str) -> RunResult:
    cpu_s = max(1, int(timeout_s) + 1)
    _become_subreaper()
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=cwd, start_new_session=True, preexec_fn=_set_limits(limits, cpu_s), env={"PATH": "/usr/bin"})
    except OSError as exc:
        return RunResult("sandbox_error", stderr=f"could not start: {exc}")
    _live_children.add(proc.pid)
    try:
        return await _supervise(proc, stdin, limits, timeout_s, t0)
    finally:
        _live_children.discard(proc.pid)
        _reap_orphans()


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
    elif stderr.startswith("bwrap:") or stderr.startswith("setpriv:"):
        status = "sandbox_error"
    else:
        status = "runtime_error"
    return RunResult(status, stdout, stderr, code, round(wall, 4))


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
        self.workdir: str | None = None

    async def __aenter__(self) -> "Program":
        if self.lang is None:
            self.failed = RunResult("sandbox_error",
                                    stderr=f"unknown language {self.language!r}; known: {sorted(LANGUAGES)}")
            return self
        self.workdir = new_run_dir()
        files = {self.lang.source: self.code, **self.extra_files}
        for name, text in files.items():
            with open(os.path.join(self.workdir, name), "w") as f:
                f.write(text)
        if os.geteuid() == 0:
            for name in [*files, ""]:
                os.chown(os.path.join(self.workdir, name), NOBODY, NOBODY)
        self.prefix = _privilege_drop() + (_bwrap(self.workdir, self.limits) if self.isolated else [])
        self.cwd = "/" if self.isolated else self.workdir
        if self.lang.compile:
            build_limits = replace(self.limits, memory_mb=self.lang.compile_memory_mb)
            built = await _execute(self.prefix + list(self.lang.compile), "", build_limits,
                                   self.lang.compile_timeout_s, self.cwd)
            if built.status != "ok":
                reason = (f"compilation timed out after {self.lang.compile_timeout_s:g} s"
                          if built.status == "timeout" else "compilation failed")
                self.failed = RunResult("compile_error", built.stdout, f"{reason}:\n{built.stderr}",
                                        built.exit_code, built.wall_s)
        return self

    async def run(self, stdin: str = "") -> RunResult:
        if self.failed is not None:
            return replace(self.failed)
        return await _execute(self.prefix + list(self.lang.run), stdin, self.limits, self.limits.timeout_s, self.cwd)

    async def __aexit__(self, *exc) -> None:
        if self.workdir is not None:
            remove_run_dir(self.workdir)


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


def _service_dir() -> str:
    pid = os.getpid()
    path = os.path.join(RUNS_ROOT, f"svc-{pid}-{_start_time(pid)}")
    os.makedirs(path, mode=0o711, exist_ok=True)
    return path


def remove_service_dir() -> None:
    pid = os.getpid()
    remove_run_dir(os.path.join(RUNS_ROOT, f"svc-{pid}-{_start_time(pid)}"))


def new_run_dir() -> str:
    return tempfile.mkdtemp(prefix="run-", dir=_service_dir())


def remove_run_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_dead_services() -> int:
    """Remove the run directories of services that are no longer running (SIGKILLed ones leave
    theirs behind); returns how many services' directories were removed."""
    removed = 0
    try:
        entries = os.listdir(RUNS_ROOT)
    except OSError:
        return 0
    for entry in entries:
        parts = entry.split("-")
        if len(parts) != 3 or parts[0] != "svc" or not parts[1].isdigit():
            continue
        if _start_time(int(parts[1])) == parts[2]:
            continue  # that service is alive
        remove_run_dir(os.path.join(RUNS_ROOT, entry))
        removed += 1
    return removed
