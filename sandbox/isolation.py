"""What keeps one run from outliving, starving or observing the others: a seccomp filter, a uid per
run, and a cgroup per process launch.

- ``seccomp_filter()``: a classic-BPF program bubblewrap installs (``--seccomp FD``) before it
  starts the program. It refuses (EPERM) kernel surface no judged program needs: ``ptrace`` and
  its relatives (a program that could ptrace its namespace's init could clear its parent-death
  signal and outlive a killed service), io_uring, keyrings, bpf, perf, mounts, namespace changes,
  userfaultfd, module and kexec loading. Any other ABI (i386 ``int 0x80``, x32) kills the process:
  the syscall numbers below would not mean the same there.
- ``UidPool``: when the service runs as root, each request's program runs as its own uid, so
  per-uid limits (RLIMIT_NPROC, user-namespace counts) are per run, and every process of a run can
  be found and killed by uid. A service claims a block of uids with a lock file for its lifetime;
  at start-up it kills the processes of every block no live service holds (a SIGKILLed service's
  runs).
- ``Cgroups``: where the cgroup filesystem is writable (v1 ``memory`` + ``pids`` hierarchies, or v2
  with both controllers), each process launch gets its own cgroup: total memory of every process
  and tmpfs page of the run (``memory_mb``), its process count (``max_processes``), its OOM kills
  counted (status ``memory_limit``), and every process killed through it at the end.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import platform
import signal
import struct
import time

log = logging.getLogger("sandbox")

# --- seccomp ------------------------------------------------------------------------------------
# Refused syscalls by name; their numbers per architecture (from the kernel's unistd tables).
BLOCKED_SYSCALLS = {
    #                     x86_64  aarch64 (generic table)
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438), "process_madvise": (440, 440),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "unshare": (272, 97), "setns": (308, 268),
    "open_by_handle_at": (304, 265), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
}
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*
_X32_SYSCALL_BIT = 0x40000000
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes for bubblewrap's ``--seccomp``; None on an
    architecture this table does not cover (the service then says so at start-up)::

        arch != native          -> kill the process
        nr >= x32 bit (x86_64)  -> kill the process
        nr in BLOCKED_SYSCALLS  -> EPERM
        otherwise               -> allow
    """
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        return None
    column, audit_arch = _ARCHES[machine]
    numbers = sorted({nrs[column] for nrs in BLOCKED_SYSCALLS.values()})
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, _KILL_PROCESS), (_LD_ABS, 0, 0, 0)]
    if machine == "x86_64":
        prog += [(_JGE, 0, 1, _X32_SYSCALL_BIT), (_RET, 0, 0, _KILL_PROCESS)]
    for i, nr in enumerate(numbers):
        remaining = len(numbers) - i - 1
        prog.append((_JEQ, remaining + 1, 0, nr))  # to the EPERM return after the ALLOW one
    prog += [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, _ERRNO | errno.EPERM)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


# --- killing -------------------------------------------------------------------------------------
def _kill_until_gone(list_pids, rounds: int) -> int:
    """SIGKILL what ``list_pids()`` returns until it returns nothing (a forking process may add one
    between a listing and its kill; each round kills what the listing found). Returns how many
    processes were found."""
    seen: set[int] = set()
    for _ in range(rounds):
        pids = list_pids()
        if not pids:
            break
        for pid in pids:
            seen.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    return len(seen)


