"""Publish a train_gpt2.py checkpoint on the Hugging Face Hub as a transformers model.

    python upload_hf.py --log-dir log/gpt2-124m --repo-id YOUR_NAME/gpt2-124m-fineweb-edu
    python upload_hf.py --log-dir log/gpt2-124m --repo-id YOUR_NAME/gpt2-124m-fineweb-edu --dry-run --out hf/gpt2-124m
    python upload_hf.py --checkpoint log/gpt2-124m/ckpt_010000.pt --repo-id YOUR_NAME/gpt2-124m-step10000 --private

The checkpoint is a ckpt_NNNNNN.pt file, or a ckpt_NNNNNN.dcp folder (train_gpt2.py --fsdp), of
which only the model's tensors are read.

The folder it uploads is what transformers' AutoModelForCausalLM and AutoTokenizer load (written by
model.py's save_pretrained: a GPT2LMHeadModel for GPT-2, a LlamaForCausalLM for GPT-2.5, with the
tokenizer the checkpoint was trained with) plus a model card, README.md, drawn from the checkpoint
and the run's metrics.jsonl, with the loss curve loss.png. --include-training-state adds the raw
checkpoint and the run's log files under training/, so the run can be resumed or audited from the Hub.
To publish a model card of your own, write it (e.g. by editing the README.md a --dry-run wrote) and
pass it as --card.

Everything that can go wrong locally is checked before the first network call: the token, the
repo id, the checkpoint, the --card, and that the exported folder reloads to the same logits as the
checkpoint, with model.py and, where it is installed, with transformers. The token comes from
HF_TOKEN or from `hf auth login`. If the upload fails (no connection, a refusal), the export is
kept and the error gives the command that runs the upload again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id
# huggingface_hub's HTTP library (the httpx2 package in huggingface_hub 2), whose errors it raises
# unchanged on a network failure; huggingface_hub exports it under this name across versions.
from huggingface_hub.utils import httpx

import hellaswag
from fineweb import FINEWEB_EDU_REPO, SOURCES, ShardError, one_line, read_meta
from model import GPT, GPTConfig, file_sha256, load_tokenizer, read_checkpoint_state
from train_gpt2 import GPT2_124M_HELLASWAG, GPT2_124M_VAL_LOSS, TrainConfig, latest_checkpoint, latest_per_step, list_checkpoints, read_metrics

CHECKPOINT_KEYS = ("model", "model_config", "step", "tokens_seen", "config", "format_version")
CHECKPOINT_FORMAT_VERSION = 1
MAX_LOGIT_DIFF = 1e-5
MAX_TRANSFORMERS_LOGIT_DIFF = 1e-4  # another implementation: same math, other kernels and order of operations
# Written into every export and never uploaded: the checkpoint it came from and the SHA-256 of every
# file, which is how a rerun knows that a non-empty --out folder is a previous export that it may
# replace, and that nothing in it was changed since (an edited model card, a file added).
EXPORT_MARKER = ".upload_hf"
TRAINING_DIR = "training"
DEFAULT_LICENSE = "mit"


class UploadError(Exception):
    """A problem the user can fix; the message names the file or flag and what to do."""


@dataclass
class UploadConfig:
    repo_id: str  # namespace/name on the Hub
    log_dir: str | None = None  # None: the --checkpoint's folder, else train_gpt2.py's default
    checkpoint: str | None = None  # None: the newest complete checkpoint in the log dir
    tokenizer: str | None = None  # for a checkpoint that does not record its tokenizer; None: the one it records, else GPT-2's
    private: bool | None = None  # None: the Hub's default for a new repo (public unless its organisation says otherwise)
    revision: str | None = None  # branch to commit to; None: the repo's default branch
    commit_message: str | None = None  # None: names the checkpoint, its step and tokens
    card: str | None = None  # a model card (README.md) of the user's to publish; None: the generated one
    license: str | None = None  # the generated card's licence identifier; None: DEFAULT_LICENSE
    include_training_state: bool = False
    dry_run: bool = False
    out: str | None = None  # where to keep the exported folder; None: a temporary folder
    overwrite_out: bool = False


# -----------------------------------------------------------------------------
# Pre-flight checks: all local, all before the first network call


def check_repo_id(repo_id: str) -> None:
    # validate_repo_id also accepts a bare name, which the Hub would put under the token's user:
    # asking for the namespace makes the destination explicit.
    if repo_id.count("/") != 1:
        raise UploadError(f"--repo-id {repo_id!r} must be namespace/name, e.g. YOUR_NAME/gpt2-124m-fineweb-edu")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UploadError(f"--repo-id {repo_id!r} is not a valid Hub repo id: {error}") from error


def check_license(cfg: UploadConfig) -> None:
    if cfg.license is None:
        return
    if cfg.card is not None:
        raise UploadError(
            "--license sets the licence of the generated model card; a --card is published as it is: "
            "put the licence in its metadata (a `license:` line) and drop --license"
        )
    # The Hub's identifiers are lowercase (mit, apache-2.0, cc-by-4.0, openrail++, other): catch "MIT" here,
    # not in a refusal after the repo was created.
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", cfg.license):
        raise UploadError(
            f"--license {cfg.license!r} is not a Hub licence identifier: use one of "
            "https://huggingface.co/docs/hub/repositories-licenses, e.g. mit, apache-2.0, cc-by-4.0, or other"
        )


def read_card(path: Path) -> str:
    """The text of --card, checked as the Hub will read it: Markdown with an optional YAML metadata block."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UploadError(f"--card {path} cannot be read ({error}): pass the model card, a UTF-8 Markdown file") from error
    try:
        metadata = ModelCard(text, ignore_metadata_errors=False).data.to_dict()
    except (ValueError, yaml.YAMLError) as error:
        raise UploadError(f"--card {path} has a metadata block (between the --- lines at its top) that is not valid YAML: {one_line(error)}") from error
    if not metadata:
        print(f"note: --card {path} has no metadata block, so the Hub will show no licence, library or tags for the model")
    return text


