"""Fitting a run to the hardware at hand: --micro-batch auto, --dtype (bf16, fp16 with loss scaling,
fp32), the --compile default, and one-line stops when memory or the compiler runs out.

No GPU runs here. Running out of memory is played by a test double around train_gpt2.run_micro_step
(the one function that runs a micro-step while fitting) or the model's forward; bf16 and fp16 run
for real under CPU autocast, the GradScaler included.
"""

import json
import math

import pytest
import torch

import train_gpt2
from test_train import assert_same_run, data_dir, records_by_step, tiny_args  # noqa: F401  (data_dir is a fixture)
from train_gpt2 import TrainConfig, choose_compile, choose_dtype, micro_batch_candidates

# tiny_args: 256 tokens per step of 32-token sequences, so 8 sequences per step on one process.
AUTO = ["--micro-batch", "auto"]


def headers(log_dir):
    return [r for r in train_gpt2.read_metrics(log_dir / "metrics.jsonl") if r["type"] == "header"]


def out_of_memory_above(limit: int, tried: list[int]):
    """A run_micro_step that runs out of memory for micro-batches above `limit`, recording each size."""
    real = train_gpt2.run_micro_step

    def run_micro_step(model, micro_batch, *args):
        tried.append(micro_batch)
        if micro_batch > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {micro_batch} GiB")
        return real(model, micro_batch, *args)

    return run_micro_step


# -----------------------------------------------------------------------------
# Choices made from the device


