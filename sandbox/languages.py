"""The language table: adding a language is one entry here.

Commands run inside the sandbox with ``/work`` (holding the source file) as working directory.
``compile`` (optional) runs first under the same isolation with ``compile_timeout_s``; a failed
compile is reported as ``runtime_error`` with the compiler's output in ``stderr``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    source: str  # file name the code is written to
    run: tuple[str, ...]  # command that runs the program
    compile: tuple[str, ...] | None = None  # command that builds it, if any
    compile_timeout_s: float = 30.0


LANGUAGES: dict[str, Language] = {
    # -I: isolated mode (no user site, no PYTHON* environment variables, script dir not on sys.path twice)
    "python": Language("main.py", ("/usr/bin/python3", "-I", "main.py")),
    "cpp": Language("main.cpp", ("./main",), ("/usr/bin/g++", "-O2", "-std=c++17", "-o", "main", "main.cpp")),
}
