"""The one streaming pass of ``inspect_dataset``: problems (capped per kind), token lengths,
duplicates and a preview, gathered into a ``DatasetProfile``."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .formats import _check_arguments, _renamed, detect_format, normalize
from .preferences import estimated_tokens as estimated_preference_tokens
from .preferences import is_preference
from .problems import KEPT_PER_KIND, PREVIEW_CHARS, PREVIEW_ROWS, DatasetProfile, Problem
from .readers import _readable_file, records, sniff


# -- public entry points ---------------------------------------------------------------------------
def inspect_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_seq_length: int = 2048,
) -> DatasetProfile:
    """Detect, validate and profile in one streaming pass. Bad data gives problems, not exceptions;
    only a missing or unreadable path (or a wrong argument) raises DatasetError."""
    path = _readable_file(path)
    _check_arguments(format, columns)
    source, problem = sniff(path)
    scan = _Scan(
        DatasetProfile(str(path), source.label, format, max_seq_length=max_seq_length),
        columns,
        tokenizer,
    )
    if problem is not None:
        scan.add(problem)
        return scan.finish()
    for line, record, problem in records(source):
        if problem is not None:
            scan.add(problem)
        else:
            scan.record(line, _renamed(record, columns))
    return scan.finish()


def validate_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    tokenizer: Any = None,
    max_seq_length: int = 2048,
) -> DatasetProfile:
    """inspect_dataset, raising DatasetError (its summary, and every problem kept) when not ok."""
    profile = inspect_dataset(
        path, format=format, columns=columns, tokenizer=tokenizer, max_seq_length=max_seq_length
    )
    if not profile.ok:
        raise DatasetError(profile.summary(), profile.problems)
    return profile


# -- profiling: one pass, memory bounded by what is kept -------------------------------------------
class _Scan:
    """Accumulates a profile record by record: problems (capped per kind), token lengths (as a
    histogram, not a list) and duplicates (one hash per distinct example)."""

    def __init__(self, profile: DatasetProfile, columns: dict[str, str] | None, tokenizer: Any):
        self.profile = profile
        self.fixed_format = profile.format is not None
        self.columns = columns or {}
        self.count_tokens = (
            partial(_counted_tokens, tokenizer=tokenizer) if tokenizer else _estimated_tokens
        )
        self.count_preference = (
            partial(_counted_preference_tokens, tokenizer=tokenizer)
            if tokenizer
            else estimated_preference_tokens
        )
        self.lengths: Counter[int] = Counter()
        self.seen = _SeenExamples()

    def add(self, problem: Problem) -> None:
        counts = self.profile.problem_counts
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
        if counts[problem.kind] <= KEPT_PER_KIND:
            (
                self.profile.problems if problem.severity == "error" else self.profile.warnings
            ).append(problem)

    def record(self, line: int | None, record: Any) -> None:
        self.profile.rows += 1
        if not isinstance(record, dict):
            self.add(
                Problem(
                    line,
                    None,
                    "wrong_type",
                    f"a record is {type(record).__name__}, not an object",
                    "make each record a JSON object with named fields",
                )
            )
            return
        fmt = self._format_of(line, record)
        if fmt is None:
            return
        example, problems = normalize(record, fmt, line)
        for problem in problems:
            self.add(self._in_user_terms(problem))
        if example is not None:
            self._measure(line, example)

    def _format_of(self, line: int | None, record: dict[str, Any]) -> str | None:
        if self.fixed_format:
            return self.profile.format
        found = detect_format(record)
        if found is None:
            self.add(
                Problem(
                    line,
                    None,
                    "unknown_format",
                    f"no known fields among {sorted(record)[:8]}",
                    "name them messages, conversations, instruction/output, prompt/completion, "
                    "text, prompt/chosen/rejected (pairs) or prompt/completion/label (KTO), "
                    "or map yours with columns={'instruction': 'question', ...}",
                )
            )
        elif self.profile.format is None:
            self.profile.format = found
        elif found != self.profile.format:
            self.add(
                Problem(
                    line,
                    None,
                    "mixed_formats",
                    f"this record is {found}, the file started as {self.profile.format}",
                    "keep one format per file (split it in two)",
                )
            )
            return None
        return found

    def _in_user_terms(self, problem: Problem) -> Problem:
        """Name the field as the user's file does when columns= renamed it."""
        if problem.field:
            root = problem.field.split(".")[0].split("[")[0]
            if root in self.columns:
                problem.field = self.columns[root] + problem.field[len(root) :]
        return problem

    def _measure(self, line: int | None, example: dict[str, Any]) -> None:
        profile = self.profile
        if len(profile.preview) < PREVIEW_ROWS:
            profile.preview.append(_shortened(example))
        if is_preference(example):
            tokens = self._measure_preference(line, example)
        else:
            tokens = self.count_tokens(example)
        self.lengths[tokens] += 1
        if tokens > profile.max_seq_length:
            profile.over_max_seq_length += 1
            self.add(
                Problem(
                    line,
                    None,
                    "too_long",
                    f"{tokens} tokens, over max_seq_length {profile.max_seq_length}: "
                    "it will be truncated",
                    "shorten or split it, or raise max_seq_length",
                    "warning",
                )
            )
        first = self.seen.first_line(_fingerprint(example), line or 0)
        if first is not None:
            profile.duplicates += 1
            self.add(
                Problem(
                    line,
                    None,
                    "duplicate",
                    f"the same example as line {first}",
                    "remove duplicates: they weigh an example twice",
                    "warning",
                )
            )

    def _measure_preference(self, line: int | None, example: dict[str, Any]) -> int:
        """Counts the pair (or the labelled answer), warns of a prompt that leaves no room for its
        answers, and returns the tokens of the prompt with its longer answer."""
        profile = self.profile
        if "chosen" in example:
            profile.pairs += 1
        elif example["label"]:
            profile.desirable += 1
        else:
            profile.undesirable += 1
        prompt, tokens = self.count_preference(example)
        if prompt >= profile.max_seq_length:
            self.add(
                Problem(
                    line,
                    "prompt",
                    "prompt_too_long",
                    f"the prompt alone is {prompt} tokens, max_seq_length is "
                    f"{profile.max_seq_length}: no answer fits after it, so the example teaches "
                    "nothing",
                    "shorten the prompt, or raise max_seq_length",
                    "warning",
                )
            )
        return tokens

    def finish(self) -> DatasetProfile:
        profile = self.profile
        if not self.lengths and not profile.problems:
            self.add(
                Problem(
                    None,
                    None,
                    "empty_file",
                    "no examples in the file",
                    "upload a file with at least one example",
                )
            )
        if profile.format == "unpaired_preference" and self.lengths:
            self._check_both_labels()
        if self.lengths:
            profile.tokens = _token_stats(
                self.lengths, estimated=self.count_tokens is _estimated_tokens
            )
            profile.tokens_per_epoch = sum(
                min(n, profile.max_seq_length) * k for n, k in self.lengths.items()
            )
        return profile

    def _check_both_labels(self) -> None:
        profile = self.profile
        if profile.desirable and profile.undesirable:
            return
        given, missing = ("true", "false") if profile.desirable else ("false", "true")
        self.add(
            Problem(
                None,
                "label",
                "one_label",
                f"every example is labelled {given}: KTO needs both desirable (true) and "
                "undesirable (false) examples",
                f"add examples labelled {missing}",
                "warning",
            )
        )


