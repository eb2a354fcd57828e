"""Any text corpus to token shards for pretraining: uint16 .npy files plus a meta.json.

    python fineweb.py                                        # FineWeb-Edu sample-10BT, streamed
    python fineweb.py --dataset pystdlib --max-tokens 2000000  # offline smoke corpus
    python fineweb.py --dataset tinyshakespeare
    python fineweb.py --input 'corpus/*.jsonl' --text-field content --out data/mine
    python fineweb.py --from-hub USER/REPO                   # ready-made shards from the Hub
    python fineweb.py --dataset pystdlib --tokenizer data/tokenizers/pystdlib-8192.json --out data/pystdlib-bpe8k
    python fineweb.py --dataset pystdlib --bench             # tokens/s vs single-thread tiktoken

Format (version 1): files `{name}_{split}_{index:06d}.npy` (index counts across both splits, as in
build-nanogpt), each a 1-D uint16 array written with np.save. The token stream is every document
preceded by <|endoftext|> (50256 in GPT-2's vocabulary); its first --val-tokens tokens are the val
split, the rest train, cut into shards of exactly --shard-size tokens (documents run across shard
boundaries). meta.json records the source, tokenizer, settings and every shard, and is what
train_gpt2.py reads through `read_meta`, `list_shards` and `load_shard`. The tokenizer is GPT-2's,
or with --tokenizer a tokenizer.json from train_tokenizer.py; meta.json's "tokenizer" record holds
its vocabulary size (the model's vocab_size), the hash of its vocabulary and its path. Rerunning the same command resumes after the last complete shard
(or says the folder is done); a different command into the same folder is refused unless --overwrite.

Sources, one document each: a FineWeb-Edu row; a .txt file; a .jsonl/.json/.parquet row; a .py file
of this interpreter's standard library (sorted by path, so the output is deterministic). Tiny
Shakespeare is one document: it is one continuous text, and splitting it (by speech, say) would
put <|endoftext|> tokens into the middle of scenes that the model should learn to continue.

Reference sizes: FineWeb-Edu sample-10BT is about 10B tokens (100 shards: 1 val + 99 train); Tiny
Shakespeare 338k tokens; CPython 3.11's standard library 15.3M tokens in 1,790 files. Speed, with
`--dataset pystdlib --bench` on a 2-core AMD EPYC VM (runs with the machine otherwise idle): the
pipeline with 2 workers 8.7-10.0M tokens/s, tiktoken's single-thread encode_ordinary 4.8-6.0M
tokens/s, 1.67-1.93x (median 1.78x) in the same runs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import glob
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model import file_sha256, get_tokenizer, vocab_sha256

FORMAT_VERSION = 1
SPLITS = ("train", "val")
SHARD_RE = re.compile(r"^(?P<name>.+)_(?P<split>train|val)_(?P<index>\d{6})\.npy$")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")  # one document per row
INPUT_SUFFIXES = (".txt", *TABLE_SUFFIXES)  # .txt: one document per file
FINEWEB_EDU_REPO, FINEWEB_EDU_CONFIG = "HuggingFaceFW/fineweb-edu", "sample-10BT"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Text per worker task: large enough that pickling and IPC cost little next to BPE (~1 MB is
# ~250 FineWeb documents), small enough to balance the load and keep the progress bar moving.
CHUNK_CHARS = 1 << 20
# Tokenizing flags, which --from-hub (it downloads shards made already) refuses rather than ignores.
FROM_HUB_UNUSED = ("--max-tokens", "--val-tokens", "--shard-size", "--text-field", "--workers")
# --bench without --max-tokens: the whole standard library (~15M tokens), but not all of FineWeb-Edu.
BENCH_MAX_TOKENS = 20_000_000

# dataset: (shard name prefix, default --out, default --val-tokens; None means one full shard)
SOURCES = {
    "fineweb-edu": ("edufineweb", "data/edu_fineweb10B", None),
    "tinyshakespeare": ("tinyshakespeare", "data/tinyshakespeare", 32_768),  # ~10% of its 338k
    "pystdlib": ("pystdlib", "data/pystdlib", 200_000),
    "custom": ("custom", "data/custom", 100_000),
}


class ShardError(ValueError):
    """A problem the user can fix (missing or corrupt shards, bad input); the message says how."""


@dataclass
class FinewebConfig:
    dataset: str | None = None  # None: fineweb-edu, unless --input or --from-hub is given
    input: list[str] = field(default_factory=list)
    text_field: str = "text"
    from_hub: str | None = None
    tokenizer: str | None = None  # a tokenizer.json from train_tokenizer.py; None: GPT-2's
    out: str | None = None  # None: the source's default folder (SOURCES)
    val_tokens: int | None = None  # None: the source's default, at most 10% of --max-tokens
    shard_size: int = 100_000_000  # tokens per shard
    max_tokens: int | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    overwrite: bool = False
    bench: bool = False
    bench_repeats: int = 3


# -----------------------------------------------------------------------------
# Reading shards (train_gpt2.py uses these)


def _suggest_command(data_dir: Path) -> str:
    """The command that builds a folder that has no meta.json: its dataset's, guessed from the name."""
    for dataset, (_, default_out, _) in SOURCES.items():
        if data_dir.name == Path(default_out).name:
            source = "--input FILES" if dataset == "custom" else f"--dataset {dataset}"
            return f"python fineweb.py {source} --out {data_dir}"
    return f"python fineweb.py --dataset pystdlib --out {data_dir}"


