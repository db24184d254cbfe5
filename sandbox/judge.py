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

from sandbox.compare import outputs_match, values_match
from sandbox.runner import Limits, Program, RunResult

RESULT_MARK = "\n@@OR1-SANDBOX-RESULT@@"
# main.py of a call-based test; the candidate's code is solution.py beside it
CALL_HARNESS = '''
import json, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)  # results may be integers of any size
request = json.loads(sys.stdin.read())
namespace = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
fn = namespace.get(request["fn"])
if fn is None and "Solution" in namespace:
    fn = getattr(namespace["Solution"](), request["fn"])
if fn is None:
    raise SystemExit("no function named " + request["fn"])
result = fn(*request["args"])
sys.stdout.write(MARK + json.dumps(result, default=lambda o: list(o) if isinstance(o, (set, tuple)) else repr(o)))
'''.replace("MARK", repr(RESULT_MARK))


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
                float_tolerance: float = 0.0, isolated: bool = True) -> dict:
    inputs, outputs, fn_name = tests.get("inputs", []), tests.get("outputs", []), tests.get("fn_name")
    if len(inputs) != len(outputs):
        raise ValueError(f"tests have {len(inputs)} inputs but {len(outputs)} outputs")
    if fn_name and language != "python":
        raise ValueError("call-based tests (fn_name) are supported for python only")
    results = []
    # written (and compiled) once for all tests: a call-based test runs the harness around the code
    program = (Program("python", CALL_HARNESS, limits, isolated, extra_files={"solution.py": code}) if fn_name
               else Program(language, code, limits, isolated))
    async with program:
        for raw_in, raw_out in zip(inputs, outputs):
            if fn_name:
                run: RunResult = await program.run(json.dumps({"fn": fn_name, "args": _call_args(raw_in)}))
                got, passed = None, False
                if run.status == "ok" and RESULT_MARK in run.stdout:
                    program_out, _, payload = run.stdout.rpartition(RESULT_MARK)
                    got = json.loads(payload)
                    run.stdout = program_out
                    passed = values_match(got, _expected_value(raw_out), float_tolerance)
                entry = {"got": _brief(json.dumps(got))} if got is not None else {}
            else:
                run = await program.run(str(raw_in))
                passed = run.status == "ok" and outputs_match(run.stdout, str(raw_out), float_tolerance)
                entry = {"got": _brief(run.stdout)}
            results.append({"status": run.status, "passed": passed, "exit_code": run.exit_code,
                            "wall_s": run.wall_s, "stderr": _brief(run.stderr), **entry})
            if early_stop and not passed:
                break
    return {"passed": sum(r["passed"] for r in results), "total": len(inputs), "results": results}