def find_token() -> str:
    token = get_token()
    if not token:
        raise UploadError(
            "no Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`; --dry-run needs none"
        )
    return token


def check_out_dir(out: Path, overwrite_out: bool, inputs: list[Path], card: Path | None) -> bool:
    """Refuse an --out folder whose replacement would lose something of the user's. Returns whether
    its contents must be moved aside (--overwrite-out) rather than deleted (an unchanged previous export)."""
    if out.exists() and not out.is_dir():
        raise UploadError(f"--out {out} is a file, not a folder: choose another --out")
    for path in inputs:
        if path.resolve().is_relative_to(out.resolve()):
            raise UploadError(f"--out {out} holds {path}, which the export reads: choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    card_hint = ""
    if not (out / EXPORT_MARKER).is_file():
        problem = "is not empty and was not written by upload_hf.py"
    else:
        record = read_export_record(out)
        if record is None:
            problem = "was written by an older upload_hf.py, which kept no record of its files to tell whether you changed them"
        else:
            changes = changes_since_export(out, record["files"])
            if card is not None and card.resolve() == (out / "README.md").resolve():
                # Not lost: the new export's README.md is this card.
                changes = [change for change in changes if change != "README.md edited"]
            if not changes:
                return False
            problem = f"was changed since upload_hf.py wrote it ({', '.join(changes)})"
            if changes == ["README.md edited"]:
                card_hint = (f"to publish your model card, add --card {out / 'README.md'} (and --checkpoint {record['checkpoint']}, "
                             "the checkpoint the folder was exported from, if that is the one it describes); otherwise ")  # fmt: skip
    if overwrite_out:
        return True
    raise UploadError(f"--out {out} {problem}: {card_hint}choose another --out, "
                      "or pass --overwrite-out to move its contents aside (to a .backup folder beside it) and replace it")  # fmt: skip


def folder_hashes(folder: Path) -> dict[str, str]:
    """{path relative to folder: SHA-256} of its files, but for the marker."""
    return {path.relative_to(folder).as_posix(): file_sha256(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != EXPORT_MARKER}  # fmt: skip


def read_export_record(folder: Path) -> dict | None:
    """The marker of an export: its checkpoint and file hashes; None for an older upload_hf.py's plain-text marker."""
    try:
        record = json.loads((folder / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def changes_since_export(folder: Path, recorded: dict[str, str]) -> list[str]:
    """What replacing the folder would lose: files edited or added since the export (a file deleted
    from it loses nothing)."""
    return [f"{name} {'edited' if name in recorded else 'added'}"
            for name, digest in folder_hashes(folder).items() if recorded.get(name) != digest]  # fmt: skip


def resolve_paths(cfg: UploadConfig) -> tuple[Path, Path]:
    """(checkpoint, log dir): --checkpoint and/or --log-dir, defaulting each from the other."""
    if cfg.checkpoint is not None:
        checkpoint = Path(cfg.checkpoint)
        if not checkpoint.exists():
            raise UploadError(f"--checkpoint {checkpoint} does not exist")
        return checkpoint, Path(cfg.log_dir) if cfg.log_dir is not None else checkpoint.parent
    log_dir = Path(cfg.log_dir if cfg.log_dir is not None else TrainConfig.log_dir)
    if not log_dir.is_dir():
        raise UploadError(f"--log-dir {log_dir} does not exist: pass the --log-dir train_gpt2.py wrote to, or --checkpoint PATH")
    checkpoint = latest_checkpoint(log_dir)
    if checkpoint is None:
        raise UploadError(
            f"--log-dir {log_dir} holds no checkpoint (ckpt_NNNNNN.pt or ckpt_NNNNNN.dcp): train with train_gpt2.py first, "
            "or pass --checkpoint PATH"
        )
    return checkpoint, log_dir


def read_checkpoint(path: Path) -> tuple[dict, GPT]:
    """The checkpoint's metadata (tensors memory-mapped, not read) and its model."""
    try:
        checkpoint = read_checkpoint_state(path, mmap=True)
    except ValueError as error:  # unreadable, not a dict, or an incomplete .dcp folder
        raise UploadError(f"--checkpoint {error}") from error
    # A .dcp folder's train state has no "model": its weights are in the shards.
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint and not (key == "model" and path.is_dir())]
    if missing:
        raise UploadError(f"--checkpoint {path} is not a complete train_gpt2.py checkpoint: it lacks {', '.join(missing)}")
    if checkpoint["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise UploadError(
            f"--checkpoint {path} has format_version {checkpoint['format_version']}, this upload_hf.py reads "
            f"{CHECKPOINT_FORMAT_VERSION}: update the code to the version that trained it"
        )
    try:
        model = GPT.from_checkpoint(path)
    except (ValueError, RuntimeError) as error:  # bad model_config, or weights that do not fit it
        # load_state_dict lists every mismatched tensor on its own line: two make the point.
        detail = error.__cause__ if isinstance(error.__cause__, RuntimeError) else error
        problems = [line.strip() for line in str(detail).splitlines() if line.strip()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UploadError(f"--checkpoint {path}: {' '.join(problems[:3])}{more}") from error
    return checkpoint, model.eval()


# -----------------------------------------------------------------------------
# The run's record: metrics.jsonl and the data's meta.json


def run_record(log_dir: Path, step: int) -> dict:
    """From metrics.jsonl: the last header, and the last train and eval records at or before the
    checkpoint's step (later ones come from training that went on past this checkpoint)."""
    path = log_dir / "metrics.jsonl"
    summary = {"header": None, "train": None, "eval": None}
    if not path.is_file():
        print(f"warning: {path} not found; the model card will have no results")
        return summary
    try:
        records = read_metrics(path)
    except ValueError as error:
        raise UploadError(f"{path} has a line that is not JSON ({error}): remove that line and rerun") from error
    headers = [record for record in records if record["type"] == "header"]
    summary["header"] = headers[-1] if headers else None
    for kind in ("train", "eval"):
        before = [record for record in latest_per_step(records, kind) if record["step"] <= step]
        summary[kind] = before[-1] if before else None
    return summary


def source_dataset(data_dir: str) -> str | None:
    """The Hub dataset the token shards came from, for the card's metadata."""
    try:
        return (read_meta(data_dir).get("source") or {}).get("repo")
    except ShardError:
        # The shards often stay on the training node: recognise fineweb.py's folder for FineWeb-Edu.
        return FINEWEB_EDU_REPO if Path(data_dir).name == Path(SOURCES["fineweb-edu"][1]).name else None


# -----------------------------------------------------------------------------
# The model card


def model_family(model_config: dict) -> str:
    return "GPT-2.5" if GPTConfig.from_dict(model_config).hf_architecture == "LlamaForCausalLM" else "GPT-2"


def model_card(cfg: UploadConfig, checkpoint: dict, checkpoint_path: Path, metrics: dict, num_params: int, has_plot: bool,
               tokenizer_json: str | None, vocab_size: int) -> str:
    train_config, model_config = checkpoint["config"], checkpoint["model_config"]
    family = model_family(model_config)
    step, tokens_seen = checkpoint["step"], checkpoint["tokens_seen"]
    data = str(train_config.get("data", "unknown"))
    dataset = source_dataset(data)
    init_from = checkpoint.get("init_from")  # train_gpt2.py --init-from's record of the weights it started from
    metadata = ModelCardData(
        license=cfg.license or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "nanogpt", "fine-tuned" if init_from else "pretrained-from-scratch"] + (["llama"] if family == "GPT-2.5" else []),
        datasets=[dataset] if dataset else None,
        base_model=init_from.get("hub_repo") if init_from else None,
    )
    name = cfg.repo_id.split("/")[1]
    data_text = f"[{dataset}](https://huggingface.co/datasets/{dataset}) (tokenized into `{data}`)" if dataset else f"`{data}`"
    max_steps = train_config.get("max_steps")
    progress = f" of the {max_steps:,} planned" if isinstance(max_steps, int) and step < max_steps else ""

    tokenizer = "GPT-2's tokenizer" if tokenizer_json is None else f"its own byte-level BPE tokenizer of {vocab_size:,} tokens"
    lines = [
        f"# {name}",
        "",
        f"A {family} language model ({num_params / 1e6:.0f}M parameters: {model_config['n_layer']} layers, "
        f"{model_config['n_head']} heads, {model_config['n_embd']}-dimensional embeddings, a context of "
        f"{model_config['block_size']} tokens, {tokenizer}) {'fine-tuned' if init_from else 'trained from scratch'} with "
        "`train_gpt2.py`, a reproduction of GPT-2 in the style of nanoGPT / build-nanogpt.",
        "",
    ]
    if init_from:
        hub_repo, sha256 = init_from.get("hub_repo"), init_from.get("sha256")
        source = f"[{hub_repo}](https://huggingface.co/{hub_repo})" if hub_repo else f"`{init_from['name']}`"
        lines += [f"It was fine-tuned from {source}" + (f" (sha256 `{sha256}`)" if sha256 else "") + ": training started "
                  "from its weights, with a fresh optimizer; the steps and tokens below are the fine-tune's.", ""]
    if family == "GPT-2.5":
        lines += [
            "GPT-2.5 is GPT-2's size with the components of current models: RMSNorm, a SwiGLU MLP, rotary position "
            "embeddings and no biases. That is Llama's architecture, so it is saved in Llama format: transformers "
            "loads it as `LlamaForCausalLM`, with no custom code.",
            "",
        ]
    lines += [
        f"It is checkpoint `{checkpoint_path.name}`: {step:,} optimizer steps{progress}, "
        f"{tokens_seen:,} training tokens, on {data_text}.",
        "",
        "## Results",
        "",
    ]
    evaluation = metrics["eval"]
    if evaluation is None:
        lines.append("No evaluation was recorded in the run's metrics.jsonl up to this checkpoint.")
    else:
        lines += ["| metric | value | at step |", "| --- | --- | --- |"]
        lines.append(f"| validation loss | {evaluation['val_loss']:.4f} | {evaluation['step']:,} |")
        if metrics["train"] is not None:
            lines.append(f"| training loss | {metrics['train']['train_loss']:.4f} | {metrics['train']['step']:,} |")
        acc_norm, examples = evaluation.get("hellaswag_acc_norm"), evaluation.get("hellaswag_n")
        for key in ("hellaswag_acc_norm", "hellaswag_acc"):
            value = evaluation.get(key)
            label = f"HellaSwag {key.removeprefix('hellaswag_')}" + (f" ({examples:,} examples)" if value is not None and examples else "")
            lines.append(f"| {label} | {'not measured' if value is None else f'{value:.4f}'} | {evaluation['step']:,} |")
        # OpenAI's GPT-2 124M on the same measures, so a reader can judge the figures at once.
        references = f"HellaSwag acc_norm {GPT2_124M_HELLASWAG} on all {hellaswag.VAL_EXAMPLES:,} validation examples with the same scoring (hellaswag.py)"
        if dataset == FINEWEB_EDU_REPO:
            references += f", validation loss {GPT2_124M_VAL_LOSS} on the same FineWeb-Edu validation shard (as build-nanogpt measured it)"
        lines += ["", f"Validation loss is on held-out tokens of the training data. For comparison, OpenAI's GPT-2 124M: {references}."]
        if acc_norm is not None and not examples:
            lines += ["", "The run's metrics.jsonl does not record how many HellaSwag examples these figures cover "
                          "(see hellaswag_limit in the training configuration below)."]  # fmt: skip
        elif acc_norm is not None and examples != hellaswag.VAL_EXAMPLES:
            # Binomial standard error: how far a subset's accuracy may be from the whole set's.
            stderr = math.sqrt(acc_norm * (1 - acc_norm) / examples)
            lines += ["", f"HellaSwag was scored on {examples:,} examples, a subset of the {hellaswag.VAL_EXAMPLES:,} in its validation "
                          f"set (train_gpt2.py --hellaswag-limit), so its figures are rough: the standard error of acc_norm is "
                          f"about {stderr:.3f}, and the comparison with GPT-2's full-set figure is only indicative."]  # fmt: skip
    if has_plot:
        lines += ["", "![Training and validation loss](loss.png)"]

    lines += ["", "## Training", "", "The training configuration, as recorded in the checkpoint:", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | `{value}` |" for key, value in train_config.items()]
    header = metrics["header"]
    if header is not None:
        lines += ["", f"Code version `{header.get('git_commit')}`, torch {header.get('torch')}, on {header.get('device')}."]
    if cfg.include_training_state:
        lines += [
            "",
            f"`{TRAINING_DIR}/` holds the raw checkpoint (model, optimizer, data position and RNG state: "
            "train_gpt2.py can resume from it) and the run's logs, metrics.jsonl among them.",
        ]

    revision = f", revision={json.dumps(cfg.revision)}" if cfg.revision else ""
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{cfg.repo_id}"{revision})',
        f'model = AutoModelForCausalLM.from_pretrained("{cfg.repo_id}"{revision})',
        "inputs = tokenizer(\"Hello, I'm a language model,\", return_tensors=\"pt\")",
        "outputs = model.generate(**inputs, max_new_tokens=32, do_sample=True, top_k=50, pad_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(outputs[0], skip_special_tokens=True))",
        "```",
        "",
        "## Limitations",
        "",
        "A small base model: it continues text and was not tuned to follow instructions or to be safe. "
        "What it writes is fluent but often false, and it reflects the biases of its web training data.",
    ]
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Export, verification and upload


def verify_export(reference: GPT, folder: Path, checkpoint_path: Path) -> GPT:
    """The exported folder reloaded, after checking it gives the checkpoint's logits."""
    try:
        reloaded = GPT.from_pretrained(folder).eval()
    except (OSError, ValueError) as error:
        raise UploadError(f"the exported folder does not reload ({error}): model.py's save_pretrained is broken; nothing was uploaded") from error
    cfg = reference.config
    # Any tensor lost, transposed or misnamed in the export changes the logits of a random batch.
    tokens = torch.randint(0, cfg.vocab_size, (2, min(cfg.block_size, 64)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = reference(tokens)
        actual, _ = reloaded(tokens)
    diff = (expected - actual).abs().max().item()
    if not diff <= MAX_LOGIT_DIFF:  # `not <=` so that NaN fails too
        raise UploadError(
            f"the exported folder's logits differ from {checkpoint_path}'s by up to {diff:.3g} (allowed {MAX_LOGIT_DIFF}): "
            "model.py's save_pretrained is broken; nothing was uploaded"
        )
    print(f"verified: the export reloads to the checkpoint's logits (max abs difference {diff:.2g})")
    verify_with_transformers(folder, tokens, expected, checkpoint_path)
    return reloaded


def verify_with_transformers(folder: Path, tokens: torch.Tensor, expected: torch.Tensor, checkpoint_path: Path) -> None:
    """Load the folder as the model's users will, with transformers, and compare its logits with the
    checkpoint's: a mistake that model.py's save_pretrained and from_pretrained share (a transpose,
    a config key) passes the check above but not this one."""
    try:
        import transformers  # a test-only dependency (requirements-dev.txt), so optional here
    except ImportError:
        print("note: transformers is not installed, so the export was not also loaded with it (pip install -r requirements-dev.txt adds this check)")
        return
    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, for a check that takes a moment
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).float().eval()
    except (OSError, ValueError, KeyError) as error:
        raise UploadError(f"transformers {transformers.__version__} cannot load the exported folder ({one_line(error)}): "
                          "update transformers, or fix model.py's save_pretrained; nothing was uploaded") from error  # fmt: skip
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()
    with torch.no_grad():
        actual = model(tokens).logits
    diff = (expected - actual).abs().max().item()
    if not diff <= MAX_TRANSFORMERS_LOGIT_DIFF:
        raise UploadError(
            f"transformers' {type(model).__name__} gives logits that differ from {checkpoint_path}'s by up to {diff:.3g} "
            f"(allowed {MAX_TRANSFORMERS_LOGIT_DIFF}): model.py's save_pretrained is broken; nothing was uploaded"
        )
    print(f"verified: transformers {transformers.__version__} loads the export as {type(model).__name__} with the checkpoint's logits "
          f"(max abs difference {diff:.2g})")  # fmt: skip


def export(cfg: UploadConfig, checkpoint_path: Path, log_dir: Path, folder: Path, card: str | None) -> dict:
    """Write the folder to upload into `folder` (new and empty) and verify it, with `card` as its
    model card (None: the generated one); returns the checkpoint's metadata."""
    checkpoint, model = read_checkpoint(checkpoint_path)
    print(f"checkpoint {checkpoint_path}: step {checkpoint['step']:,}, {checkpoint['tokens_seen']:,} tokens seen")
    metrics = run_record(log_dir, checkpoint["step"])
    # The tokenizer the checkpoint records (its tokenizer.json, or None for GPT-2's), or --tokenizer
    # for one that records none; load_tokenizer checks that it fits the model.
    try:
        load_tokenizer(checkpoint_path, model.config.vocab_size, cfg.tokenizer)
    except (OSError, ValueError) as error:
        raise UploadError(f"--checkpoint {checkpoint_path}: {error}") from error
    tokenizer_json = checkpoint.get("tokenizer_json")
    if tokenizer_json is None and cfg.tokenizer is not None:
        tokenizer_json = Path(cfg.tokenizer).read_text(encoding="utf-8")
    try:
        model.save_pretrained(folder, tokenizer_json)
    except (ValueError, RuntimeError) as error:  # an architecture transformers lacks, no tokenizer files
        raise UploadError(f"--checkpoint {checkpoint_path} cannot be exported to transformers: {error}") from error
    # The card counts the exported model's parameters: without the checkpoint's vocabulary padding.
    num_params = verify_export(model, folder, checkpoint_path).num_params()
    plot = log_dir / "loss.png"
    if plot.is_file():
        shutil.copyfile(plot, folder / "loss.png")
    if card is None:
        card = model_card(cfg, checkpoint, checkpoint_path, metrics, num_params, plot.is_file(), tokenizer_json, model.config.vocab_size)
    (folder / "README.md").write_text(card, encoding="utf-8")
    if cfg.include_training_state:
        copy_training_state(checkpoint_path, log_dir, folder / TRAINING_DIR)
    record = {"written_by": "upload_hf.py", "checkpoint": str(checkpoint_path), "files": folder_hashes(folder)}
    (folder / EXPORT_MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return checkpoint


def copy_training_state(checkpoint_path: Path, log_dir: Path, target: Path) -> None:
    """The checkpoint and the log folder's other files (metrics.jsonl, loss.png, ...), but not its
    other checkpoints, temporary files or subfolders."""
    target.mkdir()
    other_checkpoints = set(list_checkpoints(log_dir))
    for path in sorted(log_dir.iterdir()):
        if path.is_file() and path not in other_checkpoints and not path.name.startswith(".") and ".tmp" not in path.suffixes:
            shutil.copyfile(path, target / path.name)  # a snapshot: a running trainer appends to these
    # A checkpoint with its optimizer state is ~1.5 GB at GPT-2 124M: hard-link it (a .dcp folder's
    # files) where possible. train_gpt2.py never rewrites a checkpoint in place (it renames a new
    # one over it), so the links keep this version.
    if checkpoint_path.is_dir():
        shutil.copytree(checkpoint_path, target / checkpoint_path.name, copy_function=link_or_copy)
    else:
        link_or_copy(checkpoint_path, target / checkpoint_path.name)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, target)


def install(staging: Path, out: Path, move_aside: bool) -> None:
    """Move the verified export into --out, moving aside (--overwrite-out) or, for an unchanged
    previous export, deleting what was there (as check_out_dir decided before the export started)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.is_dir() and move_aside:
        backup = out.with_name(f"{out.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(backup)
        print(f"moved the previous contents of --out {out} to {backup}")
    elif out.is_dir():
        old = staging.with_name(staging.name + ".old")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
        return
    staging.rename(out)


def command_line(cfg: UploadConfig) -> str:
    """The upload_hf.py command line that runs `cfg`."""
    args = ["python", "upload_hf.py"]
    for field in fields(cfg):
        value, flag = getattr(cfg, field.name), field.name.replace("_", "-")
        if isinstance(value, bool):
            args += [] if value == field.default else [f"--{flag}" if value else f"--no-{flag}"]
        elif value is not None:
            args += [f"--{flag}", str(value)]
    return shlex.join(args)


def upload(cfg: UploadConfig, token: str, folder: Path, checkpoint_path: Path, log_dir: Path, checkpoint: dict) -> None:
    message = cfg.commit_message or (
        f"Upload {model_family(checkpoint['model_config'])} from {checkpoint_path.name} (step {checkpoint['step']:,}, "
        f"{checkpoint['tokens_seen']:,} tokens)"
    )
    # If the upload fails, the folder is kept, and the error says how to upload the same checkpoint
    # again: into that folder, which is re-exported (seconds) and then uploaded.
    kept = f"the verified export is kept in {folder}"
    rerun = command_line(replace(cfg, checkpoint=str(checkpoint_path), log_dir=str(log_dir), out=str(folder), overwrite_out=False))
    rerun = f"rerun (safe to repeat: large files the Hub already has are not sent again): {rerun}"
    api = HfApi(token=token)
    repo_reached = False
    try:
        # private only applies when the repo is created; an existing repo keeps its visibility.
        url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        repo_reached = True
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        # huggingface_hub 2's upload_folder (2.4 has no upload_large_folder) commits a large folder in
        # parts where hf_xet is installed, and resumes an interrupted upload when called again.
        commit = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=folder,
            commit_message=message,
            revision=cfg.revision,
            ignore_patterns=[EXPORT_MARKER],
        )
    except HfHubHTTPError as error:  # 401: bad token; 403: no write access to the namespace; ...
        raise UploadError(f"the Hub refused the upload to {cfg.repo_id}: {one_line(error)}; {kept}: once the cause is fixed, {rerun}") from error
    except (httpx.TransportError, OSError) as error:  # no connection, a timeout, HF_HUB_OFFLINE=1, a file unreadable
        state = f"{cfg.repo_id} may now exist on the Hub, empty or with part of the upload" if repo_reached else "nothing was uploaded"
        when = "once the Hub can be reached" if isinstance(error, (httpx.TransportError, ConnectionError)) else "once the cause is fixed"
        raise UploadError(f"the upload to {cfg.repo_id} did not complete ({type(error).__name__}: {one_line(error)}): "
                          f"{state}; {kept}: {when}, {rerun}") from error  # fmt: skip
    except BaseException:  # interrupted (Ctrl-C), or a failure of another kind: its traceback follows
        print(f"upload_hf.py: the upload to {cfg.repo_id} did not complete; {kept}: {rerun}", file=sys.stderr)
        raise
    print(f"uploaded {folder} to {url}: {commit.commit_url}")


def run(cfg: UploadConfig) -> None:
    check_repo_id(cfg.repo_id)
    check_license(cfg)
    token = None if cfg.dry_run else find_token()
    if cfg.dry_run and cfg.out is None:
        raise UploadError("--dry-run needs --out DIR: the folder it writes is the only thing it produces")
    card = read_card(Path(cfg.card)) if cfg.card is not None else None
    checkpoint_path, log_dir = resolve_paths(cfg)
    out = Path(cfg.out) if cfg.out is not None else None
    move_aside = False
    if out is not None:
        move_aside = check_out_dir(out, cfg.overwrite_out, [checkpoint_path, log_dir], Path(cfg.card) if cfg.card else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Build beside --out, so that a failed export leaves --out as it was and the final move is a rename.
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed mid-export
        staging.mkdir()
    else:
        staging = Path(tempfile.mkdtemp(prefix="upload_hf-"))
    try:
        checkpoint = export(cfg, checkpoint_path, log_dir, staging, card)
        if out is not None:
            install(staging, out, move_aside)
            print(f"wrote the export to {out}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed export is worth nothing
        raise
    if cfg.dry_run:
        card_path = out / "README.md"
        edit = "" if cfg.card else f" (to publish it edited: edit it, then rerun without --dry-run and with --card {card_path})"
        print(f"dry run: nothing uploaded; {card_path} is the model card that would be published{edit}")
        return
    upload(cfg, token, out or staging, checkpoint_path, log_dir, checkpoint)  # keeps the folder if it fails
    if out is None:
        shutil.rmtree(staging)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="Hub repository to create or update, namespace/name")
    parser.add_argument("--log-dir", help=f"train_gpt2.py's log folder: checkpoints, metrics.jsonl, loss.png (default: the --checkpoint's folder, else {TrainConfig.log_dir})")
    parser.add_argument("--checkpoint", help="checkpoint to publish, a ckpt_NNNNNN.pt file or ckpt_NNNNNN.dcp folder (default: the newest in "
                             "--log-dir; at one step, the folder)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="the tokenizer.json the model was trained with, for a checkpoint that does not record it "
                             "(default: the one it records, else GPT-2's)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=UploadConfig.private,
                        help="create the repo private, or public with --no-private (default: the Hub's default; an existing repo keeps its visibility)")
    parser.add_argument("--revision", help="branch to commit to, created if missing (default: the repo's default branch)")
    parser.add_argument("--commit-message", help="commit message (default: names the checkpoint, its step and tokens)")
    parser.add_argument("--card", metavar="PATH",
                        help="publish this Markdown file as the model card (README.md), e.g. the one a --dry-run wrote, edited "
                             "(default: the card generated from the checkpoint and metrics.jsonl)")
    parser.add_argument("--license", help=f"licence identifier for the generated card's metadata, one of "
                             f"https://huggingface.co/docs/hub/repositories-licenses (default: {DEFAULT_LICENSE})")
    parser.add_argument("--include-training-state", action=argparse.BooleanOptionalAction, default=UploadConfig.include_training_state,
                        help=f"also upload the raw checkpoint and the log folder's files under {TRAINING_DIR}/")
    parser.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=UploadConfig.dry_run,
                        help="write the folder to --out and check everything, but upload nothing (needs no token)")
    parser.add_argument("--out", help="keep the exported folder here; a previous export there is replaced unless its files were "
                             "changed (default: a temporary folder, deleted after the upload, kept if it fails)")
    parser.add_argument("--overwrite-out", action=argparse.BooleanOptionalAction, default=UploadConfig.overwrite_out,
                        help="replace a non-empty --out that upload_hf.py did not write, or whose files were changed since; "
                             "its contents move to a .backup folder beside it")
    return parser


def main(argv: list[str] | None = None) -> int:
    cfg = UploadConfig(**vars(build_parser().parse_args(argv)))
    print(f"upload_hf.py config: {json.dumps(asdict(cfg))}")
    try:
        run(cfg)
    except UploadError as error:
        print(f"upload_hf.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