def _rebuild_hint(data_dir: Path) -> str:
    try:
        command = json.loads((data_dir / "meta.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        command = _suggest_command(data_dir)
    return f"rebuild with `{command} --overwrite`"


def _open_shard(path: Path, hint: str | None, mmap: bool) -> np.ndarray:
    try:
        tokens = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ShardError(f"{path} is missing or not a token shard ({error}): {hint or _rebuild_hint(path.parent)}") from error
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise ShardError(
            f"{path} holds a {tokens.dtype} array of shape {tokens.shape}, not 1-D uint16 tokens: "
            f"{hint or _rebuild_hint(path.parent)}"
        )
    return tokens


def load_shard(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """One shard as a 1-D uint16 array (memory-mapped if `mmap`); a truncated or foreign file raises ShardError."""
    return _open_shard(Path(path), None, mmap)


def read_meta(data_dir: str | os.PathLike) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise ShardError(f"no token shards in {data_dir} ({path} is missing): build them with `{_suggest_command(data_dir)}`")
    try:
        meta = json.loads(path.read_text())
    except ValueError as error:
        raise ShardError(f"{path} is not valid JSON ({error}): {_rebuild_hint(data_dir)}") from error
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path} is not a format-{FORMAT_VERSION} fineweb.py record: {_rebuild_hint(data_dir)}")
    return meta


def _check_shards(data_dir: Path, records: list[dict], hint: str | None = None) -> None:
    """Each recorded shard exists, is uint16 and holds its recorded token count (read from the header only)."""
    for record in records:
        tokens = _open_shard(data_dir / record["file"], hint, mmap=True)
        if len(tokens) != record["tokens"]:
            raise ShardError(
                f"{data_dir / record['file']} holds {len(tokens)} tokens, but meta.json records {record['tokens']}: "
                f"{hint or _rebuild_hint(data_dir)}"
            )


def list_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shard files of one split, sorted, after checking them against meta.json."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if not meta["complete"]:
        raise ShardError(f"{data_dir} holds an unfinished run: finish it with `{meta['command']}` (it resumes)")
    records = [record for record in meta["shards"] if record["split"] == split]
    if not records:
        raise ShardError(f"{data_dir}/meta.json lists no {split} shards: {_rebuild_hint(data_dir)}")
    _check_shards(data_dir, records)
    return sorted(data_dir / record["file"] for record in records)


# -----------------------------------------------------------------------------
# Command-line value types, for every script's argparse (this is the lowest stage, which they all
# import): a bad value stops the script before it starts, with argparse's one line
# "error: argument --flag: must be ..." and exit code 2.


def _number_type(kind: type, accepted: str, ok: Callable) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {accepted}, not {text!r}") from None
        if not ok(value):  # NaN fails every comparison, so no range admits it
            raise argparse.ArgumentTypeError(f"must be {accepted}, not {text}")
        return value

    return parse


def int_range(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `least` to `most` (no upper limit when None)."""
    accepted = f"an integer from {least} to {most}" if most is not None else f"an integer of at least {least}"
    return _number_type(int, accepted, lambda value: least <= value and (most is None or value <= most))


positive_int = int_range(1)
non_negative_int = int_range(0)
seed_int = int_range(0, 2**32 - 1)  # numpy's and CUDA's seed range; torch's CPU generator takes more
positive_float = _number_type(float, "a number above 0", lambda value: 0 < value < math.inf)
non_negative_float = _number_type(float, "a number of at least 0", lambda value: 0 <= value < math.inf)
probability = _number_type(float, "a number above 0 and at most 1", lambda value: 0 < value <= 1)
fraction_below_one = _number_type(float, "a number in [0, 1)", lambda value: 0 <= value < 1)


# -----------------------------------------------------------------------------
# Sources: each yields (text, number of undecodable bytes replaced) per document, and can say where it
# stands (position()) and start from there, so that resuming does not read the corpus again


def one_line(error: BaseException, limit: int | None = None) -> str:
    """A library's error message, which may span lines, as one line (cut to limit characters, with
    "...", where the whole would drown the line it stands in: a compiler's error can run to pages)."""
    text = " ".join(str(error).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _decode(data: bytes) -> tuple[str, int]:
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        # "ignore" drops exactly the bytes that "replace" replaces, so the lengths give their count.
        valid_bytes = len(data.decode("utf-8", errors="ignore").encode("utf-8"))
        return data.decode("utf-8", errors="replace"), len(data) - valid_bytes


def _iter_table_file(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    import datasets

    if path.stat().st_size == 0:  # datasets' json builder fails on an empty file, which holds no rows
        return
    builder = "parquet" if path.suffix == ".parquet" else "json"
    if "::" in str(path):  # fsspec, which datasets reads through, takes "::" for a chain of URLs
        raise ShardError(f"{path}: datasets cannot read a file whose path holds '::': rename it")
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            if pq.ParquetFile(path).metadata.num_rows == 0:  # datasets fails on it; it holds no rows, like an empty .jsonl
                return
        # data_files is a glob pattern: escaped, it is this one file even if its name holds [ ] * or ?.
        rows = datasets.load_dataset(builder, data_files=glob.escape(str(path)), split="train", streaming=True)
        for index, row in enumerate(rows):
            if not isinstance(row.get(text_field), str):
                problem = f"has no field {text_field!r}" if text_field not in row else f"has a non-string {text_field!r}"
                raise ShardError(f"{path}: row {index} {problem} (fields: {', '.join(row)}); choose one with --text-field")
            yield row[text_field], 0
    except ShardError:
        raise
    except Exception as error:  # datasets and pyarrow raise many types for a malformed file
        raise ShardError(f"{path}: cannot read it as {builder} ({type(error).__name__}: {error})") from error


class FileDocuments:
    """The documents of files in order: a .txt file is one, a .jsonl/.json/.parquet row is one.

    An iterator that can say where it stands: position() is {"file": index, "row": rows of it
    consumed}, JSON for meta.json, and FileDocuments(paths, text_field, start=position) goes on from
    there, reading again only the earlier rows of that one file.
    """

    def __init__(self, paths: list[Path], text_field: str, start: dict | None = None):
        self.paths, self.text_field = paths, text_field
        self.file, self.row = (start["file"], start["row"]) if start else (0, 0)
        self._documents = self._read()

    def position(self) -> dict:
        return {"file": self.file, "row": self.row}

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, int]:
        return next(self._documents)

    def _read(self) -> Iterator[tuple[str, int]]:
        while self.file < len(self.paths):
            path = self.paths[self.file]
            if path.suffix in TABLE_SUFFIXES:
                documents = itertools.islice(_iter_table_file(path, self.text_field), self.row, None)
            else:  # one document, done if a row of it is
                documents = [] if self.row else [_decode(path.read_bytes())]
            for document in documents:
                self.row += 1  # before the yield, so position() counts the document the consumer now holds
                yield document
            self.file, self.row = self.file + 1, 0


class FinewebEduDocuments:
    """FineWeb-Edu's rows, streamed; an iterator like FileDocuments. Its position() is the streaming
    dataset's state_dict(), from which datasets restarts at the exact row. To get there it reads again
    (as Arrow tables, not Python rows) what precedes the row in its parquet file and, near the start of
    a file, the file before: one or two of sample-10BT's 14 files of ~2 GB, not everything before the row."""

    def __init__(self, start: dict | None = None):
        self.start, self.rows = start, None
        self._documents = self._read()

    def position(self) -> dict | None:
        # state_dict() describes the iteration in progress, so until it starts the position is `start`.
        return self.start if self.rows is None else self.rows.state_dict()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, int]:
        return next(self._documents)

    def _read(self) -> Iterator[tuple[str, int]]:
        import datasets
        from huggingface_hub.utils import httpx  # huggingface_hub's HTTP library, whose errors it raises unchanged

        try:
            # Streaming reads the parquet files as it goes, instead of a ~40 GB download and cache.
            rows = datasets.load_dataset(FINEWEB_EDU_REPO, name=FINEWEB_EDU_CONFIG, split="train", streaming=True)
            if self.start is not None:
                rows.load_state_dict(self.start)
            self.rows = rows
            for row in rows:
                yield row["text"], 0
        except (OSError, httpx.HTTPError) as error:  # OSError: ConnectionError, and the hub's HfHubHTTPError
            raise ShardError(
                f"cannot stream {FINEWEB_EDU_REPO} from the Hugging Face Hub ({type(error).__name__}: {one_line(error)}): "
                "check the network and rerun the same command (it resumes), or use --dataset pystdlib or --input for an "
                "offline run"
            ) from error


Documents = FileDocuments | FinewebEduDocuments


def stdlib_files() -> list[Path]:
    """The interpreter's standard-library .py files, sorted; third-party site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [path for path in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(path.relative_to(root).parts)]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def download_tinyshakespeare(path: Path) -> None:
    """Downloads Tiny Shakespeare to `path` unless it is already there, checking its sha256."""
    if path.is_file():
        digest = file_sha256(path)
        if digest == TINYSHAKESPEARE_SHA256:
            return
        # Never replaced: it may be the user's own edit (or a copy with CRLF line endings).
        raise ShardError(
            f"{path} is not Tiny Shakespeare as published (sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}): "
            f"delete it to download it again, or read your copy with --input {path} instead of --dataset tinyshakespeare"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=60) as response:
            data = response.read()  # 1.1 MB
    except (urllib.error.URLError, OSError) as error:
        raise ShardError(f"cannot download {TINYSHAKESPEARE_URL} ({error}): save it as {path} yourself and rerun") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ShardError(f"{TINYSHAKESPEARE_URL} has sha256 {digest}, not {TINYSHAKESPEARE_SHA256}: download it again")
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_atomic(path, lambda file: file.write(data), tmp)
    except OSError as error:
        raise ShardError(f"cannot write {path} ({error}): fix that and rerun") from error
    finally:
        tmp.unlink(missing_ok=True)  # what a failed write left; after a success it is already renamed


def expand_inputs(patterns: list[str], out_dir: Path | None = None) -> list[Path]:
    """--input arguments (files, folders or glob patterns) as absolute file paths, each group sorted.

    A folder's files inside out_dir are left out: the run's own meta.json (and its .from_hub download)
    would otherwise become inputs of the next run, which then no longer matches the folder it resumes."""
    files = []
    skip = out_dir.resolve() if out_dir is not None else None
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in INPUT_SUFFIXES
                             and not (skip is not None and p.resolve().is_relative_to(skip)))
        else:
            matches = [path] if path.is_file() else sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if not matches:
            outside = f" outside --out {out_dir}" if skip is not None and path.is_dir() else ""
            raise ShardError(
                f"--input {pattern}: no such file, no {'/'.join(INPUT_SUFFIXES)} file in it{outside}, and no match as a glob"
            )
        for match in matches:
            if not match.is_file() or match.suffix not in INPUT_SUFFIXES:
                raise ShardError(
                    f"--input {match}: not a .txt (one document per file) or .jsonl/.json/.parquet file (one per row)"
                )
        files += [match.resolve() for match in matches]
    return files


# -----------------------------------------------------------------------------
# Tokenizing, in worker processes

_worker_encoding = None


def _init_worker(tokenizer: str | None) -> None:
    # Built once per worker: pickling the encoding per task would cost more than encoding the task.
    global _worker_encoding
    _worker_encoding = get_tokenizer(tokenizer)


def _encode_chunk(chunk: tuple[dict | None, list[tuple[str, int]]]) -> tuple[dict | None, np.ndarray, np.ndarray, np.ndarray]:
    """(source position, tokens, tokens per document, undecodable bytes per document) for a chunk from _chunks.

    The position only passes through: imap returns results in order, each with its own position,
    with no state shared between the thread that forms chunks and the one that writes shards.
    """
    position, documents = chunk
    eot = np.array([_worker_encoding.eot_token], dtype=np.uint32)
    pieces = []
    for text, _ in documents:
        # encode_to_numpy with no special tokens allowed is encode_ordinary without building a Python list.
        pieces += (eot, _worker_encoding.encode_to_numpy(text, disallowed_special=()))
    lengths = np.array([len(piece) for piece in pieces[1::2]], dtype=np.int64) + 1
    replaced = np.array([count for _, count in documents], dtype=np.int64)
    return position, np.concatenate(pieces).astype(np.uint16), lengths, replaced


def _chunks(documents: Documents) -> Iterator[tuple[dict | None, list[tuple[str, int]]]]:
    """Lists of documents of about CHUNK_CHARS characters, each with the source's position before its
    first document: meta.json records positions per chunk, not per document (FineWeb-Edu has ~10M)."""
    # This runs in the pool's task thread, which pulls chunks ahead of the writer: the position is
    # taken here, while the source stands at the chunk's start.
    position, chunk, chars = documents.position(), [], 0
    for document in documents:
        chunk.append(document)
        chars += len(document[0])
        if chars >= CHUNK_CHARS:
            yield position, chunk
            position, chunk, chars = documents.position(), [], 0
    if chunk:
        yield position, chunk


def check_fits_uint16(encoding) -> None:
    # Checking the largest id once proves every token fits, at no cost per token.
    if encoding.max_token_value >= 2**16:
        raise ShardError(f"tokenizer {encoding.name} has ids up to {encoding.max_token_value}, which do not fit uint16 shards")


def load_tokenizer(path: str | None):
    """GPT-2's tokenizer (path None) or a tokenizer.json; a file that is no tokenizer is a ShardError naming --tokenizer."""
    try:
        encoding = get_tokenizer(path)
    except (OSError, ValueError) as error:
        raise ShardError(f"--tokenizer {path}: {error}") from error
    check_fits_uint16(encoding)
    return encoding


def tokenizer_record(encoding, path: str | None) -> dict:
    """meta.json's description of the tokenizer: vocab_sha256 identifies it, n_vocab is the model's
    vocab_size, and path is where train_gpt2.py finds it (None: GPT-2's, built into model.py)."""
    return {"name": encoding.name, "vocab_sha256": vocab_sha256(encoding), "eot_token": encoding.eot_token,
            "n_vocab": encoding.n_vocab, "path": path}


# -----------------------------------------------------------------------------
# Writing shards


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a power loss can undo it, or keep it while
    the renamed file's contents are lost."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, write: Callable, tmp: Path | None = None) -> None:
    """Writes through `write(file)` to `tmp` (path.tmp unless given), flushes it to disk, then
    renames: a crash, or a machine that dies after it, never leaves a partial `path`. Shards,
    downloads, tokenizers and train_gpt2.py's checkpoints are written this way."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _save_shard(path: Path, tokens: np.ndarray) -> None:
    write_atomic(path, lambda file: np.save(file, tokens))


def write_meta(data_dir: Path, meta: dict) -> None:
    shards = meta["shards"]
    meta["total_tokens"] = sum(record["tokens"] for record in shards)
    meta["split_tokens"] = {split: sum(r["tokens"] for r in shards if r["split"] == split) for split in SPLITS}
    meta["documents"] = sum(record["documents"] for record in shards)
    meta["replaced_bytes"] = sum(record["replaced_bytes"] for record in shards)
    write_atomic(data_dir / "meta.json", lambda file: file.write(json.dumps(meta, indent=1).encode()))


class ShardWriter:
    """Cuts the token stream into shards and records, for each, where the source stands after it."""

    def __init__(self, data_dir: Path, name: str, meta: dict):
        self.data_dir, self.name, self.meta = data_dir, name, meta
        settings = meta["settings"]
        self.val_tokens, self.shard_size, self.max_tokens = settings["val_tokens"], settings["shard_size"], settings["max_tokens"]
        last = meta["shards"][-1] if meta["shards"] else {"documents_done": 0, "offset_tokens": 0}
        # Resuming starts the source at the recorded position, skips the documents after it that are
        # already written, then the part of the next one that is. A record from before positions were
        # kept (like a fresh run) starts the source at its beginning and skips every document done.
        self.documents_done, self.resume_offset_tokens = last["documents_done"], last["offset_tokens"]
        self.resume_position = last.get("source_position")
        self.resume_skip_documents = last.get("documents_after_position", self.documents_done)
        # The source's position at the start of the chunk being added, and the documents written before it.
        self.chunk_position, self.chunk_first_document = None, self.documents_done
        self.shard_start = sum(record["tokens"] for record in meta["shards"])
        self.buffer = np.empty(min(self.shard_size, self.max_tokens or self.shard_size), dtype=np.uint16)
        self.fill = self.shard_documents = self.shard_replaced_bytes = 0

    @property
    def done(self) -> bool:
        return self.max_tokens is not None and self.shard_start >= self.max_tokens

    def _capacity(self) -> int:
        in_val = self.shard_start < self.val_tokens
        capacity = min(self.shard_size, self.val_tokens - self.shard_start) if in_val else self.shard_size
        return capacity if self.max_tokens is None else min(capacity, self.max_tokens - self.shard_start)

    def add(self, source_position: dict | None, tokens: np.ndarray, doc_lengths: np.ndarray, doc_replaced: np.ndarray,
            skip_tokens: int = 0) -> bool:
        """Appends a chunk of whole documents that starts at `source_position`, less its first
        skip_tokens; False once --max-tokens is reached."""
        self.chunk_position, self.chunk_first_document = source_position, self.documents_done
        doc_ends = np.cumsum(doc_lengths)
        doc_starts = doc_ends - doc_lengths
        position = skip_tokens
        while position < len(tokens) and not self.done:
            capacity = self._capacity()
            take = min(capacity - self.fill, len(tokens) - position)
            self.buffer[self.fill : self.fill + take] = tokens[position : position + take]
            first, last = np.searchsorted(doc_starts, [position, position + take])  # documents starting here
            self.shard_documents += int(last - first)
            self.shard_replaced_bytes += int(doc_replaced[first:last].sum())
            position += take
            self.fill += take
            if self.fill == capacity:
                done = int(np.searchsorted(doc_ends, position, side="right"))
                offset = 0 if done == len(doc_lengths) else position - int(doc_starts[done])
                self._flush(self.documents_done + done, offset)
        self.documents_done += len(doc_lengths)
        return not self.done

    def finish(self) -> None:
        if self.fill:
            self._flush(self.documents_done, 0)

    def _flush(self, documents_done: int, offset_tokens: int) -> None:
        split = "val" if self.shard_start < self.val_tokens else "train"
        file = f"{self.name}_{split}_{len(self.meta['shards']):06d}.npy"
        _save_shard(self.data_dir / file, self.buffer[: self.fill])
        self.meta["shards"].append({
            "file": file, "split": split, "tokens": self.fill, "documents": self.shard_documents,
            "replaced_bytes": self.shard_replaced_bytes, "documents_done": documents_done, "offset_tokens": offset_tokens,
            "source_position": self.chunk_position, "documents_after_position": documents_done - self.chunk_first_document,
        })
        write_meta(self.data_dir, self.meta)  # after the shard, so every recorded shard is complete
        self.shard_start += self.fill
        self.fill = self.shard_documents = self.shard_replaced_bytes = 0


# -----------------------------------------------------------------------------
# Running


@dataclass
class Plan:
    """What a run reads and where it writes, resolved from the config."""

    dataset: str
    name: str
    out_dir: Path
    val_tokens: int
    source: dict
    documents: Callable[..., Documents]  # takes a position() of the source to start at, or nothing: its beginning
    tokenizer: str | None  # absolute path of a tokenizer.json; None: GPT-2's


def make_plan(config: FinewebConfig, exclude_out_dir: bool = True) -> Plan:
    """exclude_out_dir: leave the output folder out of --input folders (train_tokenizer.py has no such folder)."""
    dataset = "custom" if config.input else config.dataset or "fineweb-edu"
    name, default_out, default_val_tokens = SOURCES[dataset]
    val_tokens = config.val_tokens
    if val_tokens is None:
        val_tokens = default_val_tokens or config.shard_size
        if config.max_tokens is not None:  # keep a train split however small the run
            val_tokens = max(1, min(val_tokens, config.max_tokens // 10))
    out_dir = Path(config.out or default_out)
    if dataset == "custom":
        files = expand_inputs(config.input, out_dir if exclude_out_dir else None)
        source = {"dataset": dataset, "inputs": [str(path) for path in files], "text_field": config.text_field}
        documents = functools.partial(FileDocuments, files, config.text_field)
    elif dataset == "pystdlib":
        source = {"dataset": dataset, "stdlib": sysconfig.get_paths()["stdlib"], "python": platform.python_version()}
        documents = functools.partial(FileDocuments, stdlib_files(), "text")
    elif dataset == "tinyshakespeare":
        source = {"dataset": dataset, "url": TINYSHAKESPEARE_URL, "sha256": TINYSHAKESPEARE_SHA256}
        documents = functools.partial(FileDocuments, [out_dir / "input.txt"], "text")
    else:
        source = {"dataset": dataset, "repo": FINEWEB_EDU_REPO, "config": FINEWEB_EDU_CONFIG}
        documents = FinewebEduDocuments
    tokenizer = None if config.tokenizer is None else str(Path(config.tokenizer).resolve())
    return Plan(dataset, name, out_dir, val_tokens, source, documents, tokenizer)


def _command(config: FinewebConfig, plan: Plan) -> str:
    """The command that rebuilds this folder, for error messages."""
    parts = ["python", "fineweb.py"]
    parts += ["--input", *config.input] if config.input else ["--dataset", plan.dataset]
    if config.text_field != "text":
        parts += ["--text-field", config.text_field]
    for flag, value in (("--val-tokens", config.val_tokens), ("--max-tokens", config.max_tokens)):
        parts += [flag, str(value)] if value is not None else []
    if config.shard_size != FinewebConfig.shard_size:
        parts += ["--shard-size", str(config.shard_size)]
    if plan.tokenizer is not None:
        parts += ["--tokenizer", plan.tokenizer]
    return shlex.join(parts + ["--out", str(plan.out_dir)])


IDENTITY_KEYS = ("format_version", "source", "tokenizer", "settings", "from_hub")


def _identity(key: str, value):
    """What of a meta.json entry must match for a rerun to continue its shards. A tokenizer is its
    vocabulary: the same one under another path, or in a record written before n_vocab and path
    were kept, makes the same shards."""
    if key == "tokenizer" and isinstance(value, dict):
        return value.get("vocab_sha256"), value.get("eot_token")
    return value


def _remove_outputs(out_dir: Path) -> None:
    """What --overwrite deletes: meta.json and shard files (also half-written .tmp ones), nothing else."""
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.name in ("meta.json", "meta.json.tmp") or SHARD_RE.match(path.name.removesuffix(".tmp")):
                path.unlink()


def open_out_dir(out_dir: Path, fresh: dict, overwrite: bool) -> dict:
    """The record to continue: `fresh`, or an earlier run's with the same identity (to resume or report done)."""
    if overwrite:
        _remove_outputs(out_dir)
    if (out_dir / "meta.json").exists():
        old = read_meta(out_dir)
        if old["shards"]:  # a record without shards protects nothing, so it is simply replaced
            for key in IDENTITY_KEYS:
                if _identity(key, old.get(key)) != _identity(key, fresh[key]):
                    raise ShardError(
                        f"{out_dir} holds shards of another run ({key}: {old.get(key)} there, {fresh[key]} now): "
                        "pass --overwrite to replace them, or choose another --out"
                    )
            _check_shards(out_dir, old["shards"])
            if old["tokenizer"] != fresh["tokenizer"]:  # the same vocabulary: record where it is now
                old["tokenizer"] = fresh["tokenizer"]
                write_meta(out_dir, old)
            return old
    elif out_dir.is_dir() and any(SHARD_RE.match(path.name) for path in out_dir.iterdir()):
        raise ShardError(f"{out_dir} holds shards but no meta.json: pass --overwrite to replace them, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_meta(out_dir, fresh)
    return fresh


def tokenize_to_shards(plan: Plan, meta: dict, workers: int) -> dict:
    writer = ShardWriter(plan.out_dir, plan.name, meta)
    documents = plan.documents(writer.resume_position)
    if meta["shards"]:
        start = "the beginning" if writer.resume_position is None else "its recorded position"
        print(f"resuming after {meta['shards'][-1]['file']} ({writer.documents_done:,} documents done): reading the source "
              f"from {start}, skipping {writer.resume_skip_documents:,} documents")
    # Skipped here rather than lazily, so that the first chunk's position is the one after them.
    for _ in itertools.islice(documents, writer.resume_skip_documents):
        pass
    skip_tokens = writer.resume_offset_tokens
    max_tokens = meta["settings"]["max_tokens"]
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(plan.tokenizer,)) as pool, tqdm(
        total=max_tokens, initial=writer.shard_start, unit="tok", unit_scale=True, desc=plan.name
    ) as bar:
        new_documents = 0
        for position, tokens, doc_lengths, doc_replaced in pool.imap(_encode_chunk, _chunks(documents)):
            before_tokens = writer.shard_start + writer.fill
            more = writer.add(position, tokens, doc_lengths, doc_replaced, skip_tokens)
            skip_tokens = 0
            new_documents += len(doc_lengths)
            bar.set_postfix_str(f"{new_documents / max(bar.format_dict['elapsed'], 1e-9):,.0f} docs/s", refresh=False)
            bar.update(writer.shard_start + writer.fill - before_tokens)
            if not more:
                break
        writer.finish()
    if meta["documents"] == 0:
        raise ShardError(f"empty corpus: {plan.source} holds no documents")
    train_tokens = meta["split_tokens"]["train"]
    if train_tokens == 0:
        total = meta["total_tokens"]
        # --max-tokens cannot be the limit here: run() keeps --val-tokens below it.
        fix = (f"rerun with --overwrite and a smaller --val-tokens, e.g. {max(1, total // 10)}" if total >= 2
               else "a val and a train split need at least 2 tokens: add text")
        raise ShardError(f"the corpus has only {total:,} tokens, all in the val split (--val-tokens {plan.val_tokens:,}): {fix}")
    meta["complete"] = True
    write_meta(plan.out_dir, meta)
    return meta


def download_from_hub(repo_id: str, out_dir: Path, overwrite: bool, encoding, tokenizer: str | None) -> None:
    """Ready-made shards of a Hub dataset repository, checked like local ones and against the tokenizer.
    With overwrite, the folder's old shards are deleted only once the new ones are downloaded and checked."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import filter_repo_objects, httpx, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ShardError(f"--from-hub {repo_id} is not a Hub repository id ({one_line(error)}): pass USER/NAME") from error
    if not overwrite:
        if (out_dir / "meta.json").exists():
            old = read_meta(out_dir)
            if old.get("from_hub") != repo_id:
                raise ShardError(f"{out_dir} holds shards of another run: pass --overwrite to replace them, or choose another --out")
            _check_shards(out_dir, old["shards"])
            print(f"{out_dir} already holds {repo_id} ({old['total_tokens']:,} tokens)")
            return
        if out_dir.is_dir() and any(SHARD_RE.match(path.name) for path in out_dir.iterdir()):
            raise ShardError(f"{out_dir} holds shards but no meta.json: pass --overwrite to replace them, or choose another --out")
    staging, staging_repo = out_dir / ".from_hub", out_dir / ".from_hub" / ".repo_id"
    patterns = ["meta.json", "*_train_*.npy", "*_val_*.npy"]
    try:
        # Listed first, then downloaded at that commit: when the Hub cannot be reached, snapshot_download
        # returns what its folder holds (an interrupted download) without an error.
        info = HfApi().repo_info(repo_id, repo_type="dataset")
        files = list(filter_repo_objects([sibling.rfilename for sibling in info.siblings], allow_patterns=patterns))
        # Downloading beside the output means an interrupted download is resumed and never mistaken for shards.
        # The folder records the repository it holds; for another one (or with --overwrite) it starts afresh.
        if staging.exists() and (overwrite or not staging_repo.is_file() or staging_repo.read_text() != repo_id):
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        staging_repo.write_text(repo_id)
        snapshot_download(repo_id, repo_type="dataset", revision=info.sha, local_dir=staging, allow_patterns=patterns)
    except RepositoryNotFoundError as error:  # also a gated repository not granted to this account
        raise ShardError(
            f"--from-hub {repo_id}: the Hub has no dataset repository of that name that you may read "
            f"({one_line(error)}): check the name; a private or gated one needs `hf auth login` or HF_TOKEN"
        ) from error
    except (httpx.HTTPError, OSError) as error:  # no connection, HF_HUB_OFFLINE=1, an HTTP error, a full disk
        raise ShardError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(error).__name__}: {one_line(error)}): "
            f"{out_dir} is unchanged; fix the cause (check the network) and rerun the same command, which continues the download"
        ) from error
    missing = [file for file in files if not (staging / file).is_file()]
    if missing:
        raise ShardError(f"the download of {repo_id} is incomplete ({len(missing)} files missing, e.g. {missing[0]}): "
                         f"{out_dir} is unchanged; rerun the same command, which continues the download")
    found = {Path(file).name: staging / file for file in files if SHARD_RE.match(Path(file).name)}
    hint = f"{repo_id} or its download is damaged: rerun with --overwrite to download it again"
    record = tokenizer_record(encoding, tokenizer)
    label = "GPT-2" if tokenizer is None else f"--tokenizer {tokenizer}"
    if "meta.json" in files:
        meta = read_meta(staging)
        if not meta["complete"]:
            raise ShardError(f"{repo_id}'s meta.json records an unfinished run: ask its owner to finish the upload")
        if (meta["tokenizer"].get("vocab_sha256"), meta["tokenizer"].get("eot_token")) != (record["vocab_sha256"], record["eot_token"]):
            raise ShardError(
                f"{repo_id} was tokenized with {meta['tokenizer']}, not this {label} tokenizer: pass the tokenizer.json "
                "it was made with as --tokenizer"
            )
        meta["tokenizer"] = record  # the same vocabulary, with this machine's path to it
        missing = [record["file"] for record in meta["shards"] if record["file"] not in found]
        if missing:
            raise ShardError(f"{repo_id}: shards listed in its meta.json are missing: {', '.join(missing)}")
    else:  # e.g. build-nanogpt's shards: describe them from the files, checking they can be this tokenizer's
        shards = []
        for file in sorted(found, key=lambda file: SHARD_RE.match(file)["index"]):
            tokens = _open_shard(found[file], hint, mmap=False)  # read in full, to count documents and check ids
            if tokens.size and tokens.max() >= encoding.n_vocab:
                raise ShardError(
                    f"{found[file]} holds token id {tokens.max()}, beyond the {encoding.n_vocab} tokens of the {label} "
                    "tokenizer: not shards of it"
                )
            shards.append({"file": file, "split": SHARD_RE.match(file)["split"], "tokens": len(tokens),
                           "documents": int(np.count_nonzero(tokens == encoding.eot_token)), "replaced_bytes": 0})
        meta = {"format_version": FORMAT_VERSION, "source": None, "tokenizer": record, "settings": None, "shards": shards}
    if {record["split"] for record in meta["shards"]} != set(SPLITS):
        raise ShardError(f"{repo_id} holds no shards of one split (files *_train_*.npy and *_val_*.npy are both needed)")
    for record in meta["shards"]:
        _check_shards(found[record["file"]].parent, [record], hint)
    if overwrite:  # only now, with the replacement complete and checked
        _remove_outputs(out_dir)
    for record in meta["shards"]:
        os.replace(found[record["file"]], out_dir / record["file"])
    meta.update(from_hub=repo_id, command=f"python fineweb.py --from-hub {repo_id} --out {out_dir}", complete=True)
    write_meta(out_dir, meta)  # last, so the folder only counts as done once every shard is in place
    shutil.rmtree(staging)
    print(f"downloaded {meta['total_tokens']:,} tokens in {len(meta['shards'])} shards from {repo_id} into {out_dir}")


# -----------------------------------------------------------------------------
# Benchmark

_bench_texts: list[str] = []


def _init_bench_worker(texts: list[str], tokenizer: str | None) -> None:
    global _bench_texts
    _bench_texts = texts
    _init_worker(tokenizer)


def _time_encode_ordinary(_=None) -> tuple[float, int]:
    """Seconds and tokens (with one <|endoftext|> per document) for encode_ordinary on the bench texts."""
    start, tokens = time.perf_counter(), 0
    for text in _bench_texts:
        tokens += len(_worker_encoding.encode_ordinary(text)) + 1
    return time.perf_counter() - start, tokens


def bench(plan: Plan, fresh: dict, workers: int, repeats: int) -> None:
    """Rounds of: the full pipeline (into a temporary folder), single-thread encode_ordinary on the same
    documents, and `workers` copies of that at once, which is as fast as this machine can go.

    Rounds alternate so that a noisy neighbour slows every column alike; the best round of each column
    is the machine's undisturbed speed, the median what a run can expect.
    """
    rates = {"pipeline": [], "single": [], "ceiling": []}
    texts, pool = None, None
    try:
        for round_ in range(1, repeats + 1):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                meta = tokenize_to_shards(replace(plan, out_dir=Path(tmp)), open_out_dir(Path(tmp), copy.deepcopy(fresh), False), workers)
                rates["pipeline"].append(meta["total_tokens"] / (time.perf_counter() - start))
            if texts is None:  # the documents the pipeline read, whole (a --max-tokens cut counts its last one whole)
                texts = [text for text, _ in itertools.islice(plan.documents(), meta["documents"])]
                _init_bench_worker(texts, plan.tokenizer)
                pool = multiprocessing.Pool(workers, initializer=_init_bench_worker, initargs=(texts, plan.tokenizer))
                pool.map(abs, range(workers), chunksize=1)  # started and warm: the copies below time encoding only
            seconds, single_tokens = _time_encode_ordinary()
            rates["single"].append(single_tokens / seconds)
            start = time.perf_counter()
            pool.map(_time_encode_ordinary, range(workers), chunksize=1)
            rates["ceiling"].append(workers * single_tokens / (time.perf_counter() - start))
            print(f"round {round_}: pipeline {rates['pipeline'][-1] / 1e6:.2f}M, 1 thread {rates['single'][-1] / 1e6:.2f}M, "
                  f"{workers} copies at once {rates['ceiling'][-1] / 1e6:.2f}M tokens/s")
    finally:
        if pool is not None:
            pool.terminate()
    best = {name: max(values) for name, values in rates.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"pipeline, {workers} workers: {meta['total_tokens']:,} tokens, best {best['pipeline'] / 1e6:.2f}M tokens/s "
          f"(median {median['pipeline'] / 1e6:.2f}M)")
    print(f"tiktoken encode_ordinary, 1 thread: {single_tokens:,} tokens, best {best['single'] / 1e6:.2f}M tokens/s "
          f"(median {median['single'] / 1e6:.2f}M)")
    print(f"speedup: {best['pipeline'] / best['single']:.2f}x best to best (median {median['pipeline'] / median['single']:.2f}x) "
          f"with {workers} workers on {os.cpu_count()} cores")
    print(f"this machine's ceiling, {workers} copies of encode_ordinary at once: {best['ceiling'] / best['single']:.2f}x "
          f"(median {median['ceiling'] / median['single']:.2f}x); the pipeline reaches "
          f"{best['pipeline'] / best['ceiling']:.0%} of it")


def run(config: FinewebConfig) -> None:
    if config.bench and config.max_tokens is None:
        config = replace(config, max_tokens=BENCH_MAX_TOKENS)
    if sum(map(bool, (config.dataset, config.input, config.from_hub))) > 1:
        raise ShardError("pass only one of --dataset, --input and --from-hub")
    if config.val_tokens is not None and config.max_tokens is not None and config.val_tokens >= config.max_tokens:
        raise ShardError(f"--val-tokens {config.val_tokens} leaves nothing of --max-tokens {config.max_tokens} for training")
    encoding = load_tokenizer(config.tokenizer)
    if config.from_hub:
        if config.bench:
            raise ShardError("--bench measures tokenizing, which --from-hub does not do")
        tokenizer = None if config.tokenizer is None else str(Path(config.tokenizer).resolve())
        out_dir = Path(config.out or Path("data") / config.from_hub.split("/")[-1])
        download_from_hub(config.from_hub, out_dir, config.overwrite, encoding, tokenizer)
        return
    plan = make_plan(config)
    if plan.dataset == "tinyshakespeare":
        download_tinyshakespeare(plan.out_dir / "input.txt")
    settings = {"shard_size": config.shard_size, "val_tokens": plan.val_tokens, "max_tokens": config.max_tokens}
    fresh = {"format_version": FORMAT_VERSION, "source": plan.source, "tokenizer": tokenizer_record(encoding, plan.tokenizer),
             "settings": settings, "from_hub": None, "command": _command(config, plan), "complete": False, "shards": []}
    if config.bench:
        bench(plan, fresh, config.workers, config.bench_repeats)
        return
    meta = open_out_dir(plan.out_dir, fresh, config.overwrite)
    if meta["complete"]:
        print(f"{plan.out_dir} already holds this corpus ({meta['total_tokens']:,} tokens); pass --overwrite to rebuild it")
        return
    meta = tokenize_to_shards(plan, meta, config.workers)
    split_tokens = meta["split_tokens"]
    print(
        f"wrote {meta['total_tokens']:,} tokens ({split_tokens['val']:,} val, {split_tokens['train']:,} train) from "
        f"{meta['documents']:,} documents in {len(meta['shards'])} shards to {plan.out_dir}; "
        f"{meta['replaced_bytes']:,} undecodable bytes replaced"
    )


def parse_args(argv: list[str] | None = None) -> FinewebConfig:
    defaults = FinewebConfig()
    defaults_table = "\n".join(f"  {d:16} --out {out:22} --val-tokens {v or 'one full shard'}" for d, (_, out, v) in SOURCES.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"defaults per source (custom is --input; --val-tokens is capped at 10% of --max-tokens):\n{defaults_table}",
    )
    parser.add_argument("--dataset", choices=[d for d in SOURCES if d != "custom"], help="named corpus (default: fineweb-edu)")
    parser.add_argument("--input", nargs="+", default=defaults.input, metavar="PATH_OR_GLOB",
                        help="local corpus: .txt files (one document each), .jsonl/.json/.parquet (one per row), or folders "
                             "of them (a folder's files inside --out are left out)")
    # --text-field, --shard-size and --workers default to None here, so that a flag given can be told from
    # one left out (--from-hub refuses those given); FinewebConfig fills in the defaults.
    parser.add_argument("--text-field", help=f"column holding the text in .jsonl/.json/.parquet inputs (default: {defaults.text_field})")
    parser.add_argument("--from-hub", metavar="REPO_ID", help="download ready-made shards from this Hub dataset repository")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="a tokenizer.json written by train_tokenizer.py (default: GPT-2's tokenizer)")
    parser.add_argument("--out", help="output folder (default: per source, see below; data/REPO_NAME for --from-hub)")
    parser.add_argument("--val-tokens", type=positive_int, help="tokens at the start of the stream that form the val split")
    parser.add_argument("--shard-size", type=positive_int, help=f"tokens per shard (default: {defaults.shard_size})")
    # At least 2: one val token and one train token.
    parser.add_argument("--max-tokens", type=int_range(2), help="stop after this many tokens (default: the whole corpus)")
    parser.add_argument("--workers", type=positive_int, help=f"tokenizer processes (default: all cores, {defaults.workers})")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=defaults.overwrite,
                        help="replace this folder's meta.json and shards (other files stay); tokenizing deletes them at "
                             "the start, --from-hub once the download is complete; without it a rerun resumes")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=defaults.bench,
                        help=f"time the pipeline (into a temporary folder) against single-thread tiktoken on the same text, "
                             f"the first --max-tokens (default: {BENCH_MAX_TOKENS:,}) tokens")
    parser.add_argument("--bench-repeats", type=positive_int, default=defaults.bench_repeats,
                        help="--bench rounds; it reports the best and the median (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.from_hub:
        given = [flag for flag in FROM_HUB_UNUSED if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            raise ShardError(
                f"--from-hub downloads every shard of the repository as it is, so {', '.join(given)} would be ignored: "
                "drop them, or tokenize a corpus with --dataset or --input"
            )
    return FinewebConfig(**{key: value for key, value in vars(args).items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        print(f"fineweb.py config: {json.dumps(asdict(config))}")
        run(config)
    except ShardError as error:
        print(f"fineweb.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
