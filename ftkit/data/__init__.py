"""Data sets: detect the format, validate with line numbers, profile, normalize, and render to tokens.

One streaming pass in bounded memory: files are read line by line (a JSON array element by element),
never loaded whole. Bad data never raises; it comes back as ``Problem``s, each with its line (or
Parquet row), field and fix. Nothing heavy is imported at module load (pyarrow only for Parquet,
transformers and datasets only when rendering), so the notebook client stays light.

Rooms, each importing only the ones above it:

    problems.py       Problem, DatasetProfile, limits, checks of single values
    readers.py        streaming readers per file kind: (line, record, problem) events
    conversations.py  alpaca, chat and sharegpt records normalized to messages
    preferences.py    preference pairs (plain, TRL's, OpenAI's) and KTO's labelled answers, normalized
    formats.py        format detection, column mappings, normalize, read_examples
    render.py         normalized examples into token ids and labels (chat templates, masks)
    preference_sets.py  normalized preference rows into the datasets.Dataset TRL's trainers take
    profile.py        inspect_dataset / validate_dataset: the profile of one pass

Normalized shapes, what ``read_examples`` yields and ``render.tokenize_example`` takes:

    alpaca, chat, sharegpt  {"messages": [{"role", "content", "loss_weight"?, "tool_calls"?}], "tools"?}
    prompt_completion       {"prompt": str, "completion": str}
    text                    {"text": str}
    preference              {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    unpaired_preference     {"prompt": [messages], "completion": [messages], "label": bool}
"""

from ..core.rules import DATASET_FORMATS
from .formats import checked_columns, detect_format, normalize, read_examples
from .preference_sets import build_preference_dataset, read_preference_dataset, unpair
from .problems import (
    CANONICAL_COLUMNS,
    FORMAT_KEYS,
    KEPT_PER_KIND,
    MAX_DEPTH,
    MAX_MESSAGES,
    PREVIEW_CHARS,
    PREVIEW_ROWS,
    ROLES,
    SHAREGPT_ROLES,
    SHOWN_PER_KIND,
    DatasetProfile,
    Problem,
)
from .profile import inspect_dataset, validate_dataset
from .readers import EXTENSIONS, MAX_LINE_BYTES

__all__ = [
    "CANONICAL_COLUMNS",
    "EXTENSIONS",
    "FORMAT_KEYS",
    "DATASET_FORMATS",
    "KEPT_PER_KIND",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "MAX_MESSAGES",
    "PREVIEW_CHARS",
    "PREVIEW_ROWS",
    "ROLES",
    "SHAREGPT_ROLES",
    "SHOWN_PER_KIND",
    "DatasetProfile",
    "Problem",
    "build_preference_dataset",
    "checked_columns",
    "detect_format",
    "inspect_dataset",
    "normalize",
    "read_examples",
    "read_preference_dataset",
    "unpair",
    "validate_dataset",
]
