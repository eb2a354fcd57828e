"""HellaSwag (https://arxiv.org/abs/1905.07830): pick the right one of four endings to a context.

    python hellaswag.py -m gpt2                 # downloads the validation set once, then scores it
    python hellaswag.py -m log/model_19072.pt --limit 1000 --out results/hellaswag.json
    torchrun --standalone --nproc_per_node=8 hellaswag.py -m gpt2-xl

Scoring is the "completion style" of build-nanogpt's hellaswag.py: for each ending the model reads
the context tokens followed by the tokens of " " + ending, and only the ending tokens are scored
(cross-entropy of each ending token given everything before it). `acc` picks the ending with the
lowest summed loss, `acc_norm` the one with the lowest mean loss per token, which does not
penalise long endings.

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
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from model import get_tokenizer, load_model, load_tokenizer

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
# The git blob id of that file (SHA-1 of b"blob <size>\0" + contents): a truncated or changed
# download is refused instead of silently scored.
HELLASWAG_VAL_GIT_SHA1 = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "gpt2-repro" / "hellaswag"
NUM_ENDINGS = 4
# Batches are right-padded to a multiple of this many tokens (capped at block_size), so a compiled
# model sees a few shapes and compiles each once, instead of once per sequence length.
PAD_MULTIPLE_TOKENS = 64

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
) -> Path:
    """The official validation file in the cache folder, downloaded on first use.

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
        raise OSError(f"could not download {url} ({e}); fetch it by other means and pass its path with --data") from e
    actual = git_blob_sha1(data)
    if expected_git_sha1 is not None and actual != expected_git_sha1:
        raise HellaSwagDataError(
            f"{url} sent a file with git blob id {actual}, not the expected {expected_git_sha1} "
            "(truncated, or changed upstream); nothing was saved: retry, or pass a copy you trust with --data"
        )
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
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


