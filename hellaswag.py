"""HellaSwag (https://arxiv.org/abs/1905.07830): pick the right one of four endings to a context.

    python hellaswag.py -m gpt2                 # downloads the validation set once, then scores it
    python hellaswag.py -m log/model_19072.pt --limit 1000 --out results/hellaswag.json
    torchrun --standalone --nproc_per_node=8 hellaswag.py -m gpt2-xl
    python hellaswag.py -m gpt2 --limit 40 --compare  # timed against build-nanogpt's scoring, same answers

Scoring is the "completion style" of build-nanogpt's hellaswag.py: for each ending the model reads
the context tokens followed by the tokens of " " + ending, and only the ending tokens are scored
(cross-entropy of each ending token given everything before it). `acc` picks the ending with the
lowest summed loss, `acc_norm` the one with the lowest mean loss per token, which does not
penalise long endings. The rows (4 per example) are sorted by length and packed into forward passes
of up to --batch-tokens tokens (32,768 on a GPU, 1,024 on a CPU: default_batch_tokens); only the
scored positions go through the vocabulary projection, in fp32, so a score does not depend on the
batch it was computed in. --compare runs build-nanogpt's own scoring (one example per forward pass,
logits at every position) beside it, checks that both pick the same endings and times both.

Reference numbers on all 10,042 validation examples (from build-nanogpt), to tell at once whether
a result is plausible:
    GPT-2 124M   this scoring: acc 0.2859  acc_norm 0.2955
    GPT-2 XL     this scoring: acc 0.3842  acc_norm 0.4893
    random guessing: 0.25
EleutherAI's lm-evaluation-harness scores multiple-choice style and so reports other numbers:
GPT-2 124M acc 0.2892 / acc_norm 0.3114, GPT-2 XL acc 0.4004 / acc_norm 0.5089.

train_gpt2.py imports `iterate_examples` and `evaluate` for its periodic evaluation, so this
scoring exists once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from fineweb import positive_int, write_atomic
from model import GPT, get_tokenizer, load_model, load_tokenizer

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
# The git blob id of that file (SHA-1 of b"blob <size>\0" + contents): a truncated or changed
# download is refused instead of silently scored.
HELLASWAG_VAL_GIT_SHA1 = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"
VAL_EXAMPLES = 10_042  # in that file; the reference numbers above are on all of them
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "gpt2-repro" / "hellaswag"
NUM_ENDINGS = 4
# Rows are right-padded to a multiple of this many tokens (capped at block_size): matmul shapes that
# tensor cores tile well, and a bounded number of shapes, while HellaSwag's rows (median 82 tokens)
# lose little to padding.
PAD_MULTIPLE_TOKENS = 8
# Padded tokens per forward pass on a GPU (HellaSwag's 10,042 examples take 97). Memory grows with
# it, the weights aside: the fp32 logits of the scored positions and their log-softmax take 2 x 4
# bytes x 50,257 per position (at most 13,552 positions per pass on HellaSwag: 5.4 GB; 13 GB were
# every position scored), bf16 activations ~0.9 GB for 124M and ~1.9 GB for gpt2-xl. On an 80 GB GPU
# that is ~7 GB for 124M and ~14 GB for gpt2-xl with its 6.2 GB of fp32 weights (~21 GB at worst).
GPU_BATCH_TOKENS = 32768
# On a CPU large passes are slower, not faster: their activations (a 124M model's MLP alone holds
# 12 MB per 1,000 tokens) spill out of the caches. See default_batch_tokens.
CPU_BATCH_TOKENS = 1024

# -----------------------------------------------------------------------------
# Data


class HellaSwagDataError(ValueError):
    """A HellaSwag file that cannot be scored; the message names the file and line."""


def default_data_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where download() keeps the official validation file."""
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / "hellaswag_val.jsonl"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download(
    cache_dir: str | os.PathLike | None = None,
    url: str = HELLASWAG_VAL_URL,
    expected_git_sha1: str | None = HELLASWAG_VAL_GIT_SHA1,
    data_flag: str = "--data",
) -> Path:
    """The official validation file in the cache folder, downloaded on first use. `data_flag` is
    the caller's flag for a file of one's own, which the errors name.

    It is written to a temporary name and renamed into place only once complete and verified, so
    an interrupted download never leaves a partial file that later runs would trust.
    """
    path = default_data_path(cache_dir)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {path}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise OSError(f"could not download {url} ({e}); fetch it by other means and pass its path with {data_flag}") from e
    actual = git_blob_sha1(data)
    if expected_git_sha1 is not None and actual != expected_git_sha1:
        raise HellaSwagDataError(
            f"{url} sent a file with git blob id {actual}, not the expected {expected_git_sha1} "
            f"(truncated, or changed upstream); nothing was saved: retry, or pass a copy you trust with {data_flag}"
        )
    # A name of its own: the first process of each node downloads, and nodes may share this folder.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_atomic(path, lambda file: file.write(data), tmp=Path(tmp_name))
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _validate(example, where: str):
    if not isinstance(example, dict):
        raise HellaSwagDataError(f"{where}: expected a JSON object, got {type(example).__name__}")
    if not isinstance(example.get("ctx"), str) or not example["ctx"]:
        # the first ending token is scored given the context, so there must be one
        raise HellaSwagDataError(f"{where}: 'ctx' must be a non-empty string")
    endings = example.get("endings")
    if not isinstance(endings, list) or len(endings) != NUM_ENDINGS or not all(isinstance(e, str) for e in endings):
        found = f"{len(endings)} endings" if isinstance(endings, list) else f"'endings'={endings!r}"
        raise HellaSwagDataError(f"{where}: expected exactly {NUM_ENDINGS} endings (strings), found {found}")
    label = example.get("label")
    if type(label) is not int or not 0 <= label < NUM_ENDINGS:  # type() also rejects True/False
        raise HellaSwagDataError(f"{where}: label {label!r} is not one of 0, 1, 2, 3")


