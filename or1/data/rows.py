"""From data files to or1's rows: field mapping, checks, bad-row reporting, deduplication.

Every row handed to the trainer and to reward functions is the file's row with or1's fields set
on top (its other fields, e.g. verl's ``extra_info``, stay for user reward functions):

- ``prompt``: the text, or a list of chat messages ``{role, content}``, with
  ``data.instruction_suffix`` appended to the last user message;
- ``answer``: a string, or a list of acceptable answers (the math verifier accepts any);
- ``tests``: ``{inputs, outputs, fn_name?}`` for the code verifier;
- ``data_source`` (default "") and ``ability`` when the row has one: the reward's routing keys.

Where each comes from is ``data.layout``'s path, overridden by ``data.fields.*`` (dotted paths
into nested fields). A row with no usable prompt, or with neither answer nor tests (when the layout
has those fields), is bad: ``data.bad_rows`` decides whether the run skips it (a warning names
every one by file and row) or stops. Nothing is left out without being counted and named.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from or1.config import BadRows, DataConfig, DataLayout
from or1.data.sources import DataError, RawRowError, RowRef, expand_files, read_raw_rows

log = logging.getLogger("or1")

FIELDS = ("prompt", "answer", "tests", "data_source", "ability")
LAYOUTS: dict[DataLayout, dict[str, str]] = {
    DataLayout.or1: {"prompt": "prompt", "answer": "answer", "tests": "tests", "data_source": "data_source",
                     "ability": "ability"},
    DataLayout.verl: {"prompt": "prompt", "answer": "reward_model.ground_truth",
                      "tests": "reward_model.ground_truth", "data_source": "data_source", "ability": "ability"},
}
ROLES = ("system", "user", "assistant")


def field_paths(cfg: DataConfig) -> dict[str, str]:
    """Each of or1's fields -> its dotted path in the rows ("" : the rows have none)."""
    chosen = dict(LAYOUTS[DataLayout(cfg.layout)])
    for name in FIELDS:
        override = getattr(cfg.fields, name)
        if override is not None:
            chosen[name] = override
    if not chosen["prompt"]:
        raise DataError("data.fields.prompt is empty: rows must have a prompt")
    return chosen


_MISSING = object()


def lookup(row: dict, path: str):
    """The value at a dotted path (``a.b.0.c``; a digit indexes a list), or ``_MISSING``. A key that
    itself contains the dots is found first."""
    if path in row:
        return row[path]
    node = row
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


class BadRow(Exception):
    """Why a row cannot be used (the message is the reason, grouped in reports)."""


def normalize_prompt(value, suffix: str):
    """Text or chat messages, the suffix appended to the last user message. Raises ``BadRow``."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRow("empty prompt")
        return value + suffix
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        messages = []
        for m in value:
            role, content = m.get("role"), m.get("content")
            if role not in ROLES or not isinstance(content, str):
                raise BadRow("prompt messages need a role (system, user, assistant) and text content")
            messages.append({"role": role, "content": content})
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users or not any(m["content"].strip() for m in messages):
            raise BadRow("empty prompt" if users else "prompt messages have no user message")
        messages[users[-1]]["content"] += suffix
        return messages
    raise BadRow("prompt is neither text nor a list of chat messages")


def normalize_answer(value):
    """A string, or a non-empty list of strings. A string holding a JSON array of strings (verl's
    ``["34"]``) is that list: no math answer is written with quotes inside brackets."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        decoded = _json_list_of_strings(value)
        if decoded is None:
            if not value.strip():
                raise BadRow("empty answer")
            return value
        value = decoded
    if isinstance(value, (list, tuple)):
        answers = [str(a) for a in value if isinstance(a, (str, int, float)) and not isinstance(a, bool)
                   and str(a).strip()]
        if not answers or len(answers) != len(value):
            raise BadRow("empty answer" if not value else "answer list holds empty or non-scalar entries")
        return answers
    raise BadRow(f"answer is a {type(value).__name__}, not text or a list of answers")


def _json_list_of_strings(text: str) -> list[str] | None:
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        decoded = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, list) and decoded and all(isinstance(a, str) for a in decoded) else None


def decode_tests(value):
    """The tests as a dict, or None when ``value`` is not a JSON object (nor one encoded as text)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow("unparsable tests (invalid JSON)") from None
    return value if isinstance(value, dict) else None


def normalize_tests(value) -> dict:
    tests = decode_tests(value)
    if tests is None:
        raise BadRow("unparsable tests (not a JSON object)")
    tests = {k: v for k, v in tests.items() if v is not None}  # verl writes absent fn_name as null
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs or len(inputs) != len(outputs):
        raise BadRow("unparsable tests (need equally long, non-empty inputs and outputs lists)")
    return tests


def normalize_row(raw: dict, paths: dict[str, str], suffix: str) -> dict:
    """or1's row for one file row (see the module docstring). Raises ``BadRow``."""
    prompt = lookup(raw, paths["prompt"])
    if prompt is _MISSING or prompt is None:
        raise BadRow("no prompt")
    row = dict(raw)
    row["prompt"] = normalize_prompt(prompt, suffix)
    wants_answer, wants_tests = bool(paths["answer"]), bool(paths["tests"])
    answer = lookup(raw, paths["answer"]) if wants_answer else _MISSING
    tests = lookup(raw, paths["tests"]) if wants_tests else _MISSING
    if wants_answer and wants_tests and paths["answer"] == paths["tests"] and answer is not _MISSING:
        # one field holds either (verl's ground_truth): an object is the tests, anything else the answer
        if decode_tests(answer) is not None:
            answer = _MISSING
        else:
            tests = _MISSING
    row.pop("answer", None), row.pop("tests", None)
    if answer is not _MISSING and answer is not None:
        row["answer"] = normalize_answer(answer)
    if tests is not _MISSING and tests is not None:
        row["tests"] = normalize_tests(tests)
    if (wants_answer or wants_tests) and "answer" not in row and "tests" not in row:
        raise BadRow("no answer or tests")
    for key in ("data_source", "ability"):
        value = lookup(raw, paths[key]) if paths[key] else _MISSING
        if value is _MISSING or value is None:
            row.pop(key, None)
        else:
            row[key] = str(value)
    row.setdefault("data_source", "")
    return row


