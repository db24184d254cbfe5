"""The sandbox service, attacked: each attack ends with the right status and leaves the host and
the service unaffected (``/health`` answers quickly and the next program runs correctly).

The service runs for real (``python -m sandbox``) on a loopback port, with a secret in its
environment that no program may see.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from sandbox.isolation import UidPool

from .conftest import free_port

SECRET = "or1-test-secret-7f3a"


def post(url: str, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get(url: str, path: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def start_service(*args, env=None):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port), *args],
                            env={**os.environ, "SANDBOX_TEST_SECRET": SECRET, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if proc.poll() is not None:
            break
        try:
            get(url, "/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the sandbox service did not start: {proc.stdout.read()[-2000:]}")


@pytest.fixture(scope="module")
def service():
    proc, url = start_service("--max-concurrency", "2", "--max-queue", "4")
    assert get(url, "/health")["isolation"] == "bwrap"
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def run(url, code, stdin="", timeout_s=3.0, memory_mb=256, language="python"):
    status, body = post(url, "/run", {"language": language, "code": code, "stdin": stdin,
                                      "timeout_s": timeout_s, "memory_mb": memory_mb})
    assert status == 200, body
    return body


def assert_service_healthy(url):
    t0 = time.time()
    assert get(url, "/health")["status"] == "ok"
    latency = time.time() - t0
    # a blocked or hung service takes seconds to forever; 2 s leaves room for a loaded 2-core machine
    assert latency < 2.0, f"/health took {latency:.2f}s"
    after = run(url, "print(sum(range(10)))")
    assert (after["status"], after["stdout"]) == ("ok", "45\n")


RUN_UIDS = range(UidPool.BASE, UidPool.BASE + UidPool.BLOCKS * UidPool.BLOCK_SIZE)  # every service's runs' uids


def sandbox_uid_processes() -> list[str]:
    """Live processes of any run's uid. Zombies (state Z) are left out: they are exit statuses
    waiting for the host's init to collect them and cannot act."""
    out = subprocess.run(["ps", "-e", "-o", "uid=,pid=,stat=,cmd="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if line.split() and int(line.split()[0]) in RUN_UIDS and not line.split()[2].startswith("Z")]


ATTACKS = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  {"timeout", "runtime_error"}),
    "thread_bomb": ("import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,)).start()\n",
                    {"runtime_error", "timeout"}),
    "memory_bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n", {"memory_limit"}),
    "busy_loop": ("while True:\n    pass\n", {"timeout"}),
    "sleep_forever": ("import time\ntime.sleep(10**6)\n", {"timeout"}),
    "huge_file": ("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n", {"output_limit"}),
    "stdout_flood": ("while True:\n    print('y' * 4096)\n", {"output_limit"}),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)\n"
                        "print('still here')\n", {"ok", "runtime_error"}),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained(service, name):
    code, statuses = ATTACKS[name]
    t0 = time.time()
    result = run(service, code)
    assert result["status"] in statuses, result
    # the deadline holds: 3 s, plus at most the 5 s bubblewrap gets to reap a killed namespace
    assert time.time() - t0 < 3.0 + 5.0 + 1.0
    assert_service_healthy(service)
    time.sleep(0.2)
    assert sandbox_uid_processes() == []  # nothing it started outlives the run


def test_environment_and_host_files_are_invisible(service, tmp_path):
    host_file = tmp_path / "host.txt"
    host_file.write_text("host data")
    code = f"""
import os
print("SECRET" if any("{SECRET}" in v for v in os.environ.values()) else "no secret")
for path in ["/etc/shadow", "/etc/passwd", "/root", "{host_file}", "{os.path.abspath('README.md')}"]:
    print(path, os.path.exists(path))
print(os.getuid())
"""
    result = run(service, code)
    lines = result["stdout"].splitlines()
    assert result["status"] == "ok" and lines[0] == "no secret"
    assert all(line.endswith("False") for line in lines[1:-1]), lines
    assert int(lines[-1]) in RUN_UIDS  # the request's own unprivileged uid


def test_no_network_even_to_the_hosts_loopback(service):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as exc:
    print("blocked", type(exc).__name__)
"""
    result = run(service, code)
    assert result["stdout"].startswith("blocked"), result
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever reached the host's listener
    listener.close()


def test_writes_outside_its_directory_do_not_reach_the_host(service, tmp_path):
    target = tmp_path / "escaped.txt"
    code = f"""