def iterate_examples(path: str | os.PathLike, limit: int | None = None):
    """Yield the examples of a HellaSwag .jsonl file (at most `limit`), each one validated.

    A malformed line raises HellaSwagDataError naming the file and line number; blank lines are
    skipped.
    """
    path = Path(path)
    if limit == 0:
        return
    count = 0
    with path.open("rb") as f:  # bytes, so that invalid UTF-8 is reported with its line number too
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                example = json.loads(line)
            except ValueError as e:  # JSONDecodeError or UnicodeDecodeError
                raise HellaSwagDataError(f"{where}: not valid JSON ({e})") from None
            _validate(example, where)
            yield example
            count += 1
            if count == limit:
                return


def _encode_ordinary_all(enc, texts: list[str]) -> list[list[int]]:
    """enc.encode_ordinary of every text, a chunk of texts per thread. tiktoken releases the GIL as
    it encodes; its encode_ordinary_batch makes one task per text, which costs more than encoding
    one of HellaSwag's short texts (2.9 s for the 50,210 texts of the validation set, against 1.0 s
    in one thread and 0.6-0.7 s in two, on a 2-core VM)."""
    num_threads = min(8, os.cpu_count() or 1)
    chunk = max(1, -(-len(texts) // num_threads))
    with ThreadPoolExecutor(num_threads) as pool:
        parts = pool.map(lambda start: [enc.encode_ordinary(text) for text in texts[start : start + chunk]], range(0, len(texts), chunk))
        return [tokens for part in parts for tokens in part]


def render_examples(examples: list[dict], enc) -> tuple[list[list[int]], list[int]]:
    """The token rows (context + ending) of every example's four endings, example by example, and
    each row's number of ending tokens."""
    # GPT-2-style BPE tokens carry their leading space: " " + ending tokenises the ending as it
    # would appear after the context.
    texts = [example["ctx"] for example in examples] + [" " + ending for example in examples for ending in example["endings"]]
    encoded = _encode_ordinary_all(enc, texts)
    contexts, endings = encoded[: len(examples)], encoded[len(examples) :]
    rows = [contexts[i // NUM_ENDINGS] + ending_tokens for i, ending_tokens in enumerate(endings)]
    return rows, [len(ending_tokens) for ending_tokens in endings]


# -----------------------------------------------------------------------------
# Scoring


class Batch(NamedTuple):
    """One forward pass: num_rows rows of seq_len tokens from PackedRows.tokens[token_start:],
    scoring PackedRows.targets[target_start:target_end]."""

    token_start: int
    num_rows: int
    seq_len: int
    target_start: int
    target_end: int


@dataclass
class PackedRows:
    """Token rows packed into forward passes, as flat host arrays that go to the device in one copy each."""

    tokens: np.ndarray  # every batch's (num_rows, seq_len) block of token ids, flattened, one batch after another
    positions: np.ndarray  # per scored token, the position whose logits predict it, flat within its batch's block
    targets: np.ndarray  # the scored tokens, batch after batch
    target_rows: np.ndarray  # per scored token, its row (in the order the rows were given)
    num_scored: np.ndarray  # per row, how many of its tokens are scored
    batches: list[Batch]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """starts[i], starts[i] + 1, ..., starts[i] + counts[i] - 1 for each i, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0, dtype=np.int64) + np.repeat(starts - (ends - counts), counts)


def pack(rows: list[list[int]], num_ending_tokens: list[int], block_size: int, batch_tokens: int) -> PackedRows:
    """Pack token rows into forward passes of at most batch_tokens padded tokens (at least one row).

    Rows are sorted longest first, so rows of similar length share a batch, and each batch is
    right-padded with token 0 to a multiple of PAD_MULTIPLE_TOKENS (at most block_size). A row
    longer than block_size keeps its last block_size tokens: the ending and as much of the context
    as fits. Its scored tokens are its ending tokens, all of them unless the ending fills the whole
    row (nothing predicts a row's first token). Padding sits after each row, where causal attention
    keeps it from changing the logits of the real tokens.
    """
    lengths = np.minimum(np.array([len(row) for row in rows], dtype=np.int64), block_size)
    num_scored = np.minimum(np.array(num_ending_tokens, dtype=np.int64), lengths - 1)
    # Longest first: the first batch is the largest, so a batch that does not fit fails at once.
    order = np.argsort(-lengths, kind="stable")
    lengths_sorted, scored_sorted = lengths[order], num_scored[order]
    bounds, seq_lens = [], []  # per batch, its first and end row and its padded length, in sorted rows
    start = 0
    while start < len(rows):
        seq_len = min(block_size, -(-int(lengths_sorted[start]) // PAD_MULTIPLE_TOKENS) * PAD_MULTIPLE_TOKENS)
        end = min(len(rows), start + max(1, batch_tokens // seq_len))
        bounds.append((start, end))
        seq_lens.append(seq_len)
        start = end
    rows_per_batch = [end - start for start, end in bounds]
    widths = np.repeat(np.array(seq_lens, dtype=np.int64), rows_per_batch)  # each sorted row's padded length
    row_starts = np.cumsum(widths) - widths  # where each sorted row begins in `tokens`
    kept = itertools.chain.from_iterable(rows[i][len(rows[i]) - length :] for i, length in zip(order, lengths_sorted))
    tokens = np.zeros(int(widths.sum()), dtype=np.int64)
    tokens[_ranges(row_starts, lengths_sorted)] = np.fromiter(kept, dtype=np.int64, count=int(lengths_sorted.sum()))
    # A row's scored tokens are its last ones; the position before each predicts it.
    predicting = _ranges(row_starts + lengths_sorted - scored_sorted - 1, scored_sorted)
    batch_starts = np.array([row_starts[start] for start, _ in bounds], dtype=np.int64)
    positions = predicting - np.repeat(np.repeat(batch_starts, rows_per_batch), scored_sorted)
    target_bounds = np.concatenate(([0], np.cumsum(scored_sorted)))
    batches = [
        Batch(int(batch_start), end - start, seq_len, int(target_bounds[start]), int(target_bounds[end]))
        for batch_start, (start, end), seq_len in zip(batch_starts, bounds, seq_lens)
    ]
    return PackedRows(tokens, positions, tokens[predicting + 1], np.repeat(order, scored_sorted), num_scored, batches)


def token_losses(gpt, hidden_states, idx: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each scored token -> (S,).

    idx (R, T) holds the rows, positions (S,) the flat positions in it whose logits predict targets
    (S,). The transformer (`hidden_states`: gpt.hidden_states, or a compiled copy) runs under the
    caller's autocast; only the S scored positions go through the vocabulary projection, the
    largest matmul, and it and the softmax run in fp32, so that no score is rounded to bf16 and
    none depends on the batch it came in.
    """
    hidden = hidden_states(idx).flatten(0, 1)[positions]  # (S, C)
    with torch.autocast(idx.device.type, enabled=False):
        # The input must have the weight's dtype: fp32, or bf16 where FSDP gathers weights in bf16.
        logits = gpt.logits(hidden.to(gpt.lm_head.weight.dtype)).float()  # (S, vocab_size)
    return F.cross_entropy(logits, targets, reduction="none")


@dataclass
class HellaSwagResult:
    n: int  # examples scored, over all ranks
    num_correct: int
    num_correct_norm: int
    acc: float
    acc_norm: float
    predictions: list[dict] = field(default_factory=list)  # this rank's examples only


def _unwrap(model) -> GPT:
    # torch.compile's wrapper keeps the model in ._orig_mod, DDP's in .module.
    while not isinstance(model, GPT):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


@contextlib.contextmanager
def _fsdp_forward_methods(gpt: GPT):
    """FSDP2 gathers a sharded model's own weights around forward() only: for the duration, around
    hidden_states() and logits() too, which evaluation calls instead (a no-op without FSDP)."""
    registered = []
    if dist.is_available():
        from torch.distributed.fsdp import register_fsdp_forward_method

        for name in ("hidden_states", "logits"):
            if name not in vars(gpt):  # not registered already by the caller
                register_fsdp_forward_method(gpt, name)  # sets an instance attribute, under FSDP only
                if name in vars(gpt):
                    registered.append(name)
    try:
        yield
    finally:
        for name in registered:
            delattr(gpt, name)  # the class's method again


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # From pinned memory the copy is asynchronous: the host goes on to queue the forward passes.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def default_batch_tokens(device: torch.device | str) -> int:
    """--batch-tokens' default for the device: GPU_BATCH_TOKENS on CUDA, where large passes keep the
    GPU busy; CPU_BATCH_TOKENS elsewhere. On a 2-core CPU, passes of 32,768 tokens made this scoring
    slower than build-nanogpt's one example per pass, and passes of 1,024 faster (`--compare`; the
    runs are in README.md's Performance section). MPS shares the host's memory and gets the CPU
    value; it has not been measured there."""
    return GPU_BATCH_TOKENS if torch.device(device).type == "cuda" else CPU_BATCH_TOKENS


@torch.no_grad()
def evaluate(
    model,
    examples,
    device: torch.device | str,
    batch_tokens: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    enc=None,
    use_compile: bool = False,
) -> HellaSwagResult:
    """Score examples[rank::world_size] on this rank, in forward passes of at most batch_tokens
    padded tokens (None: default_batch_tokens(device)); 4 rows per example, rows of similar length
    batched together.

    `model` is a GPT, or a torch.compile or DDP wrapper of one, which is looked through: scoring
    calls the GPT's hidden_states() and logits(), and `use_compile` compiles hidden_states() (with
    dynamic shapes: one compilation for every batch shape). `enc` is its tokenizer (None: GPT-2's). The caller sets up autocast
    (train_gpt2.autocast_context); the vocabulary projection and the loss run in fp32 regardless.

    The host tokenises and packs all of this rank's examples first, and copies them to the device
    at once; the losses stay on the device until one copy back at the end, so nothing in between
    makes the host wait for the device. With world_size > 1 every rank runs as many forward passes
    as the busiest one (under FSDP each is a collective), and the counts are summed over ranks with
    torch.distributed.all_reduce, so every rank returns the global n, acc and acc_norm;
    `predictions` holds this rank's examples in their order, each with its position in `examples`
    as "index".
    """
    device = torch.device(device)
    batch_tokens = default_batch_tokens(device) if batch_tokens is None else batch_tokens
    enc = get_tokenizer() if enc is None else enc
    gpt = _unwrap(model)
    share = list(itertools.islice(enumerate(examples), rank, None, world_size))
    rows, num_ending_tokens = render_examples([example for _, example in share], enc)
    packed = pack(rows, num_ending_tokens, gpt.config.block_size, batch_tokens)
    tokens, positions, targets = (_to_device(a, device) for a in (packed.tokens, packed.positions, packed.targets))
    num_forwards = len(packed.batches)
    if world_size > 1:
        most = torch.tensor(num_forwards, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        num_forwards = int(most)
    losses = torch.empty(len(packed.targets), dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    try:
        with _fsdp_forward_methods(gpt), tqdm(total=len(rows), desc="hellaswag", unit="row", disable=None if progress else True) as bar:
            hidden_states = torch.compile(gpt.hidden_states, dynamic=True) if use_compile else gpt.hidden_states
            for batch in packed.batches:
                idx = tokens[batch.token_start : batch.token_start + batch.num_rows * batch.seq_len].view(batch.num_rows, batch.seq_len)
                scored = slice(batch.target_start, batch.target_end)
                losses[scored] = token_losses(gpt, hidden_states, idx, positions[scored], targets[scored])
                bar.update(batch.num_rows)
            for _ in range(num_forwards - len(packed.batches)):  # matching the busiest rank's; never read
                idx = torch.zeros((1, PAD_MULTIPLE_TOKENS), dtype=torch.long, device=device)
                token_losses(gpt, hidden_states, idx, idx[0, :1], idx[0, :1])
    finally:
        model.train(was_training)
    # Summed on the host in float64, each row's tokens in order: the same sums whatever the batches.
    sum_losses = np.bincount(packed.target_rows, weights=losses.cpu().numpy(), minlength=len(rows)).reshape(-1, NUM_ENDINGS)
    mean_losses = sum_losses / packed.num_scored.reshape(-1, NUM_ENDINGS)
    return _result(share, sum_losses, mean_losses, device, world_size)


def _result(share: list[tuple[int, dict]], sum_losses: np.ndarray, mean_losses: np.ndarray, device: torch.device,
            world_size: int = 1) -> HellaSwagResult:
    """Predictions and counts from each (index, example)'s (4,) summed and mean ending losses; the
    counts are summed over ranks."""
    preds, preds_norm = sum_losses.argmin(axis=1), mean_losses.argmin(axis=1)
    labels = np.array([example["label"] for _, example in share], dtype=np.int64)
    predictions = [
        {
            "index": index,
            "ind": example.get("ind"),
            "label": example["label"],
            "pred": int(pred),
            "pred_norm": int(pred_norm),
            "sum_losses": sums.tolist(),
            "mean_losses": means.tolist(),
        }
        for (index, example), pred, pred_norm, sums, means in zip(share, preds, preds_norm, sum_losses, mean_losses)
    ]
    counts = torch.tensor([len(share), int((preds == labels).sum()), int((preds_norm == labels).sum())], dtype=torch.long, device=device)
    if world_size > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n, num_correct, num_correct_norm = counts.tolist()
    if n == 0:
        raise ValueError("no HellaSwag examples to evaluate")
    return HellaSwagResult(n, num_correct, num_correct_norm, num_correct / n, num_correct_norm / n, predictions)


# -----------------------------------------------------------------------------
# The plain reference, and evaluate() timed against it


@torch.no_grad()
def evaluate_reference(model, examples, device: torch.device | str, enc=None) -> HellaSwagResult:
    """build-nanogpt's scoring, in plain PyTorch, for --compare to check and time evaluate() against:
    one example per forward pass, its 4 rows right-padded to the longest, logits over the whole
    vocabulary at every position, cross-entropy masked to the ending tokens. A row longer than
    block_size keeps its last block_size tokens, as in pack(). Eager, one process; the caller sets
    up autocast, and the loss is taken from the logits in fp32."""
    device = torch.device(device)
    enc = get_tokenizer() if enc is None else enc
    gpt = _unwrap(model)
    block_size = gpt.config.block_size
    sum_losses = np.zeros((len(examples), NUM_ENDINGS))
    mean_losses = np.zeros((len(examples), NUM_ENDINGS))
    was_training = gpt.training
    gpt.eval()
    try:
        for i, example in enumerate(examples):
            context = enc.encode_ordinary(example["ctx"])
            endings = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
            rows = [(context + ending)[-block_size:] for ending in endings]
            masks = [([0] * len(context) + [1] * len(ending))[-block_size:] for ending in endings]
            T = max(map(len, rows))
            tokens = torch.zeros((NUM_ENDINGS, T), dtype=torch.long)
            mask = torch.zeros((NUM_ENDINGS, T))
            for j, (row, row_mask) in enumerate(zip(rows, masks)):
                tokens[j, : len(row)] = torch.tensor(row)
                mask[j, : len(row)] = torch.tensor(row_mask, dtype=torch.float32)
            tokens, mask = tokens.to(device), mask.to(device)
            logits, _ = gpt(tokens)  # (4, T, vocab_size)
            losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
            shift_mask = mask[:, 1:]  # the token at position t is predicted by the logits at t - 1
            sums = (losses.view(NUM_ENDINGS, T - 1) * shift_mask).sum(dim=1)
            sum_losses[i] = sums.cpu().numpy()
            mean_losses[i] = (sums / shift_mask.sum(dim=1)).cpu().numpy()
    finally:
        gpt.train(was_training)
    return _result(list(enumerate(examples)), sum_losses, mean_losses, device)


@dataclass
class Comparison:
    rounds_s: list[dict]  # per round, {"reference": seconds, "ours": seconds}
    reference_s: float  # the median over rounds
    ours_s: float
    speedup: float  # reference_s / ours_s
    num_different: int  # examples whose pred or pred_norm differ between the two
    max_loss_difference: float  # the largest difference of a summed ending loss between the two
    result: HellaSwagResult  # evaluate()'s, from the last round


def compare(model, examples, device: torch.device | str, batch_tokens: int | None = None, rounds: int = 3, enc=None,
            use_compile: bool = False, log=print) -> Comparison:
    """Time evaluate() against evaluate_reference() on the same model and examples, in one process:
    `rounds` rounds that each run both, the order alternating so that a machine growing busier or
    quieter weighs on both alike, after one untimed warm-up of both on the first few examples
    (threads, allocator, and with use_compile the compilation). Each timing covers tokenising,
    scoring and the losses back on the host. The caller sets up autocast, as for evaluate()."""
    device = torch.device(device)
    enc = get_tokenizer() if enc is None else enc
    scorers = {
        "reference": lambda subset: evaluate_reference(model, subset, device, enc=enc),
        "ours": lambda subset: evaluate(model, subset, device, batch_tokens, enc=enc, use_compile=use_compile),
    }
    start = time.perf_counter()
    for scorer in scorers.values():
        scorer(examples[:NUM_ENDINGS])
    log(f"warm-up on {min(len(examples), NUM_ENDINGS)} examples (untimed; with compilation if any): {time.perf_counter() - start:.1f} s")
    rounds_s, results = [], {}
    for round_index in range(rounds):
        times = {}
        for name in sorted(scorers, reverse=round_index % 2 == 0):  # reference first, then ours first, ...
            start = time.perf_counter()
            results[name] = scorers[name](examples)
            times[name] = time.perf_counter() - start
        rounds_s.append(times)
        log(f"round {round_index + 1}/{rounds}: reference {times['reference']:.2f} s, ours {times['ours']:.2f} s")
    reference_s, ours_s = (float(np.median([times[name] for times in rounds_s])) for name in ("reference", "ours"))
    pairs = list(zip(results["reference"].predictions, results["ours"].predictions))
    num_different = sum((a["pred"], a["pred_norm"]) != (b["pred"], b["pred_norm"]) for a, b in pairs)
    max_loss_difference = max(float(np.abs(np.subtract(a["sum_losses"], b["sum_losses"])).max()) for a, b in pairs)
    return Comparison(rounds_s, reference_s, ours_s, reference_s / ours_s, num_different, max_loss_difference, results["ours"])


# -----------------------------------------------------------------------------
# Command line


@dataclass
class HellaSwagConfig:
    model: str = "gpt2"  # Hub name (gpt2, gpt2-medium, ...), Hugging Face folder, or train_gpt2.py checkpoint
    tokenizer: str | None = None  # None: the one the model records (GPT-2's if it records none)
    device: str | None = None  # None: cuda, then mps, then cpu
    data: str | None = None  # None: the official validation file, downloaded once into cache_dir
    cache_dir: str | None = None  # None: DEFAULT_CACHE_DIR
    limit: int | None = None  # score only the first `limit` examples
    batch_tokens: int | None = None  # padded tokens per forward pass (at least one row); None: default_batch_tokens(device)
    dtype: str = "auto"  # autocast precision of the transformer: auto, bf16, fp16 or fp32
    compile: bool = False
    compare: bool = False  # time evaluate() against evaluate_reference() instead of scoring once
    compare_rounds: int = 3
    out: str | None = None  # JSON file with acc, acc_norm, n and every example's predictions


def parse_args(argv: list[str] | None = None) -> HellaSwagConfig:
    from train_gpt2 import DTYPE_CHOICES  # imported here: train_gpt2 imports this module at its top

    defaults = HellaSwagConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=defaults.model,
                        help="a Hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a Hugging Face folder, or a train_gpt2.py checkpoint "
                             "(a ckpt_NNNNNN.pt file, or a ckpt_NNNNNN.dcp folder from --fsdp)")
    parser.add_argument("--tokenizer", default=defaults.tokenizer, metavar="PATH",
                        help="the model's tokenizer.json, for a model that does not record its tokenizer "
                             "(default: the one it records, else GPT-2's)")
    parser.add_argument("-d", "--device", default=defaults.device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--data", default=defaults.data,
                        help="a HellaSwag .jsonl file (default: the official validation set, downloaded once into --cache-dir)")
    parser.add_argument("--cache-dir", default=defaults.cache_dir, help=f"where the download is kept (default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--limit", type=positive_int, default=defaults.limit, help="score only the first N examples")
    parser.add_argument("--batch-tokens", type=positive_int, default=defaults.batch_tokens,
                        help=f"padded tokens per forward pass, 4 rows per example (default: {GPU_BATCH_TOKENS} on CUDA, "
                             f"{CPU_BATCH_TOKENS} on CPU and MPS; memory grows with it, the weights aside)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile,
                        help="torch.compile the transformer, with dynamic shapes (one compilation for every batch shape)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=defaults.dtype,
                        help="autocast precision of the transformer: auto (bf16 on GPUs with compute capability 8.0 and up, "
                             "fp16 on older ones, fp32 on CPU and MPS), bf16, fp16 or fp32; the vocabulary projection and the "
                             "loss run in fp32 whatever it is")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=defaults.compare,
                        help="time this scoring against a plain one (one example per forward pass, logits over the whole "
                             "vocabulary, as build-nanogpt scores) on the same model and examples, in alternating rounds, "
                             "and check that both pick the same endings")
    parser.add_argument("--compare-rounds", type=positive_int, default=defaults.compare_rounds,
                        help=f"with --compare, timed rounds of both scorings (default: {defaults.compare_rounds}; the medians are compared)")
    parser.add_argument("--out", default=defaults.out, help="write acc, acc_norm, n and every example's predictions to this JSON file")
    config = HellaSwagConfig(**vars(parser.parse_args(argv)))
    if config.compare and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("--compare times one process; run it with python, not torchrun")
    return config


def main(argv: list[str] | None = None) -> HellaSwagResult:
    config = parse_args(argv)
    # train_gpt2 imports this module at its top, so its helpers are imported here, not up there.
    from train_gpt2 import autocast_context, choose_dtype, cleanup_distributed, dtype_name, setup_distributed

    dist_info, device = setup_distributed(config.device)
    finished = False
    try:
        if dist_info.is_master:
            print(f"hellaswag config: {json.dumps(asdict(config))}")
        if config.data is not None:
            data_path = Path(config.data)
            if not data_path.is_file():
                raise SystemExit(
                    f"--data {data_path}: no such file; pass a HellaSwag .jsonl file, or leave --data out to download the official one"
                )
        else:
            if dist_info.local_rank == 0:  # one download per node; the other ranks wait for it
                try:
                    download(config.cache_dir)
                except (OSError, HellaSwagDataError) as e:
                    raise SystemExit(str(e)) from None
            if dist_info.enabled:
                dist.barrier()
            data_path = default_data_path(config.cache_dir)
        try:
            examples = list(iterate_examples(data_path, config.limit))
        except (OSError, HellaSwagDataError) as e:
            raise SystemExit(str(e)) from None
        if not examples:
            raise SystemExit(f"{data_path} holds no examples")
        try:
            model = load_model(config.model)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--model {config.model}: could not load it ({e})") from None
        try:
            enc = load_tokenizer(config.model, model.config.vocab_size, config.tokenizer)
        except (OSError, ValueError) as e:
            raise SystemExit(f"the tokenizer of --model {config.model}: {e}") from None
        model.to(device)
        dtype = choose_dtype(config.dtype, device)
        batch_tokens = default_batch_tokens(device) if config.batch_tokens is None else config.batch_tokens
        run_record = {"device": str(device), "dtype": dtype_name(dtype), "batch_tokens": batch_tokens, "compile": config.compile}
        if dist_info.is_master:
            print(f"hellaswag: {', '.join(f'{key} {value}' for key, value in run_record.items())}")

        comparison = None
        start = time.perf_counter()
        with autocast_context(device, dtype):
            if config.compare:
                comparison = compare(model, examples, device, batch_tokens, config.compare_rounds, enc=enc, use_compile=config.compile)
                result = comparison.result
            else:
                result = evaluate(model, examples, device, batch_tokens, dist_info.rank, dist_info.world_size,
                                  progress=dist_info.is_master, enc=enc, use_compile=config.compile)
        elapsed_s = time.perf_counter() - start
        if comparison is not None:
            run_record["compare"] = {k: v for k, v in asdict(comparison).items() if k != "result"}

        if config.out is not None:
            predictions = result.predictions
            if dist_info.enabled:
                gathered = [None] * dist_info.world_size if dist_info.is_master else None
                dist.gather_object(result.predictions, gathered, dst=0)
                if dist_info.is_master:
                    predictions = sorted((p for part in gathered for p in part), key=lambda p: p["index"])
            if dist_info.is_master:
                summary = {k: getattr(result, k) for k in ("n", "acc", "acc_norm", "num_correct", "num_correct_norm")}
                _write_json(Path(config.out), {"model": config.model, "data": str(data_path), **run_record, **summary,
                                               "predictions": predictions})
                print(f"wrote {config.out}")
        if comparison is not None:
            print(f"reference (one example per forward pass, logits over the whole vocabulary): {comparison.reference_s:.2f} s, "
                  f"ours ({batch_tokens} tokens per pass): {comparison.ours_s:.2f} s (medians of {config.compare_rounds} rounds, "
                  f"{result.n} examples): {comparison.speedup:.2f}x")
            print(f"different predictions: {comparison.num_different} of {result.n} examples; "
                  f"largest difference of a summed ending loss: {comparison.max_loss_difference:.2e}")
            if comparison.num_different and dtype == torch.float32:
                # In fp32 both compute the same losses up to rounding, so a different choice is a bug.
                raise SystemExit(f"--compare: in fp32 the two scorings chose differently on {comparison.num_different} examples")
        elif dist_info.is_master:
            print(f"scored {result.n} examples in {elapsed_s:.1f} s ({result.n / elapsed_s:.1f} examples/s)")
            print(f"hellaswag acc={result.acc:.4f} acc_norm={result.acc_norm:.4f} n={result.n}")
        finished = True
        return result
    finally:
        cleanup_distributed(finished)


def _write_json(path: Path, obj: dict):
    # An interrupted run never leaves half a results file.
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda file: file.write((json.dumps(obj, indent=1) + "\n").encode()))


if __name__ == "__main__":
    main()
