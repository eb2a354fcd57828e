"""Train GPT-2 (or GPT-2.5) on fineweb.py's token shards: one device, DDP or FSDP2 under torchrun, one node or many.

    python train_gpt2.py                                          # one GPU (or mps, or CPU)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py        # 8 GPUs: GPT-2 124M on 10B tokens
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1                   # for --max-restarts (README, "Restarts")
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=NODE0_ADDRESS:29500 \
        --rdzv-id=gpt2 --max-restarts=3 train_gpt2.py --micro-batch 32 --resume auto   # on each of 2 nodes
    torchrun --standalone --nproc_per_node=8 train_gpt2.py --model gpt2-xl --fsdp --micro-batch 8
    python train_gpt2.py --convert-checkpoint log/gpt2-124m/ckpt_019073.dcp   # -> ckpt_019073.pt
    python fineweb.py --dataset pystdlib --max-tokens 2000000 && python train_gpt2.py --preset smoke
    python train_gpt2.py --preset gpt2.5                          # GPT-2.5: RMSNorm, SwiGLU, RoPE, no biases
    python train_gpt2.py --optimizer muon                         # Muon on the blocks' matrices, AdamW on the rest

The model's vocabulary is the data's: shards made with a tokenizer.json (train_tokenizer.py, then
fineweb.py --tokenizer) give a model of that many tokens, and checkpoints carry the tokenizer.

Checkpoints are ckpt_{step:06d}.pt files (the whole model and optimizer state, written by rank 0),
or with --fsdp ckpt_{step:06d}.dcp folders (torch.distributed.checkpoint: every rank writes its
shard). Both are written under a temporary name and renamed when complete; `--resume auto` takes
the newest complete one of either kind, and both kinds resume with or without --fsdp.

SIGTERM (a preemption; torchrun forwards it to its workers) or SIGINT (Ctrl-C) does not kill a
run: every rank finishes the current step, a checkpoint is saved, and the process exits with
128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as if the signal had killed it, so
schedulers and torchrun see an unfinished run. The next launch with --resume auto continues.

SageMaker training jobs: SM_CHANNEL_TRAIN and SM_MODEL_DIR, when set, are the defaults of --data
and --log-dir (flags given explicitly still win).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from fineweb import (ShardError, fraction_below_one, fsync_dir, list_shards, load_shard, non_negative_float,
                     non_negative_int, one_line, positive_float, positive_int, read_meta, seed_int, write_atomic)
from model import PRESETS as MODEL_PRESETS
from model import (HF_REPO_IDS, TRAIN_STATE_FILE, GPT, GPTConfig, decode_completion, file_sha256, get_tokenizer,
                   is_complete_sharded_checkpoint, load_model, load_tokenizer, read_checkpoint_state, tokenizer_from_json,
                   vocab_sha256)

# -----------------------------------------------------------------------------
# Devices and distributed plumbing, shared by every script that runs a model.


def resolve_device(name: str | None = None) -> torch.device:
    """The device a flag names, or the best available one: cuda, then mps, then cpu."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise SystemExit(f"--device {name!r} is not a device torch knows ({e}); use cpu, cuda, cuda:N or mps") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise SystemExit(f"--device {name}: MPS is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def synchronize(device: torch.device):
    """Wait for the device's queued work, so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --dtype: the precision of the matmuls under autocast. Parameters, optimizer state and the
# residual stream stay fp32 whatever it is.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_HELP = ("autocast precision: auto (bf16 on GPUs with compute capability 8.0 and up, fp16 with loss scaling "
              "on older ones such as V100 and T4, fp32 on CPU and Apple silicon), bf16, fp16 or fp32")


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype's choice. auto: bf16 where the GPU computes it natively (Ampere, compute capability
    8.0, and later); fp16 on older GPUs (V100, T4, RTX 20xx), whose bf16 is emulated and slow; fp32
    on CPU and MPS, where autocast saves little and fp32 is exact."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def autocast_context(device: torch.device, dtype: torch.dtype | None = None):
    """Autocast to dtype (None: --dtype auto's choice for the device); no autocast for fp32."""
    dtype = choose_dtype("auto", device) if dtype is None else dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str | None = None) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (RANK set); else a single process.

    nccl on CUDA, gloo on CPU. Each rank takes the GPU of its local rank.
    """
    if "RANK" not in os.environ:
        return Distributed(), resolve_device(device_name)
    dist_info = Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group(backend="gloo")
    else:
        raise SystemExit(f"distributed training on {device.type} is not supported; use CUDA GPUs or --device cpu")
    return dist_info, device


def cleanup_distributed(finished: bool):
    """Leave the process group. A rank that finished waits first for the others to finish too: a
    gloo rank that tore its connections down while another was still in its last collective was
    seen to abort (SIGABRT, "terminate called without an active exception") at the end of a
    hellaswag.py run that had succeeded. After an error there is no barrier: the other ranks may
    never reach it (torchrun stops them when this one exits)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def check_visible_to_every_rank(path: Path, dist_info: Distributed, device: torch.device):
    """Every rank must read the checkpoint that rank 0 chose; with several nodes that needs shared storage."""
    if all_reduce_sum([float(path.exists())], device)[0] < dist_info.world_size:
        raise TrainError(f"{path} is not visible to every rank: with several nodes, --log-dir must be on "
                         "storage that all of them share (NFS, Lustre, ...)")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def decide_on_master(decide, dist_info: Distributed):
    """decide() run by rank 0 alone, and its result, or the TrainError it raised, handed to every
    rank: one decision for all, even where the ranks do not see the same files."""
    if not dist_info.enabled:
        return decide()
    outcome = [None]
    if dist_info.is_master:
        try:
            outcome = [("result", decide())]
        except TrainError as e:
            outcome = [("error", str(e))]
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise TrainError(value)
    return value


# -----------------------------------------------------------------------------
# Checkpoint names. {log_dir}/ckpt_{step:06d}.pt is a single file (rank 0 writes the whole state);
# {log_dir}/ckpt_{step:06d}.dcp/ a torch.distributed.checkpoint folder (--fsdp: every rank writes
# its shard, rank 0 adds train_state.pt). Both are written under a name ending in .tmp and renamed
# when complete, so a name matching the pattern is a checkpoint that can be resumed from. model.py
# reads both kinds (read_checkpoint_state, GPT.from_checkpoint), for this script and the others.

CHECKPOINT_PATTERN = "ckpt_[0-9][0-9][0-9][0-9][0-9][0-9].pt"
SHARDED_CHECKPOINT_PATTERN = "ckpt_[0-9][0-9][0-9][0-9][0-9][0-9].dcp"
# Written when a step's loss or gradient norm is not finite, so that torchrun's restarts do not replay it.
NONFINITE_FILE = "nonfinite.json"


def list_checkpoints(log_dir: str | os.PathLike) -> list[Path]:
    """Complete single-file checkpoints in log_dir, oldest first."""
    return sorted(Path(log_dir).glob(CHECKPOINT_PATTERN))


def checkpoint_step(path: Path) -> int:
    return int(path.name[len("ckpt_") : len("ckpt_") + 6])


