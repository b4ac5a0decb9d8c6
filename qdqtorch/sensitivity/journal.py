"""Append-only JSONL journals of finished evaluations, safe against kill -9, refusing foreign fingerprints.

Each writer (a run, a shard, a torchrun rank) appends to its own `journal*.jsonl` in the output folder; readers take
the union of all of them. Line 1 is a header {"type": "header", "format", "version", "fingerprint", "meta"}; every
other line is {"type": "result", "key", "metric", "time_s"}. A line is written with one write() and fsync'd, so a
crash loses at most the line being written; a torn last line is dropped (and cut off before appending again).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import OutputError, QdqtorchError, UsageError

FORMAT = "qdqtorch.sensitivity.journal"
VERSION = 1


class FingerprintMismatch(QdqtorchError, RuntimeError):
    """Saved results were computed for another model, data or settings."""


def _read_lines(path: Path) -> Tuple[List[dict], int]:
    """Parsed lines and the byte length of the intact prefix (a torn last line is excluded)."""
    raw = path.read_bytes()
    records, good = [], 0
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and line == b"":
            break
        if last:  # no trailing newline: the write was interrupted
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise UsageError(f"{path}: line {i + 1} is not valid JSON; the journal is damaged (only the last line "
                             "can be torn by a crash). Delete the file to recompute its entries.") from None
        good += len(line) + 1
    return records, good


def read_journal(path: Path) -> Tuple[Optional[dict], Dict[str, dict]]:
    """(header or None if the file has none yet, results by key)."""
    records, _ = _read_lines(path)
    if not records:
        return None, {}
    header = records[0]
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise UsageError(f"{path}: not a qdqtorch sensitivity journal (first line is no {FORMAT} header)")
    if header.get("version") != VERSION:
        raise UsageError(f"{path}: journal version {header.get('version')} is not supported (expected {VERSION})")
    results = {}
    for rec in records[1:]:
        if rec.get("type") == "result":
            results.setdefault(rec["key"], rec)
    return header, results


def journal_paths(directory: Path) -> List[Path]:
    """Every journal in a folder, in name order (so merging is deterministic)."""
    return sorted(Path(directory).glob("journal*.jsonl"))


def load_results(directory: Path, fingerprint: Optional[str]) -> Tuple[Optional[dict], Dict[str, dict]]:
    """Union of all journals in `directory` (first occurrence of a key wins); the first header found.

    Raises FingerprintMismatch when a journal was written for another fingerprint (None accepts any but requires
    all journals to agree).
    """
    header, results = None, {}
    for path in journal_paths(directory):
        h, recs = read_journal(path)
        if h is None:
            continue
        expected = fingerprint if fingerprint is not None else (header or h)["fingerprint"]
        if h["fingerprint"] != expected:
            raise FingerprintMismatch(
                f"{path} holds results for a different model, data or settings (fingerprint {h['fingerprint'][:12]} "
                f"vs {expected[:12]}). Use another output folder, pass --fresh to discard the old results, or rerun "
                "with the settings they were made with.")
        header = header or h
        for key, rec in recs.items():
            results.setdefault(key, rec)
    return header, results


class Journal:
    """This writer's journal file; creates it with a header, repairs a torn tail, appends one record per line."""

    def __init__(self, path: Path, fingerprint: str, meta: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"type": "header", "format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "meta": meta}
        if self.path.exists():
            records, good = _read_lines(self.path)
            if records and records[0].get("fingerprint") != fingerprint:
                raise FingerprintMismatch(f"{self.path} was written for another fingerprint; use another output "
                                          "folder or --fresh")
            if good != self.path.stat().st_size:
                os.truncate(self.path, good)
            if not records:
                self._write(header)
        else:
            self._write(header)

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot append to the sweep journal {self.path}: {exc.strerror or exc}") from exc

    def append(self, key: str, metric: float, time_s: float) -> dict:
        """Persist one finished evaluation."""
        record = {"type": "result", "key": key, "metric": metric, "time_s": round(time_s, 4)}
        self._write(record)
        return record


def discard(directory: Path) -> int:
    """Delete every journal in a folder (--fresh); returns how many."""
    paths = journal_paths(directory)
    for path in paths:
        path.unlink()
    return len(paths)