def render_example(example: dict, enc) -> tuple[list[list[int]], list[list[int]], int]:
    """The four token rows (context + ending), their masks (1 on the ending tokens) and the label."""
    ctx_tokens = enc.encode_ordinary(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        # GPT-2-style BPE tokens carry their leading space: " " + ending tokenises the ending as
        # it would appear after the context.
        ending_tokens = enc.encode_ordinary(" " + ending)
        rows.append(ctx_tokens + ending_tokens)
        masks.append([0] * len(ctx_tokens) + [1] * len(ending_tokens))
    return rows, masks, example["label"]


# -----------------------------------------------------------------------------
# Scoring


def collate(rows: list[list[int]], masks: list[list[int]], block_size: int, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows into one batch -> idx (num_rows, T) and a bool mask of the scored tokens.

    A row longer than block_size keeps its last block_size tokens: the ending and as much of the
    context as fits. T is rounded up to a multiple of PAD_MULTIPLE_TOKENS (at most block_size), and
    rows past len(rows) are all padding, so that batches share a few shapes. Padding sits after
    each row, where causal attention keeps it from changing the logits of the real tokens.
    """
    rows = [row[-block_size:] for row in rows]
    masks = [mask[-block_size:] for mask in masks]
    longest = max(len(row) for row in rows)
    T = min(block_size, -(-longest // PAD_MULTIPLE_TOKENS) * PAD_MULTIPLE_TOKENS)
    idx = torch.zeros((num_rows, T), dtype=torch.long)
    mask = torch.zeros((num_rows, T), dtype=torch.bool)
    for i, (row, row_mask) in enumerate(zip(rows, masks)):
        idx[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = torch.tensor(row_mask, dtype=torch.bool)
    return idx, mask


def ending_losses(logits: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean cross-entropy over the masked tokens of each row -> (R,), (R,).

    logits (R, T, V) at position t predict token t + 1, so the mask shifts by one. Only the scored
    positions go through the cross-entropy, a few hundred rows of the vocab instead of R * T.
    """
    target_mask = mask[:, 1:]  # (R, T - 1)
    losses = torch.zeros(target_mask.shape, dtype=torch.float32, device=logits.device)
    losses[target_mask] = F.cross_entropy(logits[:, :-1][target_mask].float(), idx[:, 1:][target_mask], reduction="none")
    sum_loss = losses.sum(dim=1)
    return sum_loss, sum_loss / target_mask.sum(dim=1)  # rows of padding only give nan, never read


@dataclass
class HellaSwagResult:
    n: int  # examples scored, over all ranks
    num_correct: int
    num_correct_norm: int
    acc: float
    acc_norm: float
    predictions: list[dict] = field(default_factory=list)  # this rank's examples only


def _block_size(model) -> int:
    # torch.compile's wrapper forwards attribute lookups to the model; DDP's keeps it in .module.
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config.block_size


def _batches(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@torch.no_grad()
def evaluate(
    model,
    examples,
    device: torch.device | str,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    enc=None,
) -> HellaSwagResult:
    """Score examples[rank::world_size] on this rank, batch_size examples (4 rows each) per forward.

    `model` is a GPT, possibly compiled or DDP-wrapped; it is called as model(idx) and its logits
    used; `enc` is its tokenizer (None: GPT-2's). The caller sets up autocast (train_gpt2.autocast_context). With world_size > 1 the
    counts are summed over ranks with torch.distributed.all_reduce, so every rank returns the
    global n, acc and acc_norm; `predictions` holds this rank's examples, each with its position
    in `examples` as "index".
    """
    device = torch.device(device)
    enc = get_tokenizer() if enc is None else enc
    block_size = _block_size(model)
    share = itertools.islice(enumerate(examples), rank, None, world_size)
    total = len(range(rank, len(examples), world_size)) if hasattr(examples, "__len__") else None
    predictions = []
    num_correct = num_correct_norm = 0
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=total, desc="hellaswag", unit="example", disable=None if progress else True) as bar:
            for batch in _batches(share, batch_size):
                rendered = [render_example(example, enc) for _, example in batch]
                rows = [row for row_group, _, _ in rendered for row in row_group]
                masks = [mask for _, mask_group, _ in rendered for mask in mask_group]
                idx, mask = collate(rows, masks, block_size, NUM_ENDINGS * batch_size)
                idx, mask = idx.to(device), mask.to(device)
                logits = model(idx)[0]
                sum_loss, mean_loss = ending_losses(logits, idx, mask)
                sum_loss = sum_loss[: len(rows)].view(-1, NUM_ENDINGS).cpu()
                mean_loss = mean_loss[: len(rows)].view(-1, NUM_ENDINGS).cpu()
                for (index, example), (_, _, label), sums, means in zip(batch, rendered, sum_loss, mean_loss):
                    pred, pred_norm = int(sums.argmin()), int(means.argmin())
                    num_correct += pred == label
                    num_correct_norm += pred_norm == label
                    predictions.append(
                        {
                            "index": index,
                            "ind": example.get("ind"),
                            "label": label,
                            "pred": pred,
                            "pred_norm": pred_norm,
                            "sum_losses": sums.tolist(),
                            "mean_losses": means.tolist(),
                        }
                    )
                bar.update(len(batch))
    finally:
        model.train(was_training)
    counts = torch.tensor([len(predictions), num_correct, num_correct_norm], dtype=torch.long, device=device)
    if world_size > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n, num_correct, num_correct_norm = counts.tolist()
    if n == 0:
        raise ValueError("no HellaSwag examples to evaluate")
    return HellaSwagResult(n, num_correct, num_correct_norm, num_correct / n, num_correct_norm / n, predictions)


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
    batch_size: int = 8  # examples per forward pass (4 rows each)
    compile: bool = False
    out: str | None = None  # JSON file with acc, acc_norm, n and every example's predictions


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> HellaSwagConfig:
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
    parser.add_argument("--limit", type=_positive_int, default=defaults.limit, help="score only the first N examples")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="examples per forward pass, 4 rows each")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile, help="torch.compile the model")
    parser.add_argument("--out", default=defaults.out, help="write acc, acc_norm, n and every example's predictions to this JSON file")
    return HellaSwagConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> HellaSwagResult:
    config = parse_args(argv)
    # train_gpt2 imports this module at its top, so its helpers are imported here, not up there.
    from train_gpt2 import autocast_context, cleanup_distributed, setup_distributed

    dist_info, device = setup_distributed(config.device)
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
        if config.compile:
            model = torch.compile(model)

        start = time.perf_counter()
        with autocast_context(device):
            result = evaluate(model, examples, device, config.batch_size, dist_info.rank, dist_info.world_size,
                              progress=dist_info.is_master, enc=enc)
        elapsed_s = time.perf_counter() - start

        if config.out is not None:
            predictions = result.predictions
            if dist_info.enabled:
                gathered = [None] * dist_info.world_size if dist_info.is_master else None
                dist.gather_object(result.predictions, gathered, dst=0)
                if dist_info.is_master:
                    predictions = sorted((p for part in gathered for p in part), key=lambda p: p["index"])
            if dist_info.is_master:
                summary = {k: getattr(result, k) for k in ("n", "acc", "acc_norm", "num_correct", "num_correct_norm")}
                _write_json(Path(config.out), {"model": config.model, "data": str(data_path), **summary, "predictions": predictions})
                print(f"wrote {config.out}")
        if dist_info.is_master:
            print(f"scored {result.n} examples in {elapsed_s:.1f} s ({result.n / elapsed_s:.1f} examples/s)")
            print(f"hellaswag acc={result.acc:.4f} acc_norm={result.acc_norm:.4f} n={result.n}")
        return result
    finally:
        cleanup_distributed()


def _write_json(path: Path, obj: dict):
    # A temporary file moved into place: an interrupted run never leaves half a results file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp_path, path)


if __name__ == "__main__":
    main()
