"""The code verifier: ``score(response, sample)`` with unit tests in ``sample["tests"]``.

The program is the last fenced code block of the text after ``</think>`` (```python, ```py or
a bare fence); with ``fenced_only=False`` a text without one is itself the program (completion-
style prompts). It is judged by the sandbox service (``sandbox/``, reached at ``url`` or at
``$OR1_SANDBOX_URL``, which or1 sets when ``reward.sandbox.start_local`` starts one). Reward:
1 if every test passes, else 0; with ``partial_credit=True`` the fraction passed. Extras logged:
``acc``, ``tests_passed_frac``, ``no_code``, ``judge_s`` (latency of judged programs) and the
fraction of judged tests per sandbox status.

``sample["tests"]`` is ``{"inputs": [...], "outputs": [...], "fn_name": optional}`` (or that as
a JSON string): stdin/stdout tests, or call-based tests when ``fn_name`` is given.

Deadline: the sandbox bounds every test by ``timeout_s``, so a judgement is bounded by the test
count times that limit; the reward pool's deadline for an item (``score.deadline_s``) is derived
from it, not from ``reward.timeout_s``, so a correct program with many slow tests is never cut
short, while a hanging program is stopped by the sandbox after ``timeout_s`` (the first failing
test ends the judgement unless ``partial_credit``).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request

from or1.rewards.math import answer_text

URL_ENV = "OR1_SANDBOX_URL"
_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
STATUSES = ("ok", "compile_error", "runtime_error", "timeout", "memory_limit", "output_limit", "sandbox_error")


def extract_program(response: str, fenced_only: bool = True) -> str | None:
    text = answer_text(response)
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    return None if fenced_only or not text.strip() else text


def _post(url: str, body: dict, timeout: float, retries: int = 20) -> dict:
    data = json.dumps(body).encode()
    for attempt in range(retries):
        req = urllib.request.Request(url.rstrip("/") + "/judge", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # anything but "busy, retry" is a real failure
                raise RuntimeError(f"sandbox answered {exc.code}: {exc.read()[:300]!r}") from None
        time.sleep(min(0.05 * 2 ** attempt, 2.0))
    raise RuntimeError(f"sandbox at {url} stayed busy after {retries} tries")


# Allowance per test beyond its limit (sandbox start-up, process spawn: ~0.05 s measured, more under
# load), and per judgement (HTTP, the client's retries while the service is busy: up to ~30 s).
PER_TEST_OVERHEAD_S = 1.0
PER_JUDGEMENT_SLACK_S = 30.0


def _tests(sample: dict) -> dict:
    tests = sample["tests"]
    return json.loads(tests) if isinstance(tests, str) else tests


def score(response: str, sample: dict, url: str | None = None, partial_credit: bool = False,
          timeout_s: float = 6.0, memory_mb: int = 1024, float_tolerance: float = 0.0,
          fenced_only: bool = True) -> dict:
    program = extract_program(response, fenced_only)
    if program is None:
        return {"score": 0.0, "acc": 0.0, "tests_passed_frac": 0.0, "no_code": 1.0}
    tests = _tests(sample)
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(f"no sandbox: set reward.sandbox.start_local=true, pass url, or set ${URL_ENV}")
    total = len(tests["inputs"])
    t0 = time.monotonic()
    verdict = _post(url, {"language": "python", "code": program, "tests": tests, "timeout_s": timeout_s,
                          "memory_mb": memory_mb, "early_stop": not partial_credit,
                          "float_tolerance": float_tolerance},
                    timeout=timeout_s * max(total, 1) + 30)
    passed = verdict["passed"]
    all_passed = float(total > 0 and passed == total)
    judged = verdict["results"] or [{"status": "ok"}]
    out = {"score": (passed / total if total else 0.0) if partial_credit else all_passed,
           "acc": all_passed, "tests_passed_frac": passed / total if total else 0.0, "no_code": 0.0,
           "judge_s": time.monotonic() - t0}  # the judgement's latency, queueing and retries included
    for status in STATUSES:
        out[f"status_{status}"] = sum(r["status"] == status for r in judged) / len(judged)
    return out


def judgement_deadline_s(sample: dict, timeout_s: float = 6.0, **_) -> float:
    """The reward pool's deadline for one judgement: every test at its limit, plus allowances."""
    return len(_tests(sample)["inputs"]) * (timeout_s + PER_TEST_OVERHEAD_S) + PER_JUDGEMENT_SLACK_S


def check_sandbox(url: str | None = None, **_) -> None:
    """Start-up check: the sandbox service answers ``/health`` (seconds, before anything expensive)."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError("no sandbox service is configured for the code verifier: set reward.sandbox.start_local="
                           "true, or reward.sandbox.url to a running `python -m sandbox`")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:
            json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the sandbox service at {url} does not answer /health ({exc}); start it "
                           "(`python -m sandbox --port PORT`, docker/Dockerfile.sandbox) or set "
                           "reward.sandbox.start_local=true") from None


score.deadline_s = judgement_deadline_s
score.startup_check = check_sandbox
