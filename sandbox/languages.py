"""The language table: adding a language is one entry here.

Commands run inside the sandbox with ``/work`` (holding the source file) as working directory.
``compile`` (optional) runs once per request, first, under the same isolation and its own limits
(``compile_timeout_s``, ``compile_memory_mb``); a failed or timed-out build is reported as
``compile_error`` for every test, with the compiler's output in ``stderr``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    source: str  # file name the code is written to
    run: tuple[str, ...]  # command that runs the program
    compile: tuple[str, ...] | None = None  # command that builds it, if any
    compile_timeout_s: float = 30.0  # the build's own limits, whatever the request's (built once per request)
    compile_memory_mb: int = 2048


LANGUAGES: dict[str, Language] = {
    # -I: isolated mode (no user site, no PYTHON* environment variables, script dir not on sys.path twice)
    "python": Language("main.py", ("/usr/bin/python3", "-I", "main.py")),
    "cpp": Language("main.cpp", ("./main",), ("/usr/bin/g++", "-O2", "-std=c++17", "-o", "main", "main.cpp")),
}