def test_dtype_auto_is_bf16_from_ampere_fp16_before_and_fp32_off_gpu(monkeypatch):
    cuda = torch.device("cuda")
    for capability, expected in [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert choose_dtype("auto", cuda) == expected, capability
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("auto", torch.device("mps")) == torch.float32
    assert [choose_dtype(name, torch.device("cpu")) for name in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]


def test_compile_default_is_on_only_for_cuda_with_triton(monkeypatch):
    assert choose_compile(None, torch.device("cpu"))[0] is False
    assert "--compile forces it" in choose_compile(None, torch.device("cpu"))[1]
    monkeypatch.setattr(train_gpt2.importlib.util, "find_spec", lambda name: None)
    use, note = choose_compile(None, torch.device("cuda"))
    assert use is False and "pip install triton" in note and "--compile forces it" in note
    monkeypatch.setattr(train_gpt2.importlib.util, "find_spec", lambda name: object())
    assert choose_compile(None, torch.device("cuda")) == (True, None)
    assert choose_compile(False, torch.device("cuda")) == (False, None)
    assert choose_compile(True, torch.device("cpu")) == (True, None)


def test_auto_candidates_divide_each_ranks_share():
    cfg = TrainConfig()  # 524,288 tokens of 1024: 512 sequences per step
    assert micro_batch_candidates(cfg, world_size=1) == [64, 32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(cfg, world_size=8, largest=64) == [64, 32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(TrainConfig(total_batch=48 * 1024), world_size=1) == [48, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    with pytest.raises(train_gpt2.TrainError, match="--total-batch 1000 is not a multiple of --seq-len 1024"):
        micro_batch_candidates(TrainConfig(total_batch=1000), world_size=1)


# -----------------------------------------------------------------------------
# --micro-batch auto


def test_auto_halves_until_it_fits_and_trains_as_that_micro_batch(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    tried = []
    monkeypatch.setattr(train_gpt2, "run_micro_step", out_of_memory_above(2, tried))
    fitted = tmp_path / "fitted"
    assert train_gpt2.main(tiny_args(data_dir, fitted, *AUTO)) == 0
    assert tried == [8, 4, 2]  # on a CPU auto starts at 8; each size that runs out of memory is halved
    assert "micro-batch 2 x 32 fits this cpu; 4 accumulation steps" in capsys.readouterr().out
    header = headers(fitted)[0]
    assert (header["micro_batch"], header["grad_accum_steps"], header["config"]["micro_batch"]) == (2, 4, "auto")
    monkeypatch.undo()
    explicit = tmp_path / "explicit"
    assert train_gpt2.main(tiny_args(data_dir, explicit, "--micro-batch", "2")) == 0
    assert_same_run(explicit, fitted, steps=12, tolerance=0.0)


def test_auto_takes_the_smallest_size_any_rank_fits(monkeypatch):
    """Every rank must use the same micro-batch: the fit all-reduces the minimum (here, a second
    rank that fitted only 2 is played by a patched all_reduce)."""
    monkeypatch.setattr(train_gpt2.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(train_gpt2.dist, "all_reduce", lambda t, op: t.fill_(min(int(t.item()), 2)))
    monkeypatch.setattr(train_gpt2, "micro_step_fits", lambda model, size, *args: size <= 4)
    cfg = TrainConfig(total_batch=16 * 32, seq_len=32)
    size = train_gpt2.fit_micro_batch(None, cfg, [16, 8, 4, 2, 1], torch.device("cpu"), torch.float32, 0, False)
    assert size == 2


def test_nothing_fits_stops_in_one_line(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(train_gpt2, "run_micro_step", out_of_memory_above(0, []))
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", *AUTO)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not even micro-batch 1 x 32 fits" in err and "--seq-len" in err and "--fsdp" in err and "--model" in err
    assert not (tmp_path / "log").exists()  # nothing was written


def test_a_given_micro_batch_that_does_not_fit_says_to_try_auto(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    tried = []
    monkeypatch.setattr(train_gpt2, "run_micro_step", out_of_memory_above(2, tried))
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", "--micro-batch", "4")) == 2
    err = capsys.readouterr().err
    assert tried == [4] and err.count("\n") == 1
    assert "--micro-batch 4 x 32 does not fit this cpu" in err and "--micro-batch auto" in err


def test_a_compiler_that_fails_stops_in_one_line(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from torch._inductor.exc import InductorError

    def no_compiler(*args):
        raise InductorError(RuntimeError("Compiler: cc is not found.\nlong inductor traceback ..."), None)

    monkeypatch.setattr(train_gpt2, "run_micro_step", no_compiler)
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", "--compile")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed at the first step" in err and "--no-compile" in err
    assert "cc is not found" in err


def test_resuming_with_another_micro_batch_changes_only_the_accumulation_split(data_dir, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    assert train_gpt2.main(tiny_args(data_dir, reference)) == 0  # micro-batch 4, 2 accumulation steps
    log_dir = tmp_path / "resumed"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "6")) == 0
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto", "--micro-batch", "2")) == 0
    assert headers(log_dir)[-1]["grad_accum_steps"] == 4
    # The same windows in the same order; only the fp32 sums are grouped differently (4 x 2 for 2 x 4).
    assert_same_run(reference, log_dir, steps=12, tolerance=1e-5)


# -----------------------------------------------------------------------------
# Running out of memory later in a run


def test_out_of_memory_later_names_the_flag_and_the_checkpoint(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "6")) == 0
    real_forward = train_gpt2.GPT.forward
    calls = {"train": 0}

    def out_of_memory_in_step_8(self, idx, targets=None, cache=None, **kwargs):
        if targets is not None and self.training:
            calls["train"] += 1
            if calls["train"] > 1 + 2:  # the fitting micro-step, then step 7's two micro-steps
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, idx, targets, cache, **kwargs)

    monkeypatch.setattr(train_gpt2.GPT, "forward", out_of_memory_in_step_8)
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "out of memory in step 8: lower --micro-batch (now 4)" in err and "ckpt_000006.pt with --resume auto" in err
    assert [p.name for p in train_gpt2.list_checkpoints(log_dir)] == ["ckpt_000006.pt"]


def test_out_of_memory_in_an_evaluation_names_its_flags(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    real_forward = train_gpt2.GPT.forward

    def out_of_memory_in_eval(self, idx, targets=None, cache=None, **kwargs):
        if not self.training:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_forward(self, idx, targets, cache, **kwargs)

    monkeypatch.setattr(train_gpt2.GPT, "forward", out_of_memory_in_eval)
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log")) == 2
    err = capsys.readouterr().err
    assert "out of memory evaluating at step 0" in err and "--micro-batch" in err and "--no-hellaswag" in err
    assert "no checkpoint was saved yet" in err


# -----------------------------------------------------------------------------
# Precision: bf16 and fp16 autocast run on CPU too, so their paths are tested here


# fp16 matmuls are slow on a CPU without fp16 arithmetic: these runs are kept to 6 steps.
SIX_STEPS = ["--max-steps", "6", "--eval-every", "3", "--save-every", "3"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_runs_and_resumes_exactly(data_dir, tmp_path, dtype):  # noqa: F811
    whole = tmp_path / "whole"
    assert train_gpt2.main(tiny_args(data_dir, whole, *SIX_STEPS, "--dtype", dtype)) == 0
    resumed = tmp_path / "resumed"
    assert train_gpt2.main(tiny_args(data_dir, resumed, *SIX_STEPS, "--dtype", dtype, "--stop-at-step", "3")) == 0
    assert train_gpt2.main(tiny_args(data_dir, resumed, *SIX_STEPS, "--dtype", dtype, "--resume", "auto")) == 0
    # One process on a CPU computes the same thing each time: exact, in bf16 and fp16 as in fp32.
    assert_same_run(whole, resumed, steps=6, tolerance=0.0)
    assert headers(whole)[0]["dtype"] == dtype
    train = records_by_step(whole, "train")
    assert train[6]["train_loss"] < train[1]["train_loss"]
    checkpoint = torch.load(resumed / "ckpt_000003.pt", weights_only=False)
    if dtype == "fp16":
        # The loss scale is part of the state: without it a resumed run would scale differently.
        assert checkpoint["grad_scaler"]["scale"] == train[3]["loss_scale"]
        assert all("loss_scale" in r for r in train.values())
    else:
        assert checkpoint["grad_scaler"] is None and "loss_scale" not in train[1]


def test_fp16_skips_a_step_whose_gradients_overflow_and_goes_on(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    real_forward = train_gpt2.GPT.forward
    calls = {"train": 0}

    def inf_gradients_in_step_3(self, idx, targets=None, cache=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, cache, **kwargs)
        if targets is not None and self.training:
            calls["train"] += 1
            if calls["train"] == 1 + 2 * 2 + 1:  # after the fitting micro-step and two steps of two
                loss.register_hook(lambda grad: grad * float("inf"))  # a finite loss, infinite gradients
        return logits, loss

    monkeypatch.setattr(train_gpt2.GPT, "forward", inf_gradients_in_step_3)
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, *SIX_STEPS, "--dtype", "fp16", "--stop-at-step", "3")) == 0
    assert "skipped: fp16 gradients overflowed, loss scale lowered" in capsys.readouterr().out
    # The resumed run continues at the lowered scale (a fresh scaler would start at 65,536 again).
    assert train_gpt2.main(tiny_args(data_dir, log_dir, *SIX_STEPS, "--dtype", "fp16", "--resume", "auto")) == 0
    train = records_by_step(log_dir, "train")
    assert 3 in [step for step, r in train.items() if r["skipped"]]
    assert train[3]["loss_scale"] == train[2]["loss_scale"] / 2  # the scaler halves the scale after an overflow
    assert train[4]["loss_scale"] == train[3]["loss_scale"]
    assert all(math.isfinite(r["train_loss"]) for r in train.values())
    assert train[6]["train_loss"] < train[1]["train_loss"]
    # The same overflow in fp32, where nothing scales the loss, stops the run.
    calls["train"] = 0
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "fp32", *SIX_STEPS, "--dtype", "fp32")) == 2
    assert "step 3: the loss is" in capsys.readouterr().err


def test_fp16_skipped_step_leaves_the_weights_alone(monkeypatch):
    """What GradScaler promises, checked on the optimizer the run builds: after an overflow the
    step changes no parameter and no AdamW moment."""
    model = train_gpt2.GPT(train_gpt2.GPTConfig.from_preset("tiny"), seed=0)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 1e-8, "cpu")
    scaler = train_gpt2.make_grad_scaler(torch.float16, torch.device("cpu"), sharded=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.zeros((2, 8), dtype=torch.long)
    with train_gpt2.autocast_context(torch.device("cpu"), torch.float16):
        _, loss = model(x, x)
    loss.register_hook(lambda grad: grad * float("inf"))
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert not optimizer.state


def test_header_and_console_say_what_was_chosen(data_dir, tmp_path, capsys):  # noqa: F811
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", "--max-steps", "4", "--eval-every", "4",
                                     "--save-every", "4")) == 0
    out = capsys.readouterr().out
    assert "torch.compile is off on cpu" in out and "fp32" in out
    header = headers(tmp_path / "log")[0]
    assert (header["dtype"], header["compile"], header["micro_batch"]) == ("fp32", False, 4)
    json.dumps(header)  # the header stays plain JSON


def test_memory_is_named_as_the_card_is_sold(monkeypatch):
    """An RTX 4090's 24,564 MiB is its '24 GB', as the fitting messages should say."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=24_564 * 2**20))
    assert train_gpt2.memory_text(torch.device("cuda")) == "this 24 GB GPU"
    assert train_gpt2.memory_text(torch.device("cpu")) == "this cpu"
