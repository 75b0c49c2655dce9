"""Named text sources, each split into a train part and an eval part that never overlap.

- `pydoc`: the offline default, the documentation pages that ship with every CPython
  (`pydoc_data.topics`), real English prose of ~465 K characters.
- `wikitext2`, `c4`: the papers' protocol, via `datasets` where the Hub is reachable.
- a path to a local `.txt` or `.jsonl` (field "text") file.

Sources without an official split (pydoc, local files) first lose repeated paragraphs
(the pydoc pages quote each other heavily: without this, a quarter of the evaluation
windows also occur in the calibration text), then are cut into chunks of whole
paragraphs, and each chunk goes to "eval" or "train" by a hash of its own text: the
assignment is deterministic and needs no seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmprune.errors import LLMPruneError

SPLITS = ("train", "eval", "all")
DEFAULT_SOURCE = "pydoc"
EVAL_FRACTION = 0.25
CHUNK_CHARS = 4000
SHINGLE_CHARS = 48
C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "eval": "en/c4-validation.00000-of-00008.json.gz",
}
C4_EVAL_DOCUMENTS = 1100


@dataclass(frozen=True)
class TextSource:
    """A named text and a way to read its documents for one split."""

    name: str
    read: Callable[[str], list[str]]

    def documents(self, split: str = "all") -> list[str]:
        if split not in SPLITS:
            raise LLMPruneError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        docs = [doc for doc in self.read(split) if doc.strip()]
        if not docs:
            raise LLMPruneError(f"text source {self.name!r} has no text in its {split!r} split")
        return docs

    def text(self, split: str = "all") -> str:
        """The split as one string, documents joined by blank lines (WikiText-2 protocol)."""
        return "\n\n".join(self.documents(split))


def paragraph_chunks(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Group consecutive paragraphs into chunks of at most ~max_chars characters."""
    chunks, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        if current and size + len(paragraph) > max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def is_eval_chunk(chunk: str, eval_fraction: float = EVAL_FRACTION) -> bool:
    digest = hashlib.sha256(chunk.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def unique_paragraphs(documents: list[str]) -> list[str]:
    """Drop every paragraph (compared whitespace-insensitively) seen earlier in any document."""
    seen: set[str] = set()
    result = []
    for document in documents:
        kept = []
        for paragraph in document.split("\n\n"):
            key = " ".join(paragraph.split())
            if key and key not in seen:
                seen.add(key)
                kept.append(paragraph)
        if kept:
            result.append("\n\n".join(kept))
    return result


def shingles(text: str, width: int = SHINGLE_CHARS) -> set[str]:
    """All `width`-character substrings of the whitespace-normalised text."""
    flat = " ".join(text.split())
    return {flat[i : i + width] for i in range(max(1, len(flat) - width + 1))}


@functools.lru_cache(maxsize=8)
def split_chunks(documents: tuple[str, ...]) -> dict[str, list[str]]:
    """Deduplicate, chunk and assign chunks to train / eval by hash.

    Paraphrased repeats survive paragraph dedup (the same sentence inside different
    paragraphs), so eval paragraphs sharing any 48-character run with the train text are
    dropped as well: no eval window longer than that can occur in the train text.
    """
    chunks = [
        chunk for doc in unique_paragraphs(list(documents)) for chunk in paragraph_chunks(doc)
    ]
    train = [chunk for chunk in chunks if not is_eval_chunk(chunk)]
    train_shingles = set().union(*(shingles(chunk) for chunk in train)) if train else set()
    evaluation = []
    for chunk in chunks:
        if not is_eval_chunk(chunk):
            continue
        clean = [p for p in chunk.split("\n\n") if shingles(p).isdisjoint(train_shingles)]
        if clean:
            evaluation.append("\n\n".join(clean))
    return {"train": train, "eval": evaluation, "all": chunks}


def hash_split(documents: list[str], split: str) -> list[str]:
    """The chunks of one split, in their original order."""
    return split_chunks(tuple(documents))[split]


def read_pydoc(split: str) -> list[str]:
    from pydoc_data.topics import topics

    return hash_split([topics[key] for key in sorted(topics)], split)


def read_local_file(path: Path) -> list[str]:
    if not path.is_file():
        raise LLMPruneError(f"no such text file: {path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LLMPruneError(f"cannot read {path} as UTF-8 text: {exc}") from None
    if path.suffix.lower() != ".jsonl":
        return [raw]
    documents = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            documents.append(str(record["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LLMPruneError(
                f"{path}:{number}: expected a JSON object with a 'text' field"
            ) from None
    return documents


def load_hub_dataset(label: str, *args, **kwargs):
    """`datasets.load_dataset`, with a one-line error where the Hub cannot be reached."""
    try:
        import datasets

        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # datasets raises many types for "offline"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise LLMPruneError(
            f"cannot load {label} from the Hugging Face Hub ({reason}); "
            "use --data pydoc or a local .txt/.jsonl file"
        ) from None


def read_wikitext2(split: str) -> list[str]:
    names = {"train": ["train"], "eval": ["test"], "all": ["train", "test"]}[split]
    rows = []
    for name in names:
        data = load_hub_dataset("wikitext2", "wikitext", "wikitext-2-raw-v1", split=name)
        rows.append("\n\n".join(data["text"]))
    return rows


def read_c4(split: str) -> list[str]:
    names = ["train", "eval"] if split == "all" else [split]
    documents: list[str] = []
    for name in names:
        data = load_hub_dataset("c4", "allenai/c4", data_files={name: C4_FILES[name]}, split=name)
        texts = data["text"]
        documents.extend(texts[:C4_EVAL_DOCUMENTS] if name == "eval" else texts)
    return documents


REGISTRY: dict[str, Callable[[str], list[str]]] = {
    "pydoc": read_pydoc,
    "wikitext2": read_wikitext2,
    "c4": read_c4,
}


def get_source(name: str | None = None) -> TextSource:
    """Look up a named source or a local text file."""
    name = name or DEFAULT_SOURCE
    if name in REGISTRY:
        return TextSource(name=name, read=REGISTRY[name])
    path = Path(name).expanduser()
    if path.suffix.lower() in (".txt", ".jsonl", ".md", ".text") or path.exists():
        if not path.is_file():
            raise LLMPruneError(f"no such text file: {name}")
        documents = read_local_file(path)
        return TextSource(name=str(path), read=lambda split: hash_split(documents, split))
    raise LLMPruneError(
        f"unknown data source {name!r}; choose {', '.join(REGISTRY)} or a .txt/.jsonl file"
    )