def resumable_checkpoints(log_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of both kinds, oldest first; at the same step (a folder and the file
    converted from it) the folder comes last, so it is the one resumed from."""
    folders = [p for p in Path(log_dir).glob(SHARDED_CHECKPOINT_PATTERN) if is_complete_sharded_checkpoint(p)]
    return sorted(list_checkpoints(log_dir) + folders, key=lambda p: (checkpoint_step(p), p.suffix == ".dcp"))


def latest_checkpoint(log_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of either kind (what --resume auto takes), or None."""
    checkpoints = resumable_checkpoints(log_dir)
    return checkpoints[-1] if checkpoints else None


class TrainError(Exception):
    """A problem the user can fix (bad flags, missing data, incompatible checkpoint): printed, no traceback."""


# -----------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    # The defaults are the "gpt2" preset: GPT-2 124M on 10B tokens of FineWeb-Edu (build-nanogpt's recipe).
    model: str | None = "gpt2"  # a model.py preset; None with --init-from: the source's architecture
    data: str = "data/edu_fineweb10B"
    tokenizer: str | None = None  # the shards' tokenizer.json; None: the one their meta.json records
    log_dir: str = "log/gpt2-124m"
    total_batch: int = 524_288  # tokens per optimizer step, 2**19, about 0.5M as in GPT-3 Small
    micro_batch: int | str = "auto"  # sequences per forward pass on each rank, or "auto": the largest that fits
    seq_len: int = 1024
    max_steps: int = 19_073  # 10B tokens / 524,288 tokens per step
    stop_at_step: int | None = None  # end this launch after that step (with a checkpoint) without changing the schedule
    max_lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # "muon": Muon on the transformer blocks' matrices, AdamW on the rest (build_optimizer)
    # Muon's defaults are modded-nanogpt's (Jordan et al. 2024): lr 0.05, momentum 0.95 with Nesterov,
    # and torch.optim.Muon's "original" shape scaling, sqrt(max(1, rows/cols)), which that lr was tuned
    # with. Liu et al. 2025 ("Muon is Scalable for LLM Training", arXiv:2502.16982) scale by
    # 0.2 * sqrt(max(rows, cols)) instead ("match_rms_adamw"), which matches AdamW's update RMS so that
    # AdamW's lr and weight decay 0.1 carry over: --muon-adjust-lr match_rms_adamw --muon-lr 6e-4
    # --muon-weight-decay 0.1. Weight decay 0 is modded-nanogpt's; torch.optim.Muon multiplies it by
    # the lr (as AdamW does), so 0.1 at lr 0.05 would shrink the matrices 100x harder than AdamW's.
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_adjust_lr: str = "original"
    pad_vocab: bool = True  # pad the embedding to a multiple of 64 rows (GPT-2's 50257 -> 50304), for faster matmuls
    seed: int = 1337
    eval_every: int = 250
    val_steps: int = 20  # validation micro-batches per rank at each evaluation
    hellaswag: bool = True
    hellaswag_data: str | None = None  # default: hellaswag.py's download cache
    hellaswag_limit: int | None = None  # evaluate only the first N examples
    num_samples: int = 4  # text samples per evaluation
    sample_tokens: int = 32
    sample_prompt: str = "Hello, I'm a language model,"
    # build-nanogpt saves every 5000 steps: a crash that is no SIGTERM then costs up to 26% of the
    # run. A 1.5 GB save every 1000 steps costs seconds.
    save_every: int = 1000
    keep_last: int = 3  # checkpoints kept in the log dir; older ones are deleted after a successful save
    resume: str = "none"  # "auto" (newest checkpoint in log_dir, if any), "none", or a checkpoint path
    device: str | None = None  # auto: cuda, then mps, then cpu
    compile: bool | None = None  # default: on for CUDA with Triton
    dtype: str = "auto"  # autocast precision; see choose_dtype
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the ranks (FSDP2) instead of DDP
    log_every: int = 1  # console lines every N steps; metrics.jsonl gets every step
    tensorboard: bool = False  # mirror metrics.jsonl's numbers into {log_dir}/tensorboard
    init_from: str | None = None  # fine-tune: a Hub name, a Hugging Face folder or a checkpoint to take the weights of


PRESETS = {
    "gpt2": {},
    # GPT-2 124M's size with RMSNorm, SwiGLU, RoPE and no biases (model.py's gpt2.5), which trains
    # stably at a 3x higher learning rate.
    "gpt2.5": dict(model="gpt2.5", max_lr=1.8e-3, min_lr=1.8e-4, log_dir="log/gpt2.5-124m"),
    # A tiny model on the Python standard library's sources (fineweb.py --dataset pystdlib): about two
    # minutes on 2 CPU cores, with evaluation, sampling and checkpoints, to check a setup end to end.
    "smoke": dict(
        model="tiny",
        data="data/pystdlib",
        log_dir="log/smoke",
        total_batch=1024,  # 2 micro-steps of 8 x 64 tokens: gradient accumulation is exercised too
        micro_batch=8,
        seq_len=64,
        max_steps=100,
        # Not higher: AdamW moves every weight by about the learning rate each step, 4-8% of a weight
        # matrix's RMS at 3e-3 in this tiny model, and there the step-20 update threw it off (train
        # loss 4.8 -> 12.8 at step 21, on every batch, not one odd batch); 1.5e-3 still gave a
        # gradient-norm spike of 90 (results/2026-12-06_cpu_smoke_lr_spike.txt).
        max_lr=1e-3,
        min_lr=1e-4,
        warmup_steps=10,
        eval_every=50,
        val_steps=4,
        hellaswag_limit=40,
        save_every=50,
        sample_tokens=24,
        num_samples=2,
        log_every=10,
    ),
    # Fine-tuning a pretrained GPT-2 on a small corpus (fineweb.py --dataset tinyshakespeare, 305k
    # training tokens) on one GPU or a laptop. From nanoGPT's config/finetune_shakespeare.py: a
    # constant learning rate of 3e-5 (decay_lr False; here warm-up 1 step and min_lr = max_lr), 1 x 32
    # x 1024 = 32,768 tokens per step, evaluation every 5 steps. Its 20 steps are 2 epochs of Tiny
    # Shakespeare; Hugging Face's run_clm.py fine-tunes for 3 epochs by default (at lr 5e-5, decaying
    # linearly), and 30 steps are 3 epochs here. For a larger corpus, raise --max-steps to about
    # 3 x its training tokens / 32,768.
    "finetune": dict(
        init_from="gpt2",
        data="data/tinyshakespeare",
        log_dir="log/finetune",
        total_batch=32_768,
        # Not auto: that may choose 32, and Tiny Shakespeare's validation split (32,768 tokens) holds 31
        # windows of 1,024. 3 micro-batches of 8 evaluate 24 of them, each once.
        micro_batch=8,
        seq_len=1024,
        max_steps=30,
        max_lr=3e-5,
        min_lr=3e-5,
        warmup_steps=1,
        eval_every=5,
        val_steps=3,
        hellaswag=False,  # 10,042 examples at every evaluation would take longer than the fine-tune
        save_every=10,
        num_samples=2,
    ),
}

# Help for every flag; argparse is built from the dataclass so the two cannot drift apart.
FLAG_HELP = {
    "model": "model.py preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2.5, tiny, tiny-2.5 (with --init-from, the "
             "source's architecture; a --model that differs is refused)",
    "tokenizer": "the tokenizer.json the shards were made with, where their meta.json's path to it does not "
                 "lead to it (default: that path; GPT-2's tokenizer for shards made without --tokenizer)",
    "data": "folder of fineweb.py shards (default in a SageMaker job: $SM_CHANNEL_TRAIN)",
    "log_dir": "where metrics.jsonl, loss.png and checkpoints go (default in a SageMaker job: $SM_MODEL_DIR)",
    "total_batch": "tokens per optimizer step, summed over ranks and gradient-accumulation steps",
    "micro_batch": "sequences per forward pass on each rank, or 'auto': the largest of 64, 32, 16, ... that fits in "
                   "the GPU's memory (tried before step 1), with gradient accumulation making up the total batch",
    "seq_len": "tokens per sequence (at most the model's block_size)",
    "max_steps": "optimizer steps in the run; the learning-rate schedule ends there",
    "stop_at_step": "save and exit after this many steps without changing the schedule (continue with --resume auto)",
    "max_lr": "peak learning rate, reached at the end of warm-up",
    "min_lr": "learning rate at the last step, the floor of the cosine decay",
    "warmup_steps": "steps of linear warm-up from max_lr/warmup_steps to max_lr",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "eps": "AdamW epsilon",
    "weight_decay": "AdamW weight decay, applied to matrices and embeddings only",
    "grad_clip": "clip the global gradient norm to this value (0 disables)",
    "optimizer": "adamw, or muon: Muon on every matrix inside the transformer blocks (attention and MLP), AdamW "
                 "(--max-lr, --weight-decay) on the embeddings, the tied output layer, gains and biases",
    "muon_lr": "Muon's peak learning rate (--optimizer muon); warm-up and cosine decay scale it as they scale --max-lr",
    "muon_momentum": "Muon's (Nesterov) momentum",
    "muon_weight_decay": "Muon's decoupled weight decay, multiplied by its learning rate as AdamW's is",
    "muon_adjust_lr": "Muon's per-matrix scaling of its learning rate: original (sqrt(max(1, rows/cols)), Jordan et al.) "
                      "or match_rms_adamw (0.2 sqrt(max(rows, cols)), Liu et al.: AdamW's lr and weight decay carry over)",
    "pad_vocab": "pad the embedding table to a multiple of 64 rows (never sampled or scored)",
    "seed": "seed for initialisation, data order and samples",
    "eval_every": "evaluate validation loss, HellaSwag and samples every N steps (and at the end)",
    "val_steps": "validation micro-batches per rank at each evaluation",
    "hellaswag": "evaluate HellaSwag at each evaluation",
    "hellaswag_data": "HellaSwag validation .jsonl (default: hellaswag.py's download cache)",
    "hellaswag_limit": "evaluate only the first N HellaSwag examples",
    "num_samples": "text samples generated at each evaluation",
    "sample_tokens": "new tokens per text sample",
    "sample_prompt": "prompt of the text samples",
    "save_every": "write a checkpoint every N steps (and at the end)",
    "keep_last": "checkpoints to keep in the log dir (steps: a .pt file and a .dcp folder of one step count once)",
    "resume": "'auto' (newest complete checkpoint in --log-dir, if there is one), 'none', or a ckpt_*.pt file or "
              "ckpt_*.dcp folder",
    "device": "cuda, cuda:N, mps or cpu (default: the best available)",
    "compile": "torch.compile the model (default: on for CUDA where Triton is installed)",
    "dtype": DTYPE_HELP,
    "fsdp": "shard parameters, gradients and optimizer state over the torchrun ranks (FSDP2) instead of replicating "
            "them (DDP), for models that do not fit otherwise; checkpoints become ckpt_*.dcp folders",
    "log_every": "print a console line every N steps",
    "tensorboard": "also write the train and eval numbers to {log_dir}/tensorboard (needs: pip install tensorboard)",
    "init_from": "fine-tune: start from the weights of gpt2, gpt2-medium, gpt2-large or gpt2-xl (downloaded from the "
                 "Hugging Face Hub), a Hugging Face GPT-2 or Llama folder, or a train_gpt2.py ckpt_*.pt file or ckpt_*.dcp "
                 "folder; the architecture is the source's (leave --model out). Only the weights: the optimizer, data "
                 "position and step start fresh. With --resume auto, a checkpoint in --log-dir wins over the source",
}



def micro_batch_arg(text: str) -> int | str:
    """--micro-batch: 'auto' or a whole number of sequences, at least 1."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer of at least 1, not {text!r}") from None


# What the numeric and named flags accept, checked by argparse before anything runs (a flag missing
# here is a string).
FLAG_TYPES = {
    "micro_batch": micro_batch_arg,
    "total_batch": positive_int,
    "seq_len": positive_int,
    "max_steps": positive_int,
    "stop_at_step": positive_int,  # 0 would read as "not given" and run to the end
    "max_lr": positive_float,
    "min_lr": non_negative_float,
    "warmup_steps": positive_int,
    "beta1": fraction_below_one,
    "beta2": fraction_below_one,
    "eps": positive_float,
    "weight_decay": non_negative_float,
    "grad_clip": non_negative_float,  # 0 disables clipping
    "muon_lr": positive_float,
    "muon_momentum": fraction_below_one,
    "muon_weight_decay": non_negative_float,
    "seed": seed_int,
    "eval_every": positive_int,
    "val_steps": positive_int,
    "hellaswag_limit": positive_int,  # --no-hellaswag, not 0, turns HellaSwag off
    "num_samples": non_negative_int,  # 0: no text samples
    "sample_tokens": positive_int,
    "save_every": positive_int,
    "keep_last": positive_int,
    "log_every": positive_int,
}
FLAG_CHOICES = {"model": tuple(MODEL_PRESETS), "dtype": DTYPE_CHOICES, "optimizer": ("adamw", "muon"),
                "muon_adjust_lr": ("original", "match_rms_adamw")}

# A SageMaker training job names its folders in the environment: the "train" input channel (the
# shards, uploaded from S3) and the folder uploaded back to S3 when the job ends. They replace the
# presets' folders; flags given explicitly still win.
SAGEMAKER_DEFAULTS = {"data": "SM_CHANNEL_TRAIN", "log_dir": "SM_MODEL_DIR"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpt2", help="defaults for every flag below")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=FLAG_HELP[f.name])
        else:
            parser.add_argument(flag, type=FLAG_TYPES.get(f.name, str), choices=FLAG_CHOICES.get(f.name), default=None,
                                help=FLAG_HELP[f.name])
    convert = parser.add_argument_group("instead of training, convert a --fsdp checkpoint")
    convert.add_argument("--convert-checkpoint", metavar="DCP_FOLDER",
                         help="a ckpt_*.dcp folder to rewrite as one ckpt_*.pt file, a single file to copy or share "
                              "(train_gpt2.py, generate.py, hellaswag.py and upload_hf.py read either)")
    convert.add_argument("--out", metavar="FILE", help="the .pt file to write (default: beside the folder, ckpt_NNNNNN.pt)")
    return parser


def config_from_args(args: dict) -> TrainConfig:
    """Dataclass defaults, then the preset, then SageMaker's folders, then the flags given."""
    values = asdict(TrainConfig())
    values.update(PRESETS[args["preset"]])
    values.update({name: os.environ[var] for name, var in SAGEMAKER_DEFAULTS.items() if os.environ.get(var)})
    values.update({k: v for k, v in args.items() if k in values and v is not None})
    if values["init_from"] and args.get("model") is None:
        values["model"] = None  # the source's architecture, not a preset's (an explicit --model is checked against it)
    if values["min_lr"] > values["max_lr"]:
        raise TrainError(f"--min-lr {values['min_lr']} is above --max-lr {values['max_lr']}: the learning rate decays "
                         "from --max-lr down to --min-lr; lower --min-lr or raise --max-lr")
    if values["optimizer"] == "muon" and values["fsdp"]:
        raise TrainError("--optimizer muon does not work with --fsdp yet (Muon orthogonalises each whole matrix, and "
                         "FSDP leaves each rank a shard of it): drop --fsdp, or use --optimizer adamw")
    return TrainConfig(**values)


def parse_config(argv=None) -> TrainConfig:
    return config_from_args(vars(build_parser().parse_args(argv)))


@dataclass(frozen=True)
class Plan:
    """Quantities derived from the config and the world size, computed and checked once."""

    micro_batch: int
    grad_accum_steps: int
    tokens_per_step: int


# --micro-batch auto tries these sizes and smaller. A CPU has no out-of-memory error to catch (the
# kernel kills the process instead), so there it starts low.
AUTO_MICRO_BATCH_LARGEST = {"cuda": 64, "cpu": 8, "mps": 8}


def micro_batch_candidates(cfg: TrainConfig, world_size: int, largest: int = AUTO_MICRO_BATCH_LARGEST["cuda"]) -> list[int]:
    """--micro-batch auto's sizes, largest first: those up to `largest` that divide each rank's share of the batch."""
    per_rank, rest = divmod(cfg.total_batch, cfg.seq_len * world_size)
    if rest or not per_rank:
        raise TrainError(f"--total-batch {cfg.total_batch} is not a multiple of --seq-len {cfg.seq_len} x {world_size} "
                         f"processes = {cfg.seq_len * world_size}; change one of those flags")
    return [size for size in range(min(largest, per_rank), 0, -1) if per_rank % size == 0]


def make_plan(cfg: TrainConfig, world_size: int, block_size: int, micro_batch: int | None = None) -> Plan:
    """The plan for micro_batch sequences per forward pass (default: --micro-batch, or with auto the
    largest size it will try; fit_micro_batch may choose a smaller one, and the plan is made again)."""
    for name in ("total_batch", "seq_len", "eval_every", "save_every", "val_steps", "keep_last", "log_every"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(cfg, name)}")
    if micro_batch is None:
        micro_batch = micro_batch_candidates(cfg, world_size)[0] if cfg.micro_batch == "auto" else cfg.micro_batch
    if micro_batch < 1:
        raise TrainError(f"--micro-batch must be at least 1, not {micro_batch} (or auto)")
    tokens_per_micro_step = micro_batch * cfg.seq_len * world_size
    if cfg.total_batch % tokens_per_micro_step != 0:
        fit = cfg.total_batch // (cfg.seq_len * world_size)  # the micro-batch that needs no accumulation
        hint = f" (--micro-batch {fit} fits)" if fit >= 1 and fit * cfg.seq_len * world_size == cfg.total_batch else ""
        raise TrainError(
            f"--total-batch {cfg.total_batch} is not a multiple of --micro-batch {micro_batch} x --seq-len "
            f"{cfg.seq_len} x {world_size} processes = {tokens_per_micro_step}; change one of those flags{hint}"
        )
    if cfg.seq_len > block_size:
        raise TrainError(f"--seq-len {cfg.seq_len} exceeds the {cfg.model} model's block_size {block_size}")
    if not 0 < cfg.warmup_steps < cfg.max_steps:
        raise TrainError(f"--warmup-steps {cfg.warmup_steps} must be between 1 and --max-steps {cfg.max_steps} - 1")
    return Plan(micro_batch=micro_batch, grad_accum_steps=cfg.total_batch // tokens_per_micro_step,
                tokens_per_step=cfg.total_batch)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to max_lr, then cosine decay to min_lr at the last step (GPT-3 paper, appendix B)."""
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps - 1:
        return cfg.min_lr
    decay_ratio = (step - cfg.warmup_steps) / (cfg.max_steps - 1 - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return cfg.min_lr + coeff * (cfg.max_lr - cfg.min_lr)


# -----------------------------------------------------------------------------
# Optimizers. --optimizer muon: Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/)
# replaces each hidden matrix's momentum by the nearest (semi-)orthogonal matrix, computed with a few
# Newton-Schulz iterations, so that an update moves every direction of the matrix alike instead of
# the few that dominate the gradient. It is made for the matrices between hidden layers; embeddings,
# the output layer and 1-D parameters stay with AdamW (Jordan et al.; torch.optim.Muon's docs).


def muon_parameters(model: GPT) -> list[torch.nn.Parameter]:
    """The parameters Muon updates: every matrix inside the transformer blocks (attention's c_attn and
    c_proj, the MLP's c_fc and c_proj), never the embeddings, the output layer tied to wte, nor the
    norms' gains and biases.

    c_attn holds q, k and v as one (3C, C) matrix, and Muon orthogonalises it as one. modded-nanogpt
    keeps them as three matrices, each orthogonalised on its own; here that would take a Muon that
    orthogonalises slices of one parameter, which torch.optim.Muon does not. As one matrix, q, k and v
    share the update's singular directions, which changes the update, not what the parameter is; the
    same holds for SwiGLU's fused gate and up projections in c_fc (gpt2.5)."""
    return [p for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2]


class MuonWithAdamW:
    """Muon and AdamW stepped as one optimizer, so that the loop, the GradScaler and the checkpoint
    treat them as they treat AdamW alone: param_groups lists Muon's groups, then AdamW's (the scaler
    unscales and checks them all, and under fp16 skips both steps when a gradient overflowed), and
    state_dict holds both optimizers' states."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict):
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(cfg: TrainConfig, model: GPT, device: torch.device):
    """--optimizer's optimizer over the model's parameters, each group's lr at its peak (--max-lr, or
    --muon-lr for Muon's): the loop scales every group by get_lr(step) / --max-lr. adamw: AdamW on
    everything (model.configure_optimizers). muon: Muon on muon_parameters, AdamW on the rest."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return model.configure_optimizers(cfg.weight_decay, cfg.max_lr, betas, cfg.eps, device.type)
    matrices = muon_parameters(model)
    in_muon = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in in_muon]
    muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay, momentum=cfg.muon_momentum,
                            nesterov=True, adjust_lr_fn=cfg.muon_adjust_lr)
    adamw = model.configure_optimizers(cfg.weight_decay, cfg.max_lr, betas, cfg.eps, device.type, params=rest)
    return MuonWithAdamW(muon, adamw)


