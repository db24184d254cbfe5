"""Judging a program against tests: stdin/stdout tests and call-based (LeetCode-style) tests.

``tests`` is ``{"inputs": [...], "outputs": [...], "fn_name": optional}`` (the LiveCodeBench /
TACO layout). Without ``fn_name`` each input is the program's stdin and each output its expected
stdout (compared by ``sandbox.compare.outputs_match``). With ``fn_name`` (Python only) the
program defines that function, or a ``Solution`` class with that method; each input is a list
of arguments or a string of newline-separated JSON values, each output the expected return
value (JSON, or a string holding JSON), compared by ``values_match``.
"""

from __future__ import annotations

import json
import secrets
import time

from sandbox.compare import outputs_match, values_match
from sandbox.runner import Limits, Program, RunResult

# main.py of a call-based test; the candidate's code is solution.py beside it. The harness prints
# the request's one-off marker, then the result as JSON, after everything the program printed.
# The program runs in the same process and could print that marker itself, but to no gain: what
# follows it is only ever compared with the expected value, which never enters the sandbox, and an
# unreadable payload is a runtime_error verdict like any crash.
CALL_HARNESS = '''
import json, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # results may be integers of any size
def _harness():
    request = json.loads(sys.stdin.read())
    namespace = {"__name__": "solution"}
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
    fn = namespace.get(request["fn"])
    if fn is None and "Solution" in namespace:
        fn = getattr(namespace["Solution"](), request["fn"])
    if fn is None:
        raise SystemExit("no function named " + request["fn"])
    result = fn(*request["args"])
    sys.stdout.write(request["mark"] + json.dumps(
        result, default=lambda o: list(o) if isinstance(o, (set, tuple)) else repr(o)))
_harness()
'''


def _call_args(raw) -> list:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    raise ValueError(f"call-based input must be a list of arguments or newline-separated JSON, got {type(raw)}")


def _expected_value(raw):
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _brief(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


async def judge(language: str, code: str, tests: dict, limits: Limits | None = None, early_stop: bool = True,
                float_tolerance: float = 0.0, isolated: bool = True, deadline_s: float | None = None) -> dict:
    """Run every test (or up to the first failure with ``early_stop``) within ``deadline_s`` for
    the whole judgement: a test gets at most the time left, and tests past the deadline are not
    run (``deadline_exceeded``; they count as not passed)."""
    inputs, outputs, fn_name = tests.get("inputs", []), tests.get("outputs", []), tests.get("fn_name")
    if len(inputs) != len(outputs):
        raise ValueError(f"tests have {len(inputs)} inputs but {len(outputs)} outputs")
    if fn_name and language != "python":
        raise ValueError("call-based tests (fn_name) are supported for python only")
    end = None if deadline_s is None else time.monotonic() + deadline_s
    results, deadline_exceeded = [], False
    mark = f"\n@@OR1-SANDBOX-RESULT-{secrets.token_hex(16)}@@"
    # written (and compiled) once for all tests: a call-based test runs the harness around the code
    program = (Program("python", CALL_HARNESS, limits, isolated, extra_files={"solution.py": code}) if fn_name
               else Program(language, code, limits, isolated))
    async with program:
        for raw_in, raw_out in zip(inputs, outputs):
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                deadline_exceeded = True
                break
            if fn_name:
                run: RunResult = await program.run(json.dumps({"fn": fn_name, "args": _call_args(raw_in),
                                                               "mark": mark}), left)
                got, passed = None, False
                if run.status == "ok" and mark in run.stdout:
                    program_out, _, payload = run.stdout.rpartition(mark)
                    run.stdout = program_out
                    try:
                        got = json.loads(payload)
                        passed = values_match(got, _expected_value(raw_out), float_tolerance)
                    except (json.JSONDecodeError, RecursionError, ValueError):
                        run.status, run.stderr = "runtime_error", "the result could not be read\n" + run.stderr
                elif run.status == "ok":
                    run.status, run.stderr = "runtime_error", "no result was returned\n" + run.stderr
                entry = {"got": _brief(json.dumps(got))} if got is not None else {}
            else:
                run = await program.run(str(raw_in), left)
                passed = run.status == "ok" and outputs_match(run.stdout, str(raw_out), float_tolerance)
                entry = {"got": _brief(run.stdout)}
            results.append({"status": run.status, "passed": passed, "exit_code": run.exit_code,
                            "wall_s": run.wall_s, "stderr": _brief(run.stderr), **entry})
            if early_stop and not passed:
                break
    return {"passed": sum(r["passed"] for r in results), "total": len(inputs), "results": results,
            "deadline_exceeded": deadline_exceeded}