import os
for path in ["/usr/escaped.txt", "{target}", "/work/../escaped.txt", "/tmp/escaped.txt"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print(path, "written")
    except OSError as exc:
        print(path, "refused", exc.errno)
"""
    result = run(service, code)
    assert "/usr/escaped.txt refused" in result["stdout"], result
    assert not target.exists() and not os.path.exists("/tmp/escaped.txt") and not os.path.exists("/escaped.txt")


def test_double_forked_daemon_dies_with_the_run(service, tmp_path):
    marker = tmp_path / "daemon_was_here"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1.0)
        for path in ["/work/late", "{marker}"]:
            try:
                open(path, "w").write("late")
            except OSError:
                pass
        time.sleep(100)
    os._exit(0)
print("parent done")
"""
    result = run(service, code)
    assert (result["status"], result["stdout"]) == ("ok", "parent done\n")
    time.sleep(2.0)
    assert sandbox_uid_processes() == [] and not marker.exists()
    assert_service_healthy(service)


def test_cpp_is_one_table_entry_away(service):
    code = "#include <iostream>\nint main(){long a,b; std::cin>>a>>b; std::cout<<a*b<<std::endl;}\n"
    assert run(service, code, "6 7", timeout_s=10, language="cpp")["stdout"] == "42\n"
    broken = run(service, "int main( {", language="cpp", timeout_s=10)
    assert broken["status"] == "compile_error" and "compilation failed" in broken["stderr"]


def test_cpp_is_compiled_once_per_judgement_under_its_own_limit(monkeypatch):
    """Six tests at timeout_s=1: one build (with its own time limit, not the test's 1 s), six runs;
    a broken program is a compile_error on its first test."""
    import asyncio

    from sandbox import runner
    from sandbox.judge import judge

    calls = []
    real = runner._execute

    async def counting(cmd, stdin, limits, timeout_s, where, **kwargs):
        calls.append(("build" if "g++" in " ".join(cmd) else "run", timeout_s))
        return await real(cmd, stdin, limits, timeout_s, where, **kwargs)
    monkeypatch.setattr(runner, "_execute", counting)
    code = "#include <iostream>\nint main(){long a; std::cin>>a; std::cout<<a+1<<std::endl;}\n"
    tests = {"inputs": [f"{i}\n" for i in range(6)], "outputs": [f"{i + 1}\n" for i in range(6)]}
    verdict = asyncio.run(judge("cpp", code, tests, runner.Limits(timeout_s=1)))
    assert (verdict["passed"], verdict["total"]) == (6, 6), verdict
    assert [kind for kind, _ in calls] == ["build"] + ["run"] * 6
    assert calls[0][1] == runner.LANGUAGES["cpp"].compile_timeout_s and calls[1][1] == 1
    calls.clear()
    broken = asyncio.run(judge("cpp", "int main( {", tests, runner.Limits(timeout_s=1), early_stop=False))
    assert [r["status"] for r in broken["results"]] == ["compile_error"] * 6 and calls == [("build", 30.0)]


def test_judge_stdin_stdout_and_call_based(service):
    code = "n = int(input())\nprint(n * 2)\nprint(1.50)\n"
    status, body = post(service, "/judge", {"code": code, "tests": {"inputs": ["2\n", "5\n", "1\n"],
                                                                    "outputs": ["4\n1.5", "10\n1.5\n", "3\n1.5"]}})
    assert status == 200 and (body["passed"], body["total"], len(body["results"])) == (2, 3, 3)
    status, body = post(service, "/judge", {"code": code, "early_stop": True,
                                            "tests": {"inputs": ["1\n", "2\n"], "outputs": ["3", "4\n1.5"]}})
    assert (body["passed"], len(body["results"])) == (0, 1)  # stopped at the first failure
    leet = "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n" \
           "        for i, x in enumerate(nums):\n            if target - x in seen:\n" \
           "                return (seen[target - x], i)\n            seen[x] = i\n"
    status, body = post(service, "/judge", {"code": leet, "tests": {
        "fn_name": "twoSum", "inputs": ["[2, 7, 11, 15]\n9", [[3, 3], 6]], "outputs": ["[0, 1]", [0, 1]]}})
    assert (body["passed"], body["total"]) == (2, 2), body
    status, body = post(service, "/judge", {"code": "def area(r):\n    return 3.14159 * r * r\n",
                                            "float_tolerance": 1e-3,
                                            "tests": {"fn_name": "area", "inputs": [[1]], "outputs": [3.1416]}})
    assert body["passed"] == 1


def test_bad_requests_get_400_with_a_reason(service):
    assert post(service, "/run", {"language": "cobol", "code": "x"}) [0] == 400
    status, body = post(service, "/run", {"stdin": "x"})
    assert status == 400 and "code" in body["error"]
    status, body = post(service, "/judge", {"code": "x", "tests": {"inputs": ["1"], "outputs": []}})
    assert status == 400 and "outputs" in body["error"]
    # malformed fields: 400 with a reason, never a 500 or a judgement character by character
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    for bad, reason in [({"timeout_s": float("nan")}, "timeout_s must be a positive finite"),
                        ({"language": ["python"]}, "unknown language"),
                        ({"code": "print('\ud800')"}, "not valid text"),
                        ({"tests": {"inputs": ["1"], "outputs": None}}, "two lists"),
                        ({"tests": {"inputs": ["1"], "outputs": "1"}}, "two lists"),
                        ({"tests": {"inputs": [1], "outputs": ["1"]}}, "tests.inputs[0] must be a string"),
                        ({"early_stop": "false"}, "early_stop"),
                        ({"float_tolerance": "1e-6"}, "float_tolerance")]:
        status, body = post(service, "/judge", {"code": "print(input())", "tests": tests, **bad})
        assert status == 400 and reason in body["error"], (bad, status, body)
    assert post(service, "/run", {"code": "print(1)", "stdin": 5})[0] == 400
    assert post(service, "/run", {"code": "import sys; print(repr(sys.stdin.read()))", "stdin": None})[1]["stdout"] \
        == "''\n"  # null stdin is no input, not the text None
    status, body = post(service, "/judge", {"code": "def f():\n    return 10 ** 5000\n", "tests": {
        "fn_name": "f", "inputs": [[]], "outputs": ["1" + "0" * 5000]}})
    assert status == 200 and body["passed"] == 1, body  # a 5000-digit result is a value, not an error
    oversized = urllib.request.Request(service + "/run", data=json.dumps({"code": "x" * (8 * 2**20)}).encode(),
                                       headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as too_large:
        urllib.request.urlopen(oversized, timeout=30)
    assert too_large.value.code == 413  # over --max-body-mb (8)


def test_over_capacity_requests_wait_or_get_503(service):
    results = []

    def call():
        results.append(post(service, "/run", {"code": "import time; time.sleep(1); print('done')",
                                              "timeout_s": 5})[0])

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # 2 run at once and 4 may wait: at least those 6 finish; the rest are told to retry
    assert results.count(200) >= 6 and set(results) <= {200, 503} and 503 in results
    assert_service_healthy(service)


def test_a_local_service_answers_past_its_pipe_buffer_and_dies_with_its_parent(tmp_path):
    """The trainer's own service (LocalSandbox): 1,500 requests (each an access-log line; a pipe
    nobody reads blocked the service at ~500), then its parent is SIGKILLed: the service stops."""
    import signal

    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from or1.rewards.manager import LocalSandbox\n"
        f"s = LocalSandbox(1, log_path={str(tmp_path / 'sandbox.log')!r})\n"
        "print(s.url, s.proc.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        url, pid = parent.stdout.readline().split()
        for _ in range(1500):
            assert get(url, "/health", timeout=5)["status"] == "ok"
        assert (tmp_path / "sandbox.log").stat().st_size > 64 * 1024  # more than a pipe would have held
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        def running() -> bool:  # a zombie is dead: only its exit status waits to be collected
            try:
                return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        deadline = time.time() + 15
        while time.time() < deadline and running():
            time.sleep(0.2)
        assert not running(), "the sandbox service outlived the trainer that started it"
    finally:
        parent.kill()


def test_a_killed_services_run_directories_are_swept_at_the_next_start(tmp_path):
    """A SIGKILLed service leaves its run directories; the next service removes them, and never
    the directories of a service that is still running."""
    from sandbox.runner import RUNS_ROOT

    def run_area(proc, url) -> str:
        assert post(url, "/run", {"code": "print('x')"})[0] == 200  # creates the service's run area
        return os.path.join(RUNS_ROOT, next(p for p in os.listdir(RUNS_ROOT) if p.startswith(f"svc-{proc.pid}-")))

    live, live_url = start_service()
    killed, killed_url = start_service()
    started = []
    try:
        live_area, dead_area = run_area(live, live_url), run_area(killed, killed_url)
        os.makedirs(os.path.join(dead_area, "run-leftover", "deep"))  # what a SIGKILL mid-run leaves
        killed.kill()
        killed.wait(timeout=10)
        started.append(start_service()[0])
        assert not os.path.exists(dead_area) and os.path.isdir(live_area)
    finally:
        for proc in [live, killed, *started]:
            proc.kill()
            proc.wait(timeout=10)


def test_refuses_to_start_without_isolation_unless_told(tmp_path):
    no_bwrap = {"PATH": str(tmp_path)}  # a PATH where bwrap cannot be found
    proc = subprocess.run([sys.executable, "-m", "sandbox", "--port", str(free_port())], env={**os.environ, **no_bwrap},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "refusing to start" in proc.stderr
    weak, url = start_service("--allow-weak-isolation", env=no_bwrap)
    try:
        assert get(url, "/health")["isolation"] == "weak"
    finally:
        weak.terminate()
        weak.wait(timeout=10)
