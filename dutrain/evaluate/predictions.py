"""Predictions files: one ``{"sample_id": ..., "completion": ...}`` JSON object per line.

Any outside system (a hosted VLM, a colleague's model) is scored on the benchmark through this
file. Reading never fails on a bad line: the line is counted as malformed and the sample it
belonged to is scored as a format failure (an empty completion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from dutrain.io.storage import filesystem
from dutrain.runtime.preflight import PreflightError, s3_errors


@dataclass
class Predictions:
    completions: dict[str, str | None] = field(default_factory=dict)
    #: (line number, reason) of every line that is not a valid prediction
    malformed: list[tuple[int, str]] = field(default_factory=list)
    #: sample ids seen more than once (the first line wins)
    duplicates: list[str] = field(default_factory=list)


def parse_lines(lines: Iterable[str]) -> Predictions:
    """Parse predictions lines (blank lines are skipped).

    A line with a string ``sample_id`` but no string ``completion`` is malformed and maps its
    sample to None (scored as a format failure); a line without a usable id is only counted.
    """
    out = Predictions()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except ValueError as exc:
            out.malformed.append((no, f"not JSON ({exc.msg})"))
            continue
        sid = obj.get("sample_id") if isinstance(obj, dict) else None
        if not isinstance(sid, str):
            out.malformed.append((no, "no string 'sample_id'"))
            continue
        comp = obj.get("completion")
        if not isinstance(comp, str):
            out.malformed.append((no, f"{sid}: no string 'completion'"))
            comp = None
        if sid in out.completions:
            out.duplicates.append(sid)
            continue
        out.completions[sid] = comp
    return out


def read_predictions(path: str, storage: Any = None) -> Predictions:
    fs, p = filesystem(path, storage)
    with s3_errors("predictions", path):
        if fs.isdir(p):
            raise PreflightError(f"bad value for 'predictions': '{path}' is a folder, not a "
                                 f"JSONL file")
        if not fs.exists(p):
            raise PreflightError(f"predictions file '{path}' does not exist")
    with fs.open(p, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    return parse_lines(text.splitlines())


def write_predictions(path: str, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows (each with sample_id and completion, plus anything else) as JSONL."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