def _processes_by_uid(uid_ranges: list[range]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        uid = int(line.split()[1])  # the real uid
                        if any(uid in uids for uids in uid_ranges):
                            found.append(int(entry))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_uids(*uid_ranges: range, rounds: int = 50) -> int:
    """SIGKILL every process whose real uid is in one of ``uid_ranges`` until none is left (one
    scan of /proc per round, whatever the number of ranges). Returns how many were found."""
    return _kill_until_gone(lambda: _processes_by_uid(list(uid_ranges)), rounds)


class UidPool:
    """Uids for runs: ``BASE + block * BLOCK_SIZE + i``; a service holds one block (an flock on
    ``<lock_dir>/uid-block-<n>.lock``) for its lifetime, and gives each request the lowest free
    uid of it."""

    BASE, BLOCK_SIZE, BLOCKS = 1_000_000_000, 100_000, 64

    def __init__(self, lock_dir: str):
        self.lock_dir = lock_dir
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        self.block, self._lock_fd = self._claim()
        self.uids = self._block_uids(self.block)
        self._free: list[int] = []
        self._next = self.uids.start

    def _block_uids(self, block: int) -> range:
        start = self.BASE + block * self.BLOCK_SIZE
        return range(start, start + self.BLOCK_SIZE)

    def _lock_path(self, block: int) -> str:
        return os.path.join(self.lock_dir, f"uid-block-{block}.lock")

    def _try_lock(self, block: int) -> int | None:
        fd = os.open(self._lock_path(block), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            os.close(fd)
            return None

    def _claim(self) -> tuple[int, int]:
        for block in range(self.BLOCKS):
            fd = self._try_lock(block)
            if fd is not None:
                return block, fd
        raise RuntimeError(f"all {self.BLOCKS} sandbox uid blocks are held by running services")

    def sweep_unheld_blocks(self) -> int:
        """Kill the processes of every uid block no live service holds (ours included: it was
        just claimed, so anything in it is a dead service's). Returns how many were killed."""
        unheld, locks = [self.uids], []
        try:
            for block in range(self.BLOCKS):
                if block == self.block:
                    continue
                fd = self._try_lock(block)
                if fd is not None:  # else a live service's
                    locks.append(fd)
                    unheld.append(self._block_uids(block))
            return kill_uids(*unheld)  # held locked, so no service claims a block meanwhile
        finally:
            for fd in locks:
                os.close(fd)

    def acquire(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next >= self.uids.stop:
            raise RuntimeError(f"more than {self.BLOCK_SIZE} programs at once")
        self._next += 1
        return self._next - 1

    def release(self, uid: int, kill_leftovers: bool = True) -> None:
        """Make ``uid`` available again, first killing whatever still runs as it (nothing, unless
        a process escaped its namespace's end). ``kill_leftovers=False`` where every launch had its
        own cgroup, already emptied: a run's processes cannot leave it, and the scan of /proc costs
        milliseconds per request."""
        if kill_leftovers:
            kill_uids(range(uid, uid + 1))
        self._free.append(uid)

    def close(self) -> None:
        kill_uids(self.uids)
        os.close(self._lock_fd)


# --- cgroups ------------------------------------------------------------------------------------
def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v1 hierarchy of ``controller`` (v2 when None)."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller and controller in controllers.split(",")):
            return path
    return None


def _cgroup_mounts() -> dict[str, str]:
    """Mount points: ``"v2"`` and each v1 controller name."""
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split()[:3]
        point = left.split()[4]
        if fstype == "cgroup2":
            mounts.setdefault("v2", point)
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in ("memory", "pids"):
                    mounts.setdefault(option, point)
    return mounts


def _sandbox_parents(mounts: dict[str, str]) -> tuple[int, list[str]] | None:
    """The cgroup version and the ``or1-sandbox`` directories beside this process's own cgroup
    (v1: in the memory and pids hierarchies; v2: one), or None without such controllers."""
    if "memory" in mounts and "pids" in mounts:
        return 1, [os.path.join(mounts[c], (_own_cgroup(c) or "/").lstrip("/"), "or1-sandbox")
                   for c in ("memory", "pids")]
    if "v2" in mounts:
        return 2, [os.path.join(mounts["v2"], (_own_cgroup(None) or "/").lstrip("/"), "or1-sandbox")]
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroups:
    """A service's directory of per-launch cgroups (``svc-<pid>-<start time>`` under an
    ``or1-sandbox`` directory beside this process's own cgroup), on cgroup v1 or v2.

    ``Cgroups.create(name)`` returns None with the reason logged where the cgroup filesystem is
    not writable (e.g. a container without a cgroup namespace of its own): runs then have
    per-process memory limits only, and ``/health`` says so.
    """

    def __init__(self, version: int, roots: list[str]):
        self.version, self.roots = version, roots  # v1: [memory root, pids root]; v2: [root]

    @classmethod
    def create(cls, service_name: str) -> tuple["Cgroups | None", str]:
        found = _sandbox_parents(_cgroup_mounts())
        if found is None:
            return None, "no cgroup filesystem with the memory and pids controllers is mounted"
        version, parents = found
        try:
            if version == 1:
                roots = [os.path.join(parent, service_name) for parent in parents]
                for root in roots:
                    os.makedirs(root, exist_ok=True)
                return cls(1, roots), "cgroup v1 (memory, pids)"
            parent = parents[0]
            base = os.path.dirname(parent)
            available = open(os.path.join(base, "cgroup.controllers")).read().split()
            if not {"memory", "pids"} <= set(available):
                return None, f"cgroup v2 at {base} does not delegate the memory and pids controllers"
            os.makedirs(parent, exist_ok=True)
            # a v2 cgroup with processes cannot enable controllers for children (the "no internal
            # processes" rule); or1-sandbox/ holds none, only the service directories below it
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            root = os.path.join(parent, service_name)
            os.makedirs(root, exist_ok=True)
            _write(os.path.join(root, "cgroup.subtree_control"), "+memory +pids")
            return cls(2, [root]), "cgroup v2 (memory, pids)"
        except OSError as exc:
            return None, f"the cgroup filesystem is not writable here ({exc})"

    def new(self, name: str, memory_bytes: int, max_processes: int) -> "RunCgroup":
        dirs = [os.path.join(root, name) for root in self.roots]
        for d in dirs:
            os.mkdir(d)
        run = RunCgroup(self.version, dirs)
        try:
            if self.version == 1:
                _write(os.path.join(dirs[0], "memory.limit_in_bytes"), str(memory_bytes))
                swap_limit = os.path.join(dirs[0], "memory.memsw.limit_in_bytes")
                if os.path.exists(swap_limit):
                    _write(swap_limit, str(memory_bytes))
                _write(os.path.join(dirs[1], "pids.max"), str(max_processes))
            else:
                _write(os.path.join(dirs[0], "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(dirs[0], "memory.swap.max")):
                    _write(os.path.join(dirs[0], "memory.swap.max"), "0")
                _write(os.path.join(dirs[0], "pids.max"), str(max_processes))
        except OSError:
            run.remove()
            raise
        return run

    def remove_all(self) -> None:
        for root in self.roots:
            remove_cgroup_tree(root)

    @classmethod
    def sweep_dead_services(cls, is_alive) -> int:
        """Kill the processes of, and remove, the cgroup directories of services that are gone
        (``is_alive(name)`` tells a live service's directory name)."""
        found, removed = _sandbox_parents(_cgroup_mounts()), 0
        for parent in (found[1] if found else []):
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                path = os.path.join(parent, name)
                if name.startswith("svc-") and os.path.isdir(path) and not is_alive(name):
                    remove_cgroup_tree(path)
                    removed += 1
        return removed


class RunCgroup:
    """One process launch's cgroup(s): ``attach`` (in the child, before exec), ``oom_kills``,
    ``kill`` (every process in it) and ``remove``."""

    def __init__(self, version: int, dirs: list[str]):
        self.version, self.dirs = version, dirs

    def attach(self) -> None:
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(os.getpid()))

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in open(os.path.join(self.dirs[0], name)):
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill(self) -> None:
        for d in self.dirs:
            kill_cgroup(d)

    def remove(self) -> None:
        for d in self.dirs:
            remove_cgroup_tree(d)


def kill_cgroup(path: str, rounds: int = 100) -> None:
    """SIGKILL every process in the cgroup at ``path`` until it is empty (v2's ``cgroup.kill``
    where there is one)."""
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
        except OSError:
            pass
    _kill_until_gone(lambda: _cgroup_pids(path), rounds)


def _cgroup_pids(path: str) -> list[int]:
    try:
        return [int(p) for p in open(os.path.join(path, "cgroup.procs")).read().split()]
    except OSError:
        return []  # removed meanwhile


def remove_cgroup_tree(path: str) -> None:
    """Kill and remove a cgroup and its children, deepest first; never raises (a cgroup whose
    processes are still exiting may refuse ``rmdir`` briefly: retried)."""
    try:
        children = [os.path.join(path, c) for c in os.listdir(path) if os.path.isdir(os.path.join(path, c))]
    except OSError:
        return
    for child in children:
        remove_cgroup_tree(child)
    kill_cgroup(path)
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("could not remove cgroup %s: %s", path, exc)
                return
            time.sleep(0.01)
    log.warning("cgroup %s stayed busy; left in place", path)
