"""Training throughput of a model preset on the current device: tokens/s, step time, MFU, memory.

    python bench.py                                   # GPT-2 124M, micro-batch 64 x 1024, the full recipe
    python bench.py --ladder                          # each speed-up on top of the previous, as a table
    python bench.py --preset smoke                    # the smoke run's model and batch (CPU regressions)

MFU uses the PaLM formula (appendix B): FLOPs per token = 6N + 12 * L * H * Q * T, N excluding
position embeddings (8.55e8 for GPT-2 124M at T=1024), against the peak dense bf16 FLOP/s of the
GPU (train_gpt2.PEAK_BF16_FLOPS, each value with its data sheet; PEAK_FP16_ONLY_FLOPS for V100 and T4);
the peak assumed is printed.
Batches are random tokens (the data loader is not the bottleneck); warm-up steps, which include
compilation, are excluded, and every timing is synchronised with the device. --data-ms N adds two
rows with a data source that spends N ms of host time per micro-batch: gathered before each
micro-step, and prefetched while the GPU computes (train_gpt2.DeviceBatches, as training does).
--dtype takes train_gpt2.py's choices and its auto rule (bf16 on GPUs from compute capability 8.0,
fp16 with loss scaling before, fp32 on CPU). --optimizer takes train_gpt2.py's (adamw, or muon with
its defaults); the "optimizer ms" column is the optimizer step's own time (unscaling, the update),
timed between two synchronisations, and its share of the step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sys
import time
from types import SimpleNamespace
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fineweb import non_negative_int, one_line, positive_float, positive_int
from model import GPT, GPTConfig
from model import PRESETS as MODEL_PRESETS
from train_gpt2 import PRESETS as TRAIN_PRESETS
from train_gpt2 import FLAG_CHOICES as TRAIN_FLAG_CHOICES
from train_gpt2 import (AUTO_MICRO_BATCH_LARGEST, DTYPE_CHOICES, DTYPE_HELP, DeviceBatches, TrainConfig, autocast_context,
                        build_optimizer, choose_dtype, device_name, dtype_name, make_grad_scaler, peak_flops, resolve_device,
                        synchronize)


@dataclass(frozen=True)
class Rung:
    """One configuration of the optimisation ladder; the ladder turns these on one at a time."""

    name: str
    tf32: bool = True
    autocast: bool = True  # at --dtype (auto: bf16 on Ampere and later); off: fp32
    attention: str = "default"  # SDPA backend: math (no fused kernel), default (flash), cudnn
    compile: bool = True
    compile_mode: str = "default"  # torch.compile's mode: "reduce-overhead" replays CUDA graphs
    fused_adamw: bool = True
    pad_vocab: bool = True
    micro_batch: int | None = None  # None: --micro-batch
    data: str = "memory"  # memory: one batch reused; serial or prefetch: a slow data source (--data-ms)


FULL = Rung("full recipe")
BASELINE = Rung("fp32 baseline", tf32=False, autocast=False, attention="math", compile=False, fused_adamw=False, pad_vocab=False)
# The ladder: each rung turns one thing on, on top of the rungs before it (see main()).
LADDER_STEPS = [
    ("+ TF32 matmuls", dict(tf32=True)),
    ("+ autocast (bf16)", dict(autocast=True)),
    ("+ SDPA flash attention", dict(attention="default")),
    ("+ torch.compile", dict(compile=True)),
    ("+ fused AdamW", dict(fused_adamw=True)),
    ("+ vocab 50304", dict(pad_vocab=True)),
    ("+ cuDNN attention", dict(attention="cudnn")),
    ("+ CUDA graphs", dict(compile_mode="reduce-overhead")),
]
ATTENTION_BACKENDS = {"math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
# The model and micro-batch of train_gpt2.py's presets, so the benchmark measures what a run does;
# for --micro-batch auto, the size it tries first on a GPU.
PRESETS = {
    name: {key: getattr(TrainConfig(**overrides), key) for key in ("model", "micro_batch", "seq_len")}
    for name, overrides in TRAIN_PRESETS.items()
}
for preset in PRESETS.values():
    if preset["micro_batch"] == "auto":
        preset["micro_batch"] = AUTO_MICRO_BATCH_LARGEST["cuda"]


@dataclass
class BenchConfig:
    preset: str = "gpt2"
    model: str = "gpt2"
    micro_batch: int = 64
    seq_len: int = 1024
    steps: int = 20  # timed steps
    warmup_steps: int = 5  # untimed steps first (compilation happens here)
    device: str | None = None
    ladder: bool = False
    larger_batch: int | None = None  # with --ladder, one more rung at this micro-batch
    dtype: str = "auto"
    optimizer: str = "adamw"  # train_gpt2.py's --optimizer, with its default settings
    data_ms: float | None = None  # host time of a simulated data source per micro-batch
    json_out: str | None = None


def measure(cfg: BenchConfig, rung: Rung, device: torch.device) -> dict:
    """Time `cfg.steps` training steps (forward, backward, optimizer) after the warm-up steps, and
    the optimizer step within them."""
    cuda = device.type == "cuda"
    micro_batch = rung.micro_batch or cfg.micro_batch
    torch.backends.cuda.matmul.allow_tf32 = rung.tf32
    torch.backends.cudnn.allow_tf32 = rung.tf32
    model_config = GPTConfig.from_preset(cfg.model, pad_vocab_multiple=64 if rung.pad_vocab else 1)
    raw_model = GPT(model_config, seed=0).to(device)
    # The gpt2 recipe's AdamW settings (and Muon's defaults), as train_gpt2.py builds them.
    optimizer = build_optimizer(replace(TrainConfig(), optimizer=cfg.optimizer), raw_model, device)
    if not (rung.fused_adamw and cuda):
        for group in optimizer.param_groups:
            if "fused" in group:  # AdamW's groups; Muon has no fused kernel
                group["fused"] = False
    model = torch.compile(raw_model, mode=rung.compile_mode) if rung.compile else raw_model
    tokens = torch.randint(0, model_config.vocab_size, (micro_batch, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    dtype = choose_dtype(cfg.dtype, device) if rung.autocast else torch.float32
    scaler = make_grad_scaler(dtype, device, sharded=False)
    source = slow_source(tokens, cfg.data_ms or 0.0)
    batches = DeviceBatches(source, device)

    def attention():  # a new context each step: sdpa_kernel's cannot be entered twice
        return sdpa_kernel(ATTENTION_BACKENDS[rung.attention]) if rung.attention in ATTENTION_BACKENDS else contextlib.nullcontext()

    def step():
        if rung.data == "serial":  # the host gathers the batch while the GPU waits
            xb, yb = (t.to(device) for t in source.next_batch())
        else:
            xb, yb = batches.take() if rung.data == "prefetch" else (x, y)
        with attention(), autocast_context(device, dtype):
            _, loss = model(xb, yb)
        scaler.scale(loss).backward()
        if rung.data == "prefetch":
            batches.prefetch()
        synchronize(device)
        t_optimizer = time.perf_counter()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        optimizer_s.append(time.perf_counter() - t_optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # training reads the loss every step, for its log

    optimizer_s = []

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(cfg.warmup_steps):
        step()
    synchronize(device)
    optimizer_s.clear()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    synchronize(device)
    step_s = (time.perf_counter() - t0) / cfg.steps
    optimizer_step_s = sum(optimizer_s) / cfg.steps
    tokens_per_s = micro_batch * cfg.seq_len / step_s
    peak = peak_flops(device)
    result = {
        "rung": rung.name,
        "micro_batch": micro_batch,
        "dtype": dtype_name(dtype),
        "step_ms": step_s * 1000,
        "optimizer_ms": optimizer_step_s * 1000,
        "optimizer_share": optimizer_step_s / step_s,
        "tokens_per_s": tokens_per_s,
        "mfu": raw_model.flops_per_token(cfg.seq_len) * tokens_per_s / peak if peak else None,
        "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        # ru_maxrss is KiB on Linux: the process's peak so far, so it only grows along a ladder.
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    del model, raw_model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def slow_source(tokens: torch.Tensor, data_ms: float):
    """A stand-in for the data loader that spends data_ms of host time per batch (window reads,
    np.stack) and hands out the same tokens each time."""
    def next_batch():
        time.sleep(data_ms / 1000)
        return tokens[:, :-1].clone(), tokens[:, 1:].clone()

    return SimpleNamespace(next_batch=next_batch, state_dict=dict)


def format_row(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    memory = f"{r['reserved_gib']:.1f} GiB reserved" if r["reserved_gib"] is not None else f"{r['peak_rss_gib']:.2f} GiB peak RSS"
    optimizer = f"{r['optimizer_ms']:.1f} ({r['optimizer_share']:.0%})" if r.get("optimizer_ms") is not None else "n/a"
    return (f"| {r['rung']:<28} | {r['micro_batch']:>5} | {r['tokens_per_s']:>12,.0f} | {r['step_ms']:>9.1f} | {optimizer:>14} "
            f"| {mfu:>6} | {memory} |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpt2", help="model and batch defaults")
    parser.add_argument("--model", choices=list(MODEL_PRESETS), help="model.py preset (overrides --preset's)")
    parser.add_argument("--micro-batch", type=positive_int, help="sequences per step (overrides --preset's)")
    parser.add_argument("--seq-len", type=positive_int, help="tokens per sequence (overrides --preset's)")
    parser.add_argument("--steps", type=positive_int, default=BenchConfig.steps, help="timed steps")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=BenchConfig.warmup_steps, help="untimed steps before timing, compilation included")
    parser.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best available)")
    parser.add_argument("--ladder", action=argparse.BooleanOptionalAction, default=False, help="measure each optimisation on top of the previous (CUDA)")
    parser.add_argument("--larger-batch", type=positive_int, help="with --ladder: a last rung at this micro-batch")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=BenchConfig.dtype, help=DTYPE_HELP)
    parser.add_argument("--optimizer", choices=TRAIN_FLAG_CHOICES["optimizer"], default=BenchConfig.optimizer,
                        help="train_gpt2.py's optimizer, with its default settings: adamw, or muon (Muon on the blocks' matrices)")
    parser.add_argument("--data-ms", type=positive_float, help="also time the step with a data source taking this many "
                        "ms of host time per micro-batch, gathered in turn and prefetched as training does")
    parser.add_argument("--json-out", help="also write the results to this JSON file")
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    values = {**asdict(BenchConfig()), **PRESETS[args["preset"]], **{k: v for k, v in args.items() if v is not None}}
    cfg = BenchConfig(**values)
    device = resolve_device(cfg.device)
    if cfg.ladder and device.type != "cuda":
        raise SystemExit("--ladder compares GPU features (TF32, bf16, flash attention, fused AdamW); run it on a CUDA device")
    peak = peak_flops(device)
    print(f"device: {device_name(device)} | torch {torch.__version__} | autocast dtype: {dtype_name(choose_dtype(cfg.dtype, device))} "
          f"| peak bf16 FLOP/s assumed: {peak or 'unknown (no MFU)'}")
    print(f"config: {json.dumps(asdict(cfg))}")
    print(f"| {'configuration':<28} | batch | {'tokens/s':>12} | {'step ms':>9} | {'optimizer ms':>14} | {'MFU':>6} | memory |")
    print(f"|{'-' * 30}|-------|{'-' * 14}|{'-' * 11}|{'-' * 16}|{'-' * 8}|--------|")
    if cfg.ladder:
        base, plan = BASELINE, [(BASELINE.name, {})] + LADDER_STEPS
        if cfg.larger_batch:
            plan.append((f"+ micro-batch {cfg.larger_batch}", dict(micro_batch=cfg.larger_batch)))
    else:
        dtype = dtype_name(choose_dtype(cfg.dtype, device))
        base = FULL if device.type == "cuda" else replace(FULL, name=f"default ({dtype} on CPU)", compile=False)
        plan = [(base.name, {})]
    if cfg.data_ms:
        plan += [(f"+ data {cfg.data_ms:g} ms, in turn", dict(data="serial")), (f"+ data {cfg.data_ms:g} ms, prefetched", dict(data="prefetch"))]
    results = []
    for name, change in plan:
        rung = replace(base, name=name, **change)
        result = run_rung(cfg, rung, device)
        results.append(result)
        if "error" in result:
            print(f"| {rung.name:<28} | {result['error']} |", flush=True)
        else:
            print(format_row(result), flush=True)
        # The next rung builds on this one, unless this one's feature failed here (a backend this GPU
        # lacks, a compiler error): then it is left out. Out of memory is no verdict on the feature.
        if "error" not in result or result["error"] == "out of memory":
            base = rung
        if cfg.json_out:  # after every rung, so that a run cut short keeps what it measured
            with open(cfg.json_out, "w") as f:
                json.dump({"device": device_name(device), "torch": torch.__version__, "config": asdict(cfg), "results": results}, f, indent=2)
    return 0 if results and all("error" not in r for r in results) else 1


def run_rung(cfg: BenchConfig, rung: Rung, device: torch.device) -> dict:
    """measure(), or the rung's error: one rung that fails (out of memory, a backend this GPU
    lacks, a compiler error) is reported in its row and the ladder goes on."""
    try:
        return {**measure(cfg, rung, device), "settings": asdict(rung)}
    except Exception as e:  # any failure belongs in the table, not in a traceback
        error = "out of memory" if isinstance(e, torch.OutOfMemoryError) else f"{type(e).__name__}: {one_line(e, 150)}"
    # Here, outside the except block, the failed rung's model and activations are no longer referenced.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return {"rung": rung.name, "micro_batch": rung.micro_batch or cfg.micro_batch, "error": error, "settings": asdict(rung)}


if __name__ == "__main__":
    sys.exit(main())