def _shortened(value: Any) -> Any:
    """A preview of an example: texts past PREVIEW_CHARS cut, saying how much was cut."""
    if isinstance(value, str) and len(value) > PREVIEW_CHARS:
        return f"{value[:PREVIEW_CHARS]}... ({len(value) - PREVIEW_CHARS:,} more characters)"
    if isinstance(value, dict):
        return {k: _shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v) for v in value]
    return value


def _fingerprint(example: dict[str, Any]) -> int:
    """A 64-bit hash of what an example says: cheaper than serializing it, and equal for equal
    examples within one process (str hashes are salted per process, which is all a pass needs)."""
    if "messages" not in example:  # preference sides are message lists: hashed as tuples
        return hash(tuple(_hashable(v) for v in example.values()))
    turns = tuple(
        (m["role"], m["content"], m.get("loss_weight"), repr(m.get("tool_calls")))
        for m in example["messages"]
    )
    return hash((turns, repr(example.get("tools"))))


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple((m["role"], m["content"]) for m in value)
    return value


class _SeenExamples:
    """Fingerprints with the line each was first seen on, in an open-addressing table over two
    flat arrays: 12 bytes a slot instead of ~100 bytes a dict entry, since it holds one entry per
    distinct example and is what grows with the file."""

    def __init__(self) -> None:
        self.keys, self.lines, self.used = array("q", bytes(8 << 10)), array("i", bytes(4 << 10)), 0

    def first_line(self, key: int, line: int) -> int | None:
        """The line this key was first seen on; None (and remembered) when it is new."""
        key = key or 1  # 0 marks an empty slot
        keys, mask = self.keys, len(self.keys) - 1
        slot = key & mask
        while keys[slot]:
            if keys[slot] == key:
                return self.lines[slot]
            slot = (slot + 1) & mask
        keys[slot], self.lines[slot] = key, line
        self.used += 1
        if self.used * 4 > len(keys) * 3:
            self._grow()
        return None

    def _grow(self) -> None:
        old = zip(self.keys, self.lines)
        size = len(self.keys) * 2
        self.keys, self.lines, self.used = (
            array("q", bytes(8 * size)),
            array("i", bytes(4 * size)),
            0,
        )
        for key, line in old:
            if key:
                self.first_line(key, line)


def _token_stats(lengths: Counter[int], estimated: bool) -> dict[str, Any]:
    total = sum(lengths.values())
    ordered = sorted(lengths)
    p95_rank, seen, p95 = math.ceil(0.95 * total), 0, ordered[-1]
    for n in ordered:
        seen += lengths[n]
        if seen >= p95_rank:
            p95 = n
            break
    mean = sum(n * k for n, k in lengths.items()) / total
    return {
        "min": ordered[0],
        "mean": round(mean, 1),
        "p95": p95,
        "max": ordered[-1],
        "estimated": estimated,
    }


def _estimated_tokens(example: dict[str, Any]) -> int:
    """About 4 characters a token, plus a few for each message's role markers and the end token."""
    if "messages" in example:
        chars = sum(len(m["content"]) for m in example["messages"])
        return math.ceil(chars / 4) + 4 * len(example["messages"]) + 1
    chars = (
        len(example.get("text", ""))
        + len(example.get("prompt", ""))
        + len(example.get("completion", ""))
    )
    return math.ceil(chars / 4) + 1


def _counted_tokens(example: dict[str, Any], tokenizer: Any) -> int:
    from .render import count_tokens

    return count_tokens(example, tokenizer)


def _counted_preference_tokens(example: dict[str, Any], tokenizer: Any) -> tuple[int, int]:
    from .preference_sets import count_preference_tokens

    return count_preference_tokens(example, tokenizer)
