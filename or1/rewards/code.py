"""The code verifier: ``score(response, sample)`` with unit tests in ``sample["tests"]``.

The program is the last fenced code block of the text after ``</think>`` (```python, ```py or
a bare fence). It is judged by the sandbox service (``sandbox/``, reached at ``url`` or at
``$OR1_SANDBOX_URL``, which or1 sets when ``reward.sandbox.start_local`` starts one). Reward:
1 if every test passes, else 0; with ``partial_credit=True`` the fraction passed. Extras logged:
``acc``, ``tests_passed_frac``, ``no_code`` and the fraction of judged tests per sandbox status.

``sample["tests"]`` is ``{"inputs": [...], "outputs": [...], "fn_name": optional}`` (or that as
a JSON string): stdin/stdout tests, or call-based tests when ``fn_name`` is given.
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
STATUSES = ("ok", "runtime_error", "timeout", "memory_limit", "output_limit", "sandbox_error")


def extract_program(response: str) -> str | None:
    blocks = _FENCE.findall(answer_text(response))
    return blocks[-1] if blocks else None


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


def score(response: str, sample: dict, url: str | None = None, partial_credit: bool = False,
          timeout_s: float = 6.0, memory_mb: int = 1024, float_tolerance: float = 0.0) -> dict:
    program = extract_program(response)
    if program is None:
        return {"score": 0.0, "acc": 0.0, "tests_passed_frac": 0.0, "no_code": 1.0}
    tests = sample["tests"]
    tests = json.loads(tests) if isinstance(tests, str) else tests
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(f"no sandbox: set reward.sandbox.start_local=true, pass url, or set ${URL_ENV}")
    total = len(tests["inputs"])
    verdict = _post(url, {"language": "python", "code": program, "tests": tests, "timeout_s": timeout_s,
                          "memory_mb": memory_mb, "early_stop": not partial_credit,
                          "float_tolerance": float_tolerance},
                    timeout=timeout_s * max(total, 1) + 30)
    passed = verdict["passed"]
    all_passed = float(total > 0 and passed == total)
    judged = verdict["results"] or [{"status": "ok"}]
    out = {"score": (passed / total if total else 0.0) if partial_credit else all_passed,
           "acc": all_passed, "tests_passed_frac": passed / total if total else 0.0, "no_code": 0.0}
    for status in STATUSES:
        out[f"status_{status}"] = sum(r["status"] == status for r in judged) / len(judged)
    return out