# -----------------------------------------------------------------------------
# Data


class DataLoader:
    """Windows of seq_len + 1 tokens from fineweb.py's shards, for one rank.

    Each epoch visits the shards in a seeded random order and the windows inside each shard in a
    seeded random order (ordered data causes periodic bumps in the loss). The global batch of a
    micro-step is the next micro_batch * world_size windows; rank r takes the r-th slice of it, so
    ranks read disjoint data and every window is used at most once per epoch (the few windows that
    do not fill a last global batch are skipped in that epoch). `position` counts global windows, so the
    state does not depend on the world size. The validation split is read in order, unshuffled.
    """

    def __init__(self, data_dir, split: str, micro_batch: int, seq_len: int, rank: int, world_size: int,
                 seed: int, shuffle: bool):
        self.data_dir, self.split = Path(data_dir), split
        self.micro_batch, self.seq_len = micro_batch, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.paths = list_shards(data_dir, split)
        # mmap: only the windows a rank reads are paged in, whatever the shard size.
        self.shards = [load_shard(path, mmap=True) for path in self.paths]
        self.windows_per_shard = [(len(shard) - 1) // seq_len for shard in self.shards]
        self.total_windows = sum(self.windows_per_shard)
        self.global_batch = micro_batch * world_size
        if self.total_windows < self.global_batch:
            raise TrainError(
                f"the {split} split of {data_dir} ({sum(map(len, self.shards)):,} tokens in {len(self.paths)} shard(s)) "
                f"is shorter than one batch of {self.global_batch} x {seq_len + 1} tokens; lower --micro-batch or "
                f"--seq-len, or make more data with fineweb.py"
            )
        self.epoch, self.position = 0, 0
        self._order_epoch = None

    def _order(self):
        """Shard order, start offsets, and per-shard window permutations of the current epoch."""
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            n = len(self.shards)
            self._shard_order = rng.permutation(n) if self.shuffle else np.arange(n)
            counts = np.array(self.windows_per_shard)[self._shard_order]
            self._starts = np.concatenate([[0], np.cumsum(counts)])
            self._window_perms = {}
            self._order_epoch = self.epoch
        return self._shard_order, self._starts

    def _window(self, global_index: int) -> np.ndarray:
        shard_order, starts = self._order()
        slot = int(np.searchsorted(starts, global_index, side="right")) - 1
        shard = int(shard_order[slot])
        offset = global_index - int(starts[slot])
        if self.shuffle:
            if shard not in self._window_perms:
                rng = np.random.default_rng([self.seed, self.epoch, shard])
                self._window_perms = {shard: rng.permutation(self.windows_per_shard[shard])}
            offset = int(self._window_perms[shard][offset])
        start = offset * self.seq_len
        return self.shards[shard][start : start + self.seq_len + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.global_batch > self.total_windows:
            self.epoch, self.position = self.epoch + 1, 0
        first = self.position + self.rank * self.micro_batch
        windows = np.stack([self._window(i) for i in range(first, first + self.micro_batch)]).astype(np.int64)
        self.position += self.global_batch
        buf = torch.from_numpy(windows)
        return buf[:, :-1], buf[:, 1:]

    def reset(self):
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "total_windows": self.total_windows}

    def load_state_dict(self, state: dict):
        if state["total_windows"] != self.total_windows or state["seed"] != self.seed:
            raise TrainError(
                f"the checkpoint's data position was recorded for {state['total_windows']:,} windows with seed "
                f"{state['seed']}, but {self.data_dir} with --seq-len {self.seq_len} and --seed {self.seed} has "
                f"{self.total_windows:,}: resume with the same data, --seq-len and --seed"
            )
        self.epoch, self.position = state["epoch"], state["position"]


class DeviceBatches:
    """The loader's micro-batches on the device, each gathered while the GPU computes the one before.

    take() hands out the prefetched batch; prefetch(), called once a micro-step's work is queued,
    gathers the next on the host (window reads, np.stack) into pinned memory and starts its copy,
    so the GPU does not wait for the host between steps. state_dict() is the loader's position
    before the batch held in reserve: a checkpoint resumes at the first batch not trained on.
    """

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device
        self._next, self._state_before_next = None, None

    def prefetch(self):
        if self._next is None:
            self._state_before_next = self.loader.state_dict()
            x, y = self.loader.next_batch()
            if self.device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            self._next = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.prefetch()
        batch, self._next = self._next, None
        return batch

    def state_dict(self) -> dict:
        return self._state_before_next if self._next is not None else self.loader.state_dict()


# -----------------------------------------------------------------------------
# Logs: metrics.jsonl is append-only (a resumed run adds to it) and the plot is drawn from it.

# Peak dense tensor-core FLOP/s of bf16 matmuls with fp32 accumulation (what autocast's matmuls
# do), for MFU; each GPU's fp16 peak is the same, so one table serves both. NVIDIA's data sheets
# print 2:4-sparse figures with an asterisk: those are halved here. GeForce cards accumulate in
# fp32 at half the fp16-accumulate rate their whitepapers headline, and the fp32-accumulate rate is
# the one used. Matched by substring of torch.cuda.get_device_name(), first match wins, so a key
# contained in another comes after it (GB200/B200, H100 PCIe/H100, A100/A10G/A10, L40S/L40/L4).
# Unknown devices get no MFU rather than a guess. Sources, by document name:
PEAK_BF16_FLOPS = {
    "GB200": 5e15 / 2,  # NVIDIA GB200 NVL72 data sheet: FP16/BF16 Tensor Core 5 PFLOPS* per GPU
    "B200": 4.5e15 / 2,  # NVIDIA DGX B200 / HGX B200 data sheet: 4.5 PFLOPS* per GPU
    "GH200": 989e12,  # NVIDIA GH200 Grace Hopper Superchip data sheet: 1,979 TFLOPS*, as the H100 SXM
    "H200 NVL": 1671e12 / 2,  # NVIDIA H200 Tensor Core GPU data sheet: NVL 1,671 TFLOPS*
    "H200": 989e12,  # same data sheet: SXM 1,979 TFLOPS*
    "H100 PCIe": 1513e12 / 2,  # NVIDIA H100 Tensor Core GPU data sheet: PCIe 1,513 TFLOPS*
    "H100 NVL": 1671e12 / 2,  # same data sheet: NVL 1,671 TFLOPS*
    "H100": 989e12,  # same data sheet: SXM 1,979 TFLOPS* (H100 whitepaper: 989.4 dense)
    "A100": 312e12,  # NVIDIA A100 Tensor Core GPU data sheet: 312 | 624* TFLOPS, 40 and 80 GB, SXM and PCIe
    "A10G": None,  # AWS's variant of the A10: no NVIDIA data sheet, and published figures disagree
    "A10": 125e12,  # NVIDIA A10 Tensor Core GPU data sheet: 125 | 250* TFLOPS
    "L40S": 362.05e12,  # NVIDIA L40S data sheet: 362.05 | 733* TFLOPS
    "L40": 181.05e12,  # NVIDIA L40 data sheet: 181.05 | 362.1* TFLOPS
    "L4": 242e12 / 2,  # NVIDIA L4 Tensor Core GPU data sheet: 242 TFLOPS*
    "RTX A6000": 154.8e12,  # NVIDIA Ampere GA102 GPU Architecture whitepaper, appendix: fp32 accumulate at full rate
    "RTX 5090": 209.5e12,  # NVIDIA RTX Blackwell GPU Architecture whitepaper, appendix: fp32 accumulate 209.5 | 419*
    "RTX 4090": 165.2e12,  # NVIDIA Ada GPU Architecture whitepaper, appendix: fp32 accumulate 165.2 | 330.4* (fp16: 330.3)
    "RTX 3090": 71e12,  # NVIDIA Ampere GA102 whitepaper, appendix: fp32 accumulate 71 | 142* (fp16 accumulate: 142)
}
# GPUs without bf16 tensor cores (compute capability < 8.0; --dtype auto picks fp16 there): fp16 peaks.
PEAK_FP16_ONLY_FLOPS = {
    "V100S": 130e12,  # NVIDIA V100S data sheet: Tensor Performance 130 TFLOPS
    "V100-PCIE": 112e12,  # NVIDIA V100 Tensor Core GPU data sheet: PCIe 112 TFLOPS
    "V100": 125e12,  # same data sheet: SXM2 125 TFLOPS
    "Tesla T4": 65e12,  # NVIDIA T4 data sheet: Mixed Precision (FP16/FP32) 65 TFLOPS
}
# GPT-2 124M reference lines for the plot: the OpenAI checkpoint's HellaSwag acc_norm with
# hellaswag.py's scoring, and its validation loss on FineWeb-Edu's first 100M-token shard as
# build-nanogpt measured it.
GPT2_124M_HELLASWAG = 0.2955
GPT2_124M_VAL_LOSS = 3.2924


def peak_flops(device: torch.device, dtype: torch.dtype | None = None) -> float | None:
    """The device's peak dense FLOP/s for dtype's matmuls (None: --dtype auto's choice), or None
    where there is none to measure against: a CPU or MPS, an unlisted GPU, fp32 (TF32's peak is
    another figure), or bf16 on a GPU that only emulates it."""
    if device.type != "cuda":
        return None
    dtype = choose_dtype("auto", device) if dtype is None else dtype
    tables = {torch.bfloat16: [PEAK_BF16_FLOPS], torch.float16: [PEAK_BF16_FLOPS, PEAK_FP16_ONLY_FLOPS]}.get(dtype, [])
    name = torch.cuda.get_device_name(device)
    for table in tables:
        key = next((key for key in table if key in name), None)
        if key is not None:
            return table[key]
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class MetricsLog:
    """One JSON object per line in {log_dir}/metrics.jsonl, appended and flushed at once; with a
    TensorBoard writer, the numbers of the train and eval records are mirrored into it."""

    def __init__(self, log_dir: Path, tensorboard=None):
        self.path = log_dir / "metrics.jsonl"
        self.tensorboard = tensorboard  # a torch.utils.tensorboard.SummaryWriter

    def write(self, record_type: str, **fields_):
        with open(self.path, "a") as f:
            f.write(json.dumps({"type": record_type, "time": round(time.time(), 3), **fields_}) + "\n")
        if self.tensorboard is not None and record_type in ("train", "eval"):
            for key, value in fields_.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{record_type}/{key}", value, fields_["step"])


def tensorboard_writer(log_dir: Path, start_step: int):
    """A SummaryWriter on {log_dir}/tensorboard. After a resume, TensorBoard hides the events the
    previous launch logged past the checkpoint (purge_step): the steps run again replace them."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir / "tensorboard", purge_step=start_step + 1 if start_step else None)


def check_tensorboard_installed():
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError as e:
        raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard (or drop --tensorboard)") from e


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def latest_per_step(records: list[dict], record_type: str) -> list[dict]:
    """Records of one type, one per step: after a resume, the re-run steps replace the lost ones."""
    by_step = {r["step"]: r for r in records if r["type"] == record_type}
    return [by_step[step] for step in sorted(by_step)]


def plot_metrics(log_dir: Path) -> Path:
    """Redraw {log_dir}/loss.png from metrics.jsonl: losses on the left, HellaSwag on the right. A
    run without HellaSwag scores (--no-hellaswag, or its data could not be had) gets the loss panel
    alone rather than an empty one."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a GPU node
    import matplotlib.pyplot as plt

    records = read_metrics(log_dir / "metrics.jsonl")
    train = latest_per_step(records, "train")
    evals = latest_per_step(records, "eval")
    hs = [r for r in evals if r.get("hellaswag_acc_norm") is not None]
    fig, axes = plt.subplots(1, 2 if hs else 1, figsize=(14 if hs else 7, 5), squeeze=False)
    ax_loss = axes[0][0]
    ax_loss.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss", lw=0.8, alpha=0.7)
    val = [r for r in evals if r.get("val_loss") is not None]
    ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss", ms=3)
    headers = [r for r in records if r["type"] == "header"]
    if headers and "fineweb" in str(headers[-1]["config"].get("data", "")):  # the reference holds for FineWeb-Edu only
        ax_loss.axhline(GPT2_124M_VAL_LOSS, color="r", ls="--", label=f"OpenAI GPT-2 124M val loss ({GPT2_124M_VAL_LOSS})")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    if train:
        ax_loss.set_ylim(top=min(max(r["train_loss"] for r in train), 12.0) + 0.2)
    ax_loss.legend()
    if hs:
        ax_hs = axes[0][1]
        ax_hs.plot([r["step"] for r in hs], [r["hellaswag_acc_norm"] for r in hs], "o-", label="HellaSwag acc_norm", ms=3)
        ax_hs.axhline(GPT2_124M_HELLASWAG, color="r", ls="--", label=f"OpenAI GPT-2 124M ({GPT2_124M_HELLASWAG})")
        ax_hs.axhline(0.25, color="gray", ls=":", label="chance (0.25)")
        ax_hs.set(xlabel="step", ylabel="accuracy", title="HellaSwag")
        ax_hs.legend()
    fig.tight_layout()
    out = log_dir / "loss.png"
    tmp = out.with_name("loss.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# -----------------------------------------------------------------------------
# Checkpoints


def rng_state() -> dict:
    """Every random generator's state, as plain Python values: they pass through all_gather_object
    and torch.load(weights_only=True) alike."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes()  # this rank's current device
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state["cuda"]), dtype=torch.uint8))


def save_checkpoint(path: Path, checkpoint: dict):
    """Write to a temporary name, flush it to disk, then rename (fineweb.write_atomic): a crash
    mid-save, or a machine that dies after it, never destroys the last good checkpoint nor leaves
    a truncated one under its final name."""
    write_atomic(path, lambda file: torch.save(checkpoint, file))


def save_sharded_checkpoint(path: Path, model, optimizer, train_state: dict, master: bool):
    """A torch.distributed.checkpoint folder: every rank writes its shards of the model and optimizer
    state, rank 0 the non-tensor train state beside them. Written as {path}.tmp, renamed when complete."""
    import torch.distributed.checkpoint as dcp  # imported here: train_gpt2 is imported by every script
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    if master and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that crashed
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
    if master:  # dcp.save returns once every rank's shards and the metadata are on disk (it fsyncs them)
        save_checkpoint(tmp / TRAIN_STATE_FILE, train_state)
        if path.exists():  # this step was saved before, by a run since resumed from an older checkpoint
            replaced = path.with_name(path.name + ".replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(path, replaced)
            os.replace(tmp, path)
            shutil.rmtree(replaced)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)


def prune_checkpoints(log_dir: Path, keep_last: int):
    """Delete all but the newest keep_last steps' checkpoints, of both kinds."""
    checkpoints = resumable_checkpoints(log_dir)
    kept_steps = sorted({checkpoint_step(p) for p in checkpoints})[-keep_last:]
    for old in checkpoints:
        if checkpoint_step(old) not in kept_steps:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def remove_partial_checkpoints(log_dir: Path) -> list[Path]:
    """Delete what crashed saves left (ckpt_*.tmp): never complete, never resumed from, often gigabytes."""
    partial = sorted(log_dir.glob("ckpt_[0-9]*.tmp"))
    for path in partial:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return partial


# What every checkpoint holds besides the tensors; a .pt file holds "model" and "optimizer" too.
TRAIN_STATE_KEYS = {"model_config", "step", "tokens_seen", "train_loader", "rng", "config"}


def load_checkpoint(path: Path) -> dict:
    """A .pt checkpoint's contents, or a .dcp folder's train state (its tensors are read by
    load_sharded_state once the model is built)."""
    try:
        checkpoint = read_checkpoint_state(path)
    except ValueError as e:
        raise TrainError(f"{e}; pass another with --resume PATH") from e
    required = TRAIN_STATE_KEYS if path.is_dir() else TRAIN_STATE_KEYS | {"model", "optimizer"}
    missing = required - set(checkpoint)
    if missing:
        file = path / TRAIN_STATE_FILE if path.is_dir() else path
        raise TrainError(f"{file} is not a train_gpt2.py checkpoint (missing {sorted(missing)})")
    return checkpoint


def load_sharded_state(path: Path, model, optimizer):
    """Fill the model and optimizer from a .dcp folder. torch.distributed.checkpoint reshards on
    load, so the model may be sharded over any number of ranks (FSDP) or whole (DDP, one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # the layout to read into, in place
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        with warnings.catch_warnings():
            # One process reading a whole checkpoint (a conversion, or a resume without torchrun) is intended.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=path)
    except dcp.CheckpointException as e:  # a BaseException, holding every failed rank's error
        rank, (error, _) = next(iter(e.failures.items()))
        reason = f"{type(error).__name__}: {error}".rstrip(": ")
        raise TrainError(f"cannot read checkpoint {path} (rank {rank}: {reason}); it may be damaged or incomplete: "
                         "pass another with --resume PATH") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_whole_state_into_sharded(checkpoint: dict, model, optimizer):
    """A .pt checkpoint's whole model and optimizer state into an FSDP-sharded model: each rank
    keeps its own shards of it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    # optimizer.state_dict() numbers the parameters in param_groups order; set_state_dict wants names.
    names = {id(param): name for name, param in model.named_parameters()}
    order = [names[id(param)] for group in optimizer.param_groups for param in group["params"]]
    saved = checkpoint["optimizer"]
    optimizer_state = {
        "state": {order[index]: state for index, state in saved["state"].items()},
        "param_groups": [{**group, "params": [order[index] for index in group["params"]]} for group in saved["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=checkpoint["model"], optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        return newest_readable_checkpoint(cfg.log_dir)
    path = Path(cfg.resume)
    if path.is_file() or (path.is_dir() and is_complete_sharded_checkpoint(path)):
        return path
    if path.is_dir():
        raise TrainError(f"--resume {cfg.resume}: not a complete checkpoint folder (it lacks .metadata or "
                         f"{TRAIN_STATE_FILE}); pass another, or 'auto'")
    raise TrainError(f"--resume {cfg.resume}: no such checkpoint (use 'auto' or 'none', a ckpt_*.pt file or a ckpt_*.dcp folder)")


def newest_readable_checkpoint(log_dir: str | os.PathLike) -> Path | None:
    """--resume auto's choice: the newest complete checkpoint whose train state can be read. One that
    cannot (cut short when the machine died mid-write) is reported and passed over, never deleted."""
    for path in reversed(resumable_checkpoints(log_dir)):
        try:
            read_checkpoint_state(path, mmap=True)  # mmap: a whole .pt file is not read twice
            return path
        except ValueError as e:
            print(f"warning: --resume auto passes over {path}: {e}", file=sys.stderr)
    return None


def choose_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from. A fresh run never starts in a folder holding another run's
    checkpoints, a resumed one never among checkpoints newer than its own, and a restarted worker
    never replays a step that failed with a non-finite loss."""
    resume_path = resolve_resume(cfg)
    checkpoints = resumable_checkpoints(cfg.log_dir)
    if resume_path is None and checkpoints:
        if cfg.resume == "auto":
            raise TrainError(f"no checkpoint in {cfg.log_dir} can be read (see the warnings above): pass an older one "
                             "elsewhere with --resume PATH, or start a new run with another --log-dir")
        raise TrainError(f"{cfg.log_dir} already holds checkpoints (newest {checkpoints[-1].name}); continue that run "
                         "with --resume auto, or start a new one with another --log-dir")
    if resume_path is not None and cfg.resume != "auto":
        try:
            step = read_checkpoint_state(resume_path, mmap=True).get("step", 0)
        except ValueError as e:
            raise TrainError(f"{e}; pass another with --resume PATH") from e
        newer = [p.name for p in checkpoints if checkpoint_step(p) > step]
        if newer:
            raise TrainError(
                f"{cfg.log_dir} holds checkpoints newer than {resume_path} (step {step}): {', '.join(newer)}. This run "
                f"would save its own among them, and --resume auto and --keep-last would then mix the two runs: move "
                f"them out of {cfg.log_dir}, or continue in another --log-dir"
            )
    marker = Path(cfg.log_dir) / NONFINITE_FILE
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0 and marker.is_file():
        failure = json.loads(marker.read_text())
        if failure.get("newest_checkpoint") == (resume_path.name if resume_path else None):
            raise TrainError(
                f"step {failure['step']} had a non-finite loss ({failure['loss']}) or gradient norm ({failure['grad_norm']}) "
                f"after {resume_path.name if resume_path else 'the start'}, and a restart from there would repeat that exactly: torchrun's restarts are for "
                f"failing machines, not a diverging run. Lower --max-lr or check the data, then launch again ({marker} "
                "records the failure; the next checkpoint saved removes it)"
            )
    return resume_path


def convert_checkpoint(folder: Path, out: Path | None = None) -> Path:
    """Rewrite a .dcp folder as one .pt file with the same contents: the whole model and optimizer
    state, as a single process holds them. Runs in one process, on CPU."""
    if not (folder.is_dir() and is_complete_sharded_checkpoint(folder)):
        raise TrainError(f"--convert-checkpoint {folder}: not a complete ckpt_*.dcp folder (train_gpt2.py --fsdp writes them)")
    out = Path(out) if out else folder.with_suffix(".pt")
    if out.exists():
        raise TrainError(f"--out {out} already exists; remove it or pass another --out")
    checkpoint = load_checkpoint(folder)
    model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    run = checkpoint["config"]  # a checkpoint's config may predate fields added since: those take their defaults
    optimizer = build_optimizer(TrainConfig(**{f.name: run[f.name] for f in fields(TrainConfig) if f.name in run}), model,
                                torch.device("cpu"))
    load_sharded_state(folder, model, optimizer)
    save_checkpoint(out, {**checkpoint, "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return out


class StopSignals:
    """While active, a first SIGTERM (a preemption; torchrun forwards it to its workers) or SIGINT
    (Ctrl-C) only records that it came: the training loop stops after the current step, with a
    checkpoint. A second SIGINT (Ctrl-C again) acts as it would have without this handler (stopping
    at once, the last complete checkpoint intact), so a stuck run can still be interrupted. Further
    SIGTERMs are ignored: one preemption often arrives twice (SLURM signals every process of the
    job and torchrun forwards its own copy), and the checkpoint is what it is for. Signals the
    process was started with ignored (SIGINT in a background job) stay ignored.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool):
        self.announce = announce
        self.received: int | None = None

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGTERM:
            return
        if self.received is not None:
            previous = self._previous[signum]
            if callable(previous):  # Python's own SIGINT handler: KeyboardInterrupt
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.received = signum
        if self.announce:
            # os.write, not print: a handler can run in the middle of another print to the same stream.
            os.write(sys.stderr.fileno(), f"received {signal.Signals(signum).name}: stopping after this step, with a "
                                          "checkpoint (Ctrl-C again stops at once)\n".encode())

    def __enter__(self):
        self._previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        for signum, previous in self._previous.items():
            if previous is not signal.SIG_IGN:
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# -----------------------------------------------------------------------------
# Fitting the run to the hardware, once, before step 1: compile, loss scaling, the micro-batch


def choose_compile(flag: bool | None, device: torch.device) -> tuple[bool, str | None]:
    """--compile's choice, and a line saying why when the default turned it off. The default is on
    only where inductor makes GPU kernels: CUDA with Triton installed (it is not on Windows, and
    not in some CUDA builds of torch)."""
    if flag is not None:
        return flag, None
    if device.type != "cuda":
        return False, f"torch.compile is off on {device.type}: it gains little there for its minutes of compiling; --compile forces it"
    if importlib.util.find_spec("triton") is None:
        return False, ("torch.compile is off: Triton, which it compiles GPU kernels with, is not installed (pip install "
                       "triton; on Windows triton-windows); --compile forces it")
    return True, None


def make_grad_scaler(dtype: torch.dtype, device: torch.device, sharded: bool):
    """Loss scaling for fp16, whose small gradients underflow to zero otherwise; the scaler skips
    a step whose gradients overflowed and lowers the scale. bf16 and fp32 need none: a disabled
    scaler passes everything through unchanged. FSDP's scaler agrees on overflow across the ranks,
    each of which sees only its shard of the gradients."""
    enabled = dtype == torch.float16
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=enabled)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def is_out_of_memory(error: BaseException | None) -> bool:
    """An out-of-memory error, raised directly or wrapped (torch.compile wraps errors of its own runs)."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def run_micro_step(model, micro_batch: int, seq_len: int, device: torch.device, dtype: torch.dtype):
    """One training micro-step, forward and backward as the run computes them, on a batch of zeros.
    What fit_micro_batch tries at each size (tests replace it to run out of memory above a size)."""
    # Inputs and targets as training's batches come (two views of one buffer, copied to the
    # device), so that torch.compile's guards on strides and aliasing let training reuse this graph.
    buf = torch.zeros((micro_batch, seq_len + 1), dtype=torch.long)
    x, y = buf[:, :-1].to(device), buf[:, 1:].to(device)
    with autocast_context(device, dtype):
        _, loss = model(x, y)
    loss.backward()


def micro_step_fits(model, micro_batch: int, cfg: TrainConfig, device: torch.device, dtype: torch.dtype,
                    reserve_bytes: int) -> bool:
    """Whether a micro-step of this size fits beside reserve_bytes (the optimizer state and DDP's
    gradient buckets, allocated only at the first real step). Memory is freed after the try."""
    fits, reserve = True, None
    try:
        if device.type == "cuda":
            reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device)
        run_micro_step(model, micro_batch, cfg.seq_len, device, dtype)
        synchronize(device)
    except Exception as e:  # noqa: BLE001  (anything else is raised again below)
        if not is_out_of_memory(e):
            raise
        fits = False
    del reserve
    model.zero_grad(set_to_none=True)
    gc.collect()  # the failed try's tensors, held by its traceback until now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return fits


def fit_micro_batch(model, cfg: TrainConfig, candidates: list[int], device: torch.device, dtype: torch.dtype,
                    reserve_bytes: int, use_compile: bool) -> int:
    """The largest candidate whose micro-step fits on this rank (halving after each that did not),
    agreed by all ranks: the smallest of their choices. Also runs the first compile, so that a
    compiler that cannot work here stops the run now, in one line, not after the first evaluation."""
    fitted, tried_below = 0, math.inf
    for size in candidates:
        if size > tried_below // 2:
            continue
        try:
            fits = micro_step_fits(model, size, cfg, device, dtype, reserve_bytes)
        except Exception as e:  # noqa: BLE001
            from torch._dynamo.exc import TorchDynamoException
            from torch._inductor.exc import InductorError

            if use_compile and isinstance(e, (TorchDynamoException, InductorError)):
                raise TrainError(f"torch.compile failed at the first step ({type(e).__name__}: {one_line(e, 300)}); "
                                 "run again with --no-compile") from None
            raise
        if fits:
            fitted = size
            break
        tried_below = size
    if dist.is_available() and dist.is_initialized():
        agreed = torch.tensor([fitted], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        fitted = int(agreed.item())
    return fitted


def memory_text(device: torch.device) -> str:
    """'this 24 GB GPU', for the messages about fitting."""
    if device.type != "cuda":
        return f"this {device.type}"
    # In GiB, which is what a card's "24 GB" means (24,564 MiB on an RTX 4090).
    return f"this {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GB GPU"


def choose_micro_batch(model, cfg: TrainConfig, dist_info: Distributed, device: torch.device, dtype: torch.dtype,
                       reserve_bytes: int, use_compile: bool) -> int:
    """--micro-batch auto's choice, or the size given, after checking that it fits."""
    auto = cfg.micro_batch == "auto"
    largest = AUTO_MICRO_BATCH_LARGEST.get(device.type, 8)
    candidates = micro_batch_candidates(cfg, dist_info.world_size, largest) if auto else [cfg.micro_batch]
    size = fit_micro_batch(model, cfg, candidates, device, dtype, reserve_bytes, use_compile)
    if size == 0 and auto:
        raise TrainError(f"not even micro-batch 1 x {cfg.seq_len} fits {memory_text(device)} beside the optimizer state: "
                         f"use a smaller --seq-len, --fsdp to shard the model over several GPUs, or a smaller --model")
    if size == 0:
        raise TrainError(f"--micro-batch {cfg.micro_batch} x {cfg.seq_len} does not fit {memory_text(device)} beside the "
                         "optimizer state: pass a smaller --micro-batch, or --micro-batch auto to find the largest that fits")
    return size


@contextlib.contextmanager
def out_of_memory_stop(what: str, hint: str, log_dir: Path):
    """Turn an out-of-memory error (a longer evaluation, fragmentation late in a run) into one line
    naming the flag to lower and the checkpoint to continue from, which the error left untouched."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        if not is_out_of_memory(e):
            raise
        newest = resumable_checkpoints(log_dir)
        resume = f"continue from {newest[-1]} with --resume auto" if newest else "no checkpoint was saved yet"
        raise TrainError(f"out of memory {what}: {hint}; {resume}") from None


def check_finite(step: int, loss: float, grad_norm: float, scaler, log_dir: Path, master: bool) -> bool:
    """Stop on a non-finite loss, or on a non-finite gradient norm unless fp16's loss scaler skipped
    that step (an overflow of the scaled gradients, which it answers by lowering the scale). Returns
    whether the step was skipped. The run stops without saving: the last good checkpoint stays."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return False
    if math.isfinite(loss) and scaler.is_enabled():
        return True
    newest = resumable_checkpoints(log_dir)
    if master:  # read by choose_checkpoint when torchrun restarts the workers
        failure = {"step": step, "loss": loss, "grad_norm": grad_norm, "newest_checkpoint": newest[-1].name if newest else None}
        (log_dir / NONFINITE_FILE).write_text(json.dumps(failure) + "\n")
    raise TrainError(
        f"step {step}: the loss is {loss} and the gradient norm {grad_norm}; stopped without saving, so the last good "
        f"checkpoint ({newest[-1] if newest else 'none yet'}) is untouched. Lower --max-lr or check the data"
    )


def load_grad_scaler_state(scaler, checkpoint: dict, print0):
    """The loss scale a checkpoint's fp16 run had reached, so that the resumed run continues exactly."""
    saved = checkpoint.get("grad_scaler")
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
    elif scaler.is_enabled() or saved:
        print0(f"note: the checkpoint's run had --dtype {checkpoint['config'].get('dtype', 'auto')}; the loss scaling "
               f"of this {'fp16 ' if scaler.is_enabled() else ''}run starts fresh")


# -----------------------------------------------------------------------------
# Evaluation while training


@torch.no_grad()
def evaluate_val_loss(model, loader: DataLoader, steps: int, device: torch.device, dtype: torch.dtype | None = None) -> float:
    """Mean loss over `steps` validation micro-batches per rank, averaged over ranks; the same batches each time."""
    model.eval()
    loader.reset()
    total = 0.0
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast_context(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
    model.train()
    summed, count = all_reduce_sum([total, steps], device)
    return summed / count


def data_tokenizer(cfg: TrainConfig):
    """The tokenizer the shards were made with, and its tokenizer.json's text (None for GPT-2's),
    which checkpoints carry so that generate.py, hellaswag.py and upload_hf.py use it too.

    meta.json records the tokenizer's path and the hash of its vocabulary; --tokenizer replaces
    the path (shards from the Hub, a moved file), never the vocabulary.
    """
    record = read_meta(cfg.data)["tokenizer"]
    path = cfg.tokenizer or record.get("path")
    try:
        enc = get_tokenizer(path)
    except (OSError, ValueError) as e:
        raise TrainError(f"{cfg.data} was tokenized with {record['name']}, which cannot be loaded ({e}): pass its tokenizer.json as --tokenizer") from e
    if vocab_sha256(enc) != record["vocab_sha256"]:
        raise TrainError(f"{path or 'GPT-2'}'s tokenizer is not {record['name']}, which {cfg.data} was tokenized with: "
                         "pass that one's tokenizer.json as --tokenizer")
    return enc, None if path is None else Path(path).read_text(encoding="utf-8")


def load_initial_weights(cfg: TrainConfig, enc, checkpoint: dict | None, print0=print) -> tuple[GPTConfig, GPT | None, dict | None]:
    """The model's config; for a fine-tune (--init-from) also the source's weights, padded as
    --pad-vocab says, and the source's record (its name, and sha256 where it is a file) for the
    log, the checkpoints and the model card.

    Only the weights come from the source: the optimizer, data position and step start fresh. A
    resumed fine-tune reads its checkpoint instead, whose architecture wins, and the source is not
    read again: so `--resume auto --init-from X` starts from X while --log-dir holds no checkpoint,
    and from the newest checkpoint after that (a preempted fine-tune continues exactly).
    """
    pad_vocab_multiple = 64 if cfg.pad_vocab else 1
    recorded = checkpoint.get("init_from") if checkpoint else None
    if checkpoint and (cfg.init_from or recorded):
        model_config = GPTConfig.from_dict({**checkpoint["model_config"], "pad_vocab_multiple": pad_vocab_multiple})
        if cfg.init_from:
            print0(f"note: resuming the fine-tune from its checkpoint; --init-from {cfg.init_from} is not read")
        model, source = None, recorded
    elif not cfg.init_from:
        return GPTConfig.from_preset(cfg.model, vocab_size=enc.n_vocab, pad_vocab_multiple=pad_vocab_multiple), None, None
    else:
        from safetensors import SafetensorError  # a damaged model.safetensors

        try:
            model = load_model(cfg.init_from)
        except (OSError, ValueError, RuntimeError, MemoryError, SafetensorError) as e:
            raise TrainError(f"--init-from {cfg.init_from}: {one_line(e)}") from None
        model_config = model.config
        if model_config.vocab_size != enc.n_vocab:
            raise TrainError(f"--init-from {cfg.init_from} has a vocabulary of {model_config.vocab_size:,} tokens, but {cfg.data} "
                             f"was tokenized with {enc.name}'s {enc.n_vocab:,}: tokenize the data with the model's tokenizer "
                             "(fineweb.py --tokenizer)")
        try:
            source_enc = load_tokenizer(cfg.init_from, model_config.vocab_size)
        except (OSError, ValueError) as e:
            raise TrainError(f"--init-from {cfg.init_from}: {one_line(e)}") from None
        if vocab_sha256(source_enc) != vocab_sha256(enc):
            raise TrainError(f"--init-from {cfg.init_from} was trained with another tokenizer ({source_enc.name}) than {cfg.data} "
                             f"was tokenized with ({enc.name}): tokenize the data with the model's tokenizer (fineweb.py --tokenizer)")
        if cfg.model is not None and GPTConfig.from_preset(cfg.model, vocab_size=enc.n_vocab) != replace(model_config, pad_vocab_multiple=1):
            raise TrainError(f"--model {cfg.model} is not the architecture of --init-from {cfg.init_from} ({model_config.n_layer} "
                             f"layers, {model_config.n_embd}-dimensional, {model_config.norm}, {model_config.mlp}, block size "
                             f"{model_config.block_size}): leave --model out, the source's architecture is used")
        model = model.set_vocab_padding(pad_vocab_multiple)
        model_config = model.config
        path = Path(cfg.init_from)
        source = {"name": cfg.init_from, "hub_repo": HF_REPO_IDS.get(cfg.init_from) if not path.exists() else None,
                  "sha256": file_sha256(path) if path.is_file() else None}
    if cfg.seq_len > model_config.block_size:
        raise TrainError(f"--seq-len {cfg.seq_len} exceeds the block size {model_config.block_size} of the model of --init-from "
                         f"{cfg.init_from or recorded['name']}: lower --seq-len to at most {model_config.block_size}")
    return model_config, model, source


def text_samples(raw_model: GPT, cfg: TrainConfig, device: torch.device, enc, dtype: torch.dtype | None = None) -> list[str]:
    """A few sampled continuations of the sample prompt, seeded so runs can be compared.

    Under FSDP every rank calls this (each forward all-gathers the weights), and generation runs to
    sample_tokens without stopping early at <|endoftext|>, so that all ranks make the same number of
    forward passes whatever they sample; the text is cut at <|endoftext|> all the same.
    """
    if cfg.num_samples == 0:  # on every rank alike, so FSDP's ranks still make the same forward passes
        return []
    prompt = torch.tensor([enc.encode_ordinary(cfg.sample_prompt)] * cfg.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    raw_model.eval()
    with autocast_context(device, dtype):
        out = raw_model.generate(prompt, cfg.sample_tokens, stop_token=None if cfg.fsdp else enc.eot_token, top_k=50,
                                 generator=generator)
    raw_model.train()
    return [cfg.sample_prompt + decode_completion(row[prompt.size(1):], enc=enc) for row in out.tolist()]


def hellaswag_examples(cfg: TrainConfig, dist_info: Distributed, device: torch.device) -> list[dict] | None:
    """The HellaSwag examples to evaluate, or None (with one clear line) when the data is absent.

    Without --hellaswag-data the official file is downloaded once into hellaswag.py's cache, by
    one process per node; a failed download (no internet) disables HellaSwag instead of the run.
    """
    if not cfg.hellaswag:
        return None
    path = Path(cfg.hellaswag_data) if cfg.hellaswag_data else hellaswag.default_data_path()
    if not cfg.hellaswag_data and not path.is_file() and dist_info.local_rank == 0:
        try:
            hellaswag.download(data_flag="--hellaswag-data")
        except (OSError, hellaswag.HellaSwagDataError) as e:
            print(f"hellaswag: download failed ({e})", file=sys.stderr)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    present = all_reduce_sum([float(path.is_file())], device)[0] == dist_info.world_size
    if not present:
        if dist_info.is_master:
            print(f"hellaswag: skipped, {path} is not there (pass --hellaswag-data PATH, or --no-hellaswag)")
        return None
    try:
        examples = list(hellaswag.iterate_examples(path, limit=cfg.hellaswag_limit))
    except ValueError as e:
        raise TrainError(f"--hellaswag-data: {e}") from e
    return examples


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the logged train losses, the last evaluation, and
    the signal that stopped it early (None when it ran to its end)."""
    if cfg.tensorboard:
        check_tensorboard_installed()  # before anything slow, on every rank alike
    check_restartable_launch()
    dist_info, device = setup_distributed(cfg.device)
    finished = False
    try:
        # `closing` holds what must be closed however the run ends (the TensorBoard writer).
        with StopSignals(announce=dist_info.is_master) as stop_signals, contextlib.ExitStack() as closing:
            result = _train(cfg, dist_info, device, stop_signals, closing)
        finished = True
        return result
    finally:
        cleanup_distributed(finished)


def check_restartable_launch():
    """Refuse a torchrun launch whose restarts would hang.

    torchrun (torch 2.13) lends its rendezvous TCP store to the workers and keeps it across
    restarts, without separating one attempt's keys from the next: restarted workers can read the
    previous attempt's addresses and hang in init_process_group (pytorch/pytorch#135712). With
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, every attempt gets a fresh store.
    """
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0))
    if restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise TrainError(f"torchrun --max-restarts {restarts} needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its "
                         "environment, or restarted workers can hang (pytorch/pytorch#135712): "
                         "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, then launch torchrun again")


def shard_model(model: GPT, dtype: torch.dtype):
    """FSDP2: each transformer block is one unit whose weights are all-gathered just before its
    forward (and backward) and freed after, so only one block is ever whole on a GPU; the root unit
    holds the embeddings (tied to the output layer) and the final norm.

    `dtype` is the run's autocast dtype. Under bf16 the sharded model computes what DDP computes
    under autocast, with the same roundings: the weights autocast casts to bf16 (the Linear
    layers') are all-gathered in bf16, half the traffic of fp32, and what autocast keeps in fp32
    stays fp32.
    Every forward pass must then run under bf16 autocast (a Linear layer's bf16 weight does not
    take an fp32 input). Master weights, gradient reductions and the optimizer are fp32 always.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    fp32 = MixedPrecisionPolicy()
    # fp16 (older GPUs, with a GradScaler) keeps fp32 parameters, which autocast casts as under
    # DDP: the loss scale is then the only fp16 machinery, as in a DDP run.
    bf16_weights = dtype == torch.bfloat16
    blocks = fp32
    if bf16_weights:
        # cast_forward_inputs=False: FSDP's default would cast each block's input, the residual
        # stream, to bf16; autocast keeps it fp32 (fp32 + a bf16 branch output is fp32).
        blocks = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in model.transformer.h:
        if bf16_weights:
            # The norms' gains and biases stay fp32, as autocast leaves them: in bf16 they would
            # be rounded to steps of 1/128 near 1, and CPU autocast would not cast them back. One small
            # all-gather per block for both.
            fully_shard([block.ln_1, block.ln_2], mp_policy=fp32)
        fully_shard(block, mp_policy=blocks)
    # The root stays fp32: the embedding's output, where the residual stream starts, is fp32 as
    # under DDP, and autocast casts the tied output layer's weight to bf16 for its matmul.
    fully_shard(model, mp_policy=fp32)
    # FSDP warns when a root returns a view; GPT returns logits[..., :vocab_size] (a view, when the
    # vocabulary is padded) and training backpropagates through the loss only, never the logits.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def _train(cfg: TrainConfig, dist_info: Distributed, device: torch.device, stop_signals: StopSignals,
           closing: contextlib.ExitStack) -> dict:
    master = dist_info.is_master
    print0 = print if master else (lambda *a, **k: None)
    if cfg.fsdp and not dist.is_initialized():
        raise TrainError("--fsdp shards the model over the processes that torchrun starts: launch with torchrun "
                         "(--nproc_per_node=1 works too), or drop --fsdp")
    # The vocabulary is the data's: GPT-2's 50257 tokens, or a tokenizer.json's (train_tokenizer.py).
    enc, tokenizer_json = data_tokenizer(cfg)
    log_dir = Path(cfg.log_dir)

    # Rank 0 chooses the checkpoint, so that every rank resumes from the same one. With several
    # nodes, each must see it: the log dir has to be on storage they share.
    resume_path = decide_on_master(lambda: choose_checkpoint(cfg), dist_info)
    if resume_path:
        check_visible_to_every_rank(resume_path, dist_info, device)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    # A preset's architecture, or a fine-tune's source's (--init-from) with its weights.
    model_config, initial_model, init_source = load_initial_weights(cfg, enc, checkpoint, print0)
    plan = make_plan(cfg, dist_info.world_size, model_config.block_size)
    # Compared as configs, so that checkpoints written before a config field existed (with its default) still fit.
    if checkpoint and GPTConfig.from_dict(checkpoint["model_config"]) != model_config:
        raise TrainError(
            f"{resume_path} holds a model with config {checkpoint['model_config']}, but {'--model ' + cfg.model if cfg.model else 'the fine-tune'} "
            f"--{'' if cfg.pad_vocab else 'no-'}pad-vocab on {cfg.data}'s {enc.n_vocab} tokens asks for {model_config.to_dict()}; "
            "pass the flags it was trained with"
        )
    if checkpoint:
        recorded = checkpoint.get("tokenizer_json")  # None, or absent in older checkpoints: GPT-2's
        if vocab_sha256(get_tokenizer() if recorded is None else tokenizer_from_json(recorded)) != vocab_sha256(enc):
            raise TrainError(f"{resume_path} was trained with another tokenizer than {cfg.data}'s ({enc.name}): "
                             "resume on the data it was trained on")

    if checkpoint and checkpoint["config"].get("optimizer", "adamw") != cfg.optimizer:
        trained_with = checkpoint["config"].get("optimizer", "adamw")
        raise TrainError(f"{resume_path} was trained with --optimizer {trained_with}, whose state this run cannot "
                         f"continue: resume with --optimizer {trained_with}")
    if cfg.fsdp and cfg.micro_batch == "auto":
        raise TrainError("--micro-batch auto does not work with --fsdp yet (a rank running out of memory in a try would "
                         "leave the others waiting for it): pass --micro-batch N")
    # The data is checked now, not after the first compile: the shards, and that they hold a batch
    # of a given micro-batch (auto's choice is checked when it is made).
    for split in ("train", "val"):
        DataLoader(cfg.data, split, 1 if cfg.micro_batch == "auto" else cfg.micro_batch, cfg.seq_len, dist_info.rank,
                   dist_info.world_size, cfg.seed, shuffle=False)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the matmuls that autocast leaves in fp32
    dtype = choose_dtype(cfg.dtype, device)
    use_compile, compile_note = choose_compile(cfg.compile, device)
    if compile_note:
        print0(compile_note)
    raw_model = (initial_model if initial_model is not None else GPT(model_config, seed=cfg.seed)).to(device)
    num_params, flops_per_token = raw_model.num_params(), raw_model.flops_per_token(cfg.seq_len)
    if cfg.fsdp:
        shard_model(raw_model, dtype)  # before the optimizer is built: it must hold the sharded parameters
    # dynamic=False: each micro-batch size fit_micro_batch tries gets a graph of its own, and the one
    # that fits is the one training runs, not a slower graph generalised over batch sizes.
    model = torch.compile(raw_model, dynamic=False) if use_compile else raw_model
    if not cfg.fsdp:  # sharded, every micro-step waits on the other ranks: a rank's failed try would hang them
        # AdamW's two moments and DDP's gradient buckets (fp32, one number per parameter each) are
        # allocated at the first real step: the tries leave room for them.
        reserve_bytes = 4 * sum(p.numel() for p in raw_model.parameters()) * (2 + dist_info.enabled)
        micro_batch = choose_micro_batch(model, cfg, dist_info, device, dtype, reserve_bytes, use_compile)
        plan = make_plan(cfg, dist_info.world_size, model_config.block_size, micro_batch)
    optimizer = build_optimizer(cfg, raw_model, device)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]  # --max-lr's, and --muon-lr's for Muon's groups
    scaler = make_grad_scaler(dtype, device, sharded=cfg.fsdp)
    train_loader = DataLoader(cfg.data, "train", plan.micro_batch, cfg.seq_len, dist_info.rank, dist_info.world_size, cfg.seed, shuffle=True)
    # Validation reads the same windows for the whole run, also after a resume that fits another micro-batch.
    val_micro_batch = checkpoint.get("val_micro_batch", checkpoint["config"]["micro_batch"]) if checkpoint else plan.micro_batch
    val_loader = DataLoader(cfg.data, "val", val_micro_batch, cfg.seq_len, dist_info.rank, dist_info.world_size, cfg.seed, shuffle=False)
    start_step, tokens_seen = 0, 0
    torch.manual_seed(cfg.seed + dist_info.rank)  # dropout masks differ between ranks
    if checkpoint:
        if resume_path.is_dir():
            load_sharded_state(resume_path, raw_model, optimizer)
        elif cfg.fsdp:
            load_whole_state_into_sharded(checkpoint, raw_model, optimizer)
        else:
            raw_model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        train_loader.load_state_dict(checkpoint["train_loader"])
        load_grad_scaler_state(scaler, checkpoint, print0)
        start_step, tokens_seen = checkpoint["step"], checkpoint["tokens_seen"]
        rng_states = checkpoint["rng"]
        if len(rng_states) == dist_info.world_size:
            set_rng_state(rng_states[dist_info.rank])
        else:
            print0(f"note: {resume_path} was saved by {len(rng_states)} processes, this run has {dist_info.world_size}; random states start fresh")
        changed = {k: (v, getattr(cfg, k)) for k, v in checkpoint["config"].items()
                   if k not in ("resume", "device", "stop_at_step", "log_every", "tensorboard") and getattr(cfg, k, v) != v}
        if changed:
            print0(f"note: flags differ from the checkpoint's (was, now): {changed}")

    eval_model = model  # compiled but not DDP-wrapped: evaluation needs no gradient sync
    if dist_info.enabled and not cfg.fsdp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    examples = hellaswag_examples(cfg, dist_info, device)

    metrics = MetricsLog(log_dir)
    peak = peak_flops(device, dtype)
    if master:
        log_dir.mkdir(parents=True, exist_ok=True)
        for partial in remove_partial_checkpoints(log_dir):
            print0(f"removed {partial}, left by a save that did not finish")
        if cfg.tensorboard:
            metrics.tensorboard = closing.enter_context(tensorboard_writer(log_dir, start_step))
        header = dict(
            config=asdict(cfg), model_config=model_config.to_dict(), git_commit=git_commit(), torch=torch.__version__,
            python=platform.python_version(), numpy=np.__version__, device=device_name(device), world_size=dist_info.world_size,
            grad_accum_steps=plan.grad_accum_steps, micro_batch=plan.micro_batch, dtype=dtype_name(dtype),
            num_params=num_params, compile=use_compile, init_from=init_source,
            resumed_from=str(resume_path) if resume_path else None, start_step=start_step,
            # torchrun counts the times it restarted the workers (--max-restarts) in this variable.
            restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        )
        metrics.write("header", **header)
        print0(json.dumps(header, indent=1))
        if cfg.micro_batch == "auto":
            print0(f"micro-batch {plan.micro_batch} x {cfg.seq_len} fits {memory_text(device)}; "
                   f"{plan.grad_accum_steps} accumulation steps")
        print0(f"total batch {cfg.total_batch:,} tokens = {plan.micro_batch} x {cfg.seq_len} x {dist_info.world_size} ranks "
               f"x {plan.grad_accum_steps} accumulation steps, {dtype_name(dtype)}")

    def evaluate(step: int) -> dict:
        with out_of_memory_stop(f"evaluating at step {step}", f"lower --micro-batch (now {plan.micro_batch}; validation "
                                "batches have its size), or pass --no-hellaswag", log_dir):
            val_loss = evaluate_val_loss(eval_model, val_loader, cfg.val_steps, device, dtype)
            record = {"step": step, "val_loss": val_loss, "hellaswag_acc_norm": None, "hellaswag_acc": None}
            if examples:
                with autocast_context(device, dtype):
                    result = hellaswag.evaluate(raw_model, examples, device, rank=dist_info.rank,
                                                world_size=dist_info.world_size, enc=enc)
                record.update(hellaswag_acc_norm=result.acc_norm, hellaswag_acc=result.acc, hellaswag_n=result.n)
            samples = text_samples(raw_model, cfg, device, enc, dtype) if master or cfg.fsdp else []
        if master:
            metrics.write("eval", **record)
            hs = "" if record["hellaswag_acc_norm"] is None else f" | hellaswag acc_norm {record['hellaswag_acc_norm']:.4f}"
            print0(f"step {step:5d} | val loss {val_loss:.4f}{hs}")
            for text in samples:
                metrics.write("sample", step=step, text=text)
                print0(f"sample: {text!r}")
            plot_metrics(log_dir)
        return record

    def save(step: int):
        rng_states = [None] * dist_info.world_size
        if dist_info.enabled:
            dist.all_gather_object(rng_states, rng_state())
        else:
            rng_states = [rng_state()]
        train_state = {
            "format_version": 1, "model_config": model_config.to_dict(), "step": step, "tokens_seen": tokens_seen,
            "train_loader": batches.state_dict(), "rng": rng_states, "config": asdict(cfg),
            "val_loss": last_eval.get("val_loss"), "tokenizer_json": tokenizer_json,
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None, "val_micro_batch": val_loader.micro_batch,
            "init_from": init_source,
        }
        t0 = time.perf_counter()
        if cfg.fsdp:
            path = log_dir / f"ckpt_{step:06d}.dcp"
            save_sharded_checkpoint(path, raw_model, optimizer, train_state, master)
        elif master:
            path = log_dir / f"ckpt_{step:06d}.pt"
            save_checkpoint(path, {**train_state, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict()})
        if master:
            prune_checkpoints(log_dir, cfg.keep_last)
            (log_dir / NONFINITE_FILE).unlink(missing_ok=True)  # a failure recorded before is behind this run now
            print0(f"saved {path} in {time.perf_counter() - t0:.1f}s")
        if dist_info.enabled:
            dist.barrier()

    last_eval = evaluate(0) if start_step == 0 else {}
    end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    batches = DeviceBatches(train_loader, device)
    train_losses, stopped_by = [], None
    for step in range(start_step, end_step):
        t0 = time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        with out_of_memory_stop(f"in step {step + 1}", f"lower --micro-batch (now {plan.micro_batch})", log_dir):
            for micro_step in range(plan.grad_accum_steps):
                x, y = batches.take()
                # DDP all-reduces gradients in backward(); only the last micro-step needs it. FSDP
                # reduce-scatters them at every micro-step, which keeps only a shard of them in memory.
                last_micro_step = micro_step == plan.grad_accum_steps - 1
                sync_context = model.no_sync() if isinstance(model, DDP) and not last_micro_step else contextlib.nullcontext()
                with sync_context:
                    with autocast_context(device, dtype):
                        _, loss = model(x, y)
                    # The mean over the whole batch, not the sum of per-micro-batch means.
                    loss = loss / plan.grad_accum_steps
                    loss_accum += loss.detach()
                    scaler.scale(loss).backward()
                batches.prefetch()  # the host gathers the next batch while the GPU computes this one
        stop_flag = torch.tensor(float(stop_signals.received is not None), device=device)
        if dist_info.enabled:
            # The stop flag rides in the loss's all-reduce: every rank learns whether any rank was
            # signalled, at no extra cost, so all of them stop after the same step.
            reduced = torch.stack([loss_accum, stop_flag])
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)  # gloo has no AVG
            loss_accum, stop_flag = reduced[0] / dist_info.world_size, reduced[1]
        scaler.unscale_(optimizer)  # clipping and the logged norm see the true gradients, not fp16's scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP, replicated on every rank
            grad_norm = grad_norm.full_tensor()
        lr = get_lr(step, cfg)
        for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak_lr * lr / cfg.max_lr  # warm-up and decay scale each group's own peak alike
        scaler.step(optimizer)  # under fp16, skipped when a gradient overflowed
        scaler.update()
        # Read only now, so the GPU never waits for the host between the backward pass and the update.
        loss_value, grad_norm_value = loss_accum.item(), grad_norm.item()
        skipped = check_finite(step + 1, loss_value, grad_norm_value, scaler, log_dir, master)
        synchronize(device)
        dt = time.perf_counter() - t0
        tokens_seen += plan.tokens_per_step
        tokens_per_s = plan.tokens_per_step / dt
        mfu = flops_per_token * tokens_per_s / (peak * dist_info.world_size) if peak else None
        completed = step + 1
        train_losses.append(loss_value)
        if master:
            scaling = {"loss_scale": scaler.get_scale(), "skipped": skipped} if scaler.is_enabled() else {}
            metrics.write("train", step=completed, train_loss=loss_value, lr=lr, grad_norm=grad_norm_value,
                          dt_ms=dt * 1000, tokens_per_s=tokens_per_s, mfu=mfu, tokens_seen=tokens_seen, **scaling)
            if completed % cfg.log_every == 0 or completed == end_step or skipped:
                mfu_text = f" | mfu {mfu:.1%}" if mfu is not None else ""
                skip_text = " | skipped: fp16 gradients overflowed, loss scale lowered" if skipped else ""
                print0(f"step {completed:5d}/{cfg.max_steps} | loss {loss_value:.6f} | lr {lr:.4e} | norm {grad_norm_value:.4f} "
                       f"| dt {dt * 1000:.1f}ms | tok/s {tokens_per_s:,.0f}{mfu_text}{skip_text}")
        if stop_flag.item() > 0 and completed < end_step:
            # No evaluation first: after a preemption notice the time left is short (torchrun
            # waits --shutdown-timeout, 30 s by default, before SIGKILL), and the checkpoint matters.
            save(completed)
            # Ranks that were not signalled themselves stop as if by SIGTERM, the preemption signal.
            stopped_by = stop_signals.received or signal.SIGTERM
            print0(f"stopped after step {completed} on {signal.Signals(stopped_by).name}; continue with --resume auto")
            break
        if completed % cfg.eval_every == 0 or completed == cfg.max_steps:
            last_eval = evaluate(completed)
        if completed % cfg.save_every == 0 or completed == end_step:
            save(completed)
    return {"train_losses": train_losses, "last_eval": last_eval, "start_step": start_step, "stopped_by": stopped_by}


def main(argv=None) -> int:
    """0 when the run ends (or reaches --stop-at-step), 2 on a user error, 128 + the signal's number
    when SIGTERM or SIGINT stopped it early (after saving a checkpoint)."""
    try:
        args = vars(build_parser().parse_args(argv))
        if args["convert_checkpoint"]:
            out = convert_checkpoint(Path(args["convert_checkpoint"]), args["out"])
            print(f"wrote {out}")
            return 0
        if args["out"]:
            raise TrainError("--out goes with --convert-checkpoint")
        result = train(config_from_args(args))
    except (TrainError, ShardError, hellaswag.HellaSwagDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 128 + result["stopped_by"] if result["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