def prompt_key(prompt) -> str:
    """A canonical text of a prompt: equal prompts have equal keys (dedup, fingerprints, identities)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def prompt_hash(prompt) -> str:
    return hashlib.sha1(prompt_key(prompt).encode()).hexdigest()[:16]


def prompt_text(prompt) -> str:
    """The prompt as one text: itself, or its last user message (what a reward model is shown)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


@dataclass
class DataReport:
    """What loading did to one split, counted (written to ``data_report.json`` and logged)."""

    files: list[str]
    rows_read: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)  # reason -> count
    duplicates: int = 0  # identical prompts removed (the first is kept)
    too_long: int = 0  # longer than data.max_prompt_length tokens (counted once tokenized)
    prompts: int = 0  # what is left

    def summary(self, field_name: str) -> str:
        bad = sum(self.bad_rows.values())
        parts = [f"{self.rows_read} rows read from {len(self.files)} file(s)"]
        if bad:
            parts.append(f"{bad} bad (" + ", ".join(f"{n} {r}" for r, n in sorted(self.bad_rows.items())) + ")")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate prompts removed")
        if self.too_long:
            parts.append(f"{self.too_long} longer than data.max_prompt_length dropped")
        return f"{field_name}: " + "; ".join(parts) + f"; {self.prompts} prompts"


@dataclass
class DataRows:
    """or1's rows, where each came from, and the loading report."""

    rows: list[dict]
    refs: list[RowRef]
    report: DataReport

    @property
    def where(self) -> list[str]:
        return [str(r) for r in self.refs]


def describe_bad_rows(bad: list[tuple[RowRef, str]]) -> list[str]:
    """One line per file and reason naming every row (runs of rows as ranges)."""
    groups: dict[tuple[str, str], list[RowRef]] = {}
    for ref, reason in bad:
        groups.setdefault((ref.file, reason), []).append(ref)
    lines = []
    for (file, reason), refs in groups.items():
        unit = "line" if refs[0].format == "jsonl" else "row"
        numbers = _ranges(sorted(r.row for r in refs))
        lines.append(f"{file} {unit}{'s' if len(refs) > 1 else ''} {numbers}: {reason}")
    return lines


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def load_rows(cfg: DataConfig, files: list[str], field_name: str) -> DataRows:
    """Read, map, check and deduplicate the rows of ``files`` (cheap: no tokenizer). Bad rows are
    skipped with a warning naming each, or raise ``DataError`` (``data.bad_rows``)."""
    paths = field_paths(cfg)
    expanded = expand_files(files, field_name)
    report = DataReport(expanded)
    rows, refs, bad = [], [], []
    seen: set[str] = set()
    for path in expanded:
        for ref, raw in read_raw_rows(path):
            report.rows_read += 1
            try:
                if isinstance(raw, RawRowError):
                    raise BadRow(str(raw))
                row = normalize_row(raw, paths, cfg.instruction_suffix)
            except BadRow as exc:
                bad.append((ref, str(exc)))
                continue
            if cfg.dedup:
                key = prompt_key(row["prompt"])
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
            rows.append(row)
            refs.append(ref)
    report.bad_rows = dict(Counter(reason for _, reason in bad))
    report.prompts = len(rows)
    if bad:
        listing = "\n  ".join(describe_bad_rows(bad))
        hint = (f" Fields read (data.layout={cfg.layout}, data.fields.*): "
                + ", ".join(f"{k}={v!r}" for k, v in paths.items() if v))
        if cfg.bad_rows == BadRows.error or not rows:
            why = "and no usable row is left" if rows == [] and cfg.bad_rows == BadRows.skip else \
                "(data.bad_rows=error; data.bad_rows=skip leaves them out)"
            raise DataError(f"{field_name}: {len(bad)} bad row(s) of {report.rows_read} {why}:\n  {listing}\n{hint}")
        log.warning("%s: skipped %d bad row(s) of %d (data.bad_rows=skip):\n  %s", field_name, len(bad),
                    report.rows_read, listing)
    if not rows:
        raise DataError(f"{field_name}: no rows in {expanded}")
    return DataRows(rows, refs, report)


def write_data_report(path, reports: dict[str, DataReport | None]) -> None:
    """``data_report.json``: each split's counts (rows read, bad by reason, duplicates, too long, kept)."""
    import dataclasses
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: dataclasses.asdict(v) if v else None for k, v in reports.items()},
                                     indent=1) + "\n")
