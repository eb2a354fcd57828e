import json
import math
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import fineweb
import hellaswag
import train_gpt2
from model import load_model
from train_gpt2 import DataLoader, TrainConfig, TrainError, get_lr, make_plan

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Real text, offline: shards of the Python standard library's sources."""
    out = tmp_path_factory.mktemp("data") / "pystdlib"
    assert fineweb.main(["--dataset", "pystdlib", "--max-tokens", "150000", "--val-tokens", "15000",
                         "--out", str(out), "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def counting_dir(tmp_path_factory):
    """Shards whose windows are all different (counting upwards), so the order of reads can be checked."""
    root = tmp_path_factory.mktemp("counting")
    (root / "numbers.txt").write_text(" ".join(str(i) for i in range(40_000)))
    assert fineweb.main(["--input", str(root / "numbers.txt"), "--val-tokens", "5000", "--shard-size", "30000",
                         "--out", str(root / "shards"), "--workers", "1"]) == 0
    return root / "shards"


def tiny_args(data_dir, log_dir, *extra):
    """A run of a few seconds: the tiny model on 128 tokens per micro-step."""
    return ["--preset", "smoke", "--data", str(data_dir), "--log-dir", str(log_dir), "--device", "cpu",
            "--micro-batch", "4", "--seq-len", "32", "--total-batch", "256", "--max-steps", "12",
            "--warmup-steps", "2", "--eval-every", "6", "--save-every", "6", "--val-steps", "2",
            "--no-hellaswag", "--sample-tokens", "4", "--log-every", "1", *extra]


def records_by_step(log_dir, record_type: str) -> dict[int, dict]:
    records = train_gpt2.read_metrics(log_dir / "metrics.jsonl")
    return {r["step"]: r for r in records if r["type"] == record_type}


def assert_same_run(expected_dir, got_dir, steps: int, tolerance: float):
    """Same losses, gradient norms, learning rates and token counts step by step, and the same
    validation losses: the gradient norm is what shows a gradient scaled wrongly (the logged loss
    is a separate sum), val_loss a wrong average over ranks."""
    expected, got = records_by_step(expected_dir, "train"), records_by_step(got_dir, "train")
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step, record in expected.items():
        assert got[step]["train_loss"] == pytest.approx(record["train_loss"], abs=tolerance), step
        assert got[step]["grad_norm"] == pytest.approx(record["grad_norm"], rel=10 * tolerance), step
        assert (got[step]["lr"], got[step]["tokens_seen"]) == (record["lr"], record["tokens_seen"]), step
    expected_evals, got_evals = records_by_step(expected_dir, "eval"), records_by_step(got_dir, "eval")
    assert set(expected_evals) <= set(got_evals)
    for step, record in expected_evals.items():
        assert got_evals[step]["val_loss"] == pytest.approx(record["val_loss"], abs=tolerance), step


# -----------------------------------------------------------------------------
# Configuration and schedule


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig()  # the gpt2 recipe: 715 warm-up steps of 19,073
    assert get_lr(0, cfg) == pytest.approx(6e-4 / 715)
    assert get_lr(714, cfg) == pytest.approx(6e-4)  # end of warm-up
    assert get_lr(715, cfg) == pytest.approx(6e-4)  # the cosine starts at its top
    assert get_lr(19_072, cfg) == pytest.approx(6e-5)  # the last step reaches min_lr
    middle = (715 + 19_072) // 2
    assert get_lr(middle, cfg) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-3)
    lrs = [get_lr(s, cfg) for s in range(715, 19_073)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_schedule_exact_on_a_short_run():
    """Every step of a 12-step run against the closed form: warm-up (s + 1) / 2, then a cosine over
    steps 2..11 that ends exactly at min_lr, with no jump at the last step."""
    cfg = TrainConfig(max_steps=12, warmup_steps=2, max_lr=1.0, min_lr=0.1)
    expected = [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * (s - 2) / 9)) for s in range(2, 12)]
    assert [get_lr(s, cfg) for s in range(12)] == pytest.approx(expected, abs=1e-12)


def test_presets_and_flags():
    cfg = train_gpt2.parse_config([])
    assert (cfg.total_batch, cfg.micro_batch, cfg.seq_len, cfg.max_steps, cfg.warmup_steps) == (524_288, "auto", 1024, 19_073, 715)
    assert (cfg.dtype, cfg.compile) == ("auto", None)
    assert (cfg.max_lr, cfg.min_lr, cfg.weight_decay, cfg.grad_clip, cfg.seed) == (6e-4, 6e-5, 0.1, 1.0, 1337)
    assert (cfg.beta1, cfg.beta2, cfg.eps) == (0.9, 0.95, 1e-8)
    # auto plans for the largest micro-batch it will try (64); the fit may lower it, raising the accumulation.
    assert make_plan(cfg, world_size=8, block_size=1024).grad_accum_steps == 1
    assert make_plan(cfg, world_size=1, block_size=1024).grad_accum_steps == 8
    assert make_plan(cfg, world_size=1, block_size=1024, micro_batch=16).grad_accum_steps == 32
    modern = train_gpt2.parse_config(["--preset", "gpt2.5"])
    assert (modern.model, modern.max_lr, modern.weight_decay, modern.beta1, modern.beta2) == ("gpt2.5", 1.8e-3, 0.1, 0.9, 0.95)
    smoke = train_gpt2.parse_config(["--preset", "smoke", "--max-steps", "7", "--no-compile"])
    assert smoke.model == "tiny" and smoke.max_steps == 7 and smoke.compile is False


def test_batch_that_does_not_divide_names_the_flags():
    cfg = TrainConfig(total_batch=524_288, micro_batch=48)
    with pytest.raises(TrainError, match="--total-batch 524288 is not a multiple of --micro-batch 48 x --seq-len 1024"):
        make_plan(cfg, world_size=1, block_size=1024)
    # 16 ranks x 64 x 1024 is twice the batch: the error says which micro-batch fits.
    with pytest.raises(TrainError, match=r"change one of those flags \(--micro-batch 32 fits\)"):
        make_plan(TrainConfig(micro_batch=64), world_size=16, block_size=1024)
    for flag in ("total_batch", "micro_batch", "seq_len"):
        with pytest.raises(TrainError, match=f"--{flag.replace('_', '-')} must be at least 1, not 0"):
            make_plan(TrainConfig(**{flag: 0}), world_size=1, block_size=1024)


# -----------------------------------------------------------------------------
# Data loader


def test_loader_ranks_are_disjoint_and_cover_every_window_once(counting_dir):
    data_dir = counting_dir
    def windows(loader, n):
        return [tuple(map(tuple, loader.next_batch()[0].tolist())) for _ in range(n)]

    single = DataLoader(data_dir, "train", 8, 64, 0, 1, seed=5, shuffle=True)
    per_epoch = single.total_windows // 8
    seen = [row for batch in windows(single, per_epoch) for row in batch]
    assert len(set(seen)) == len(seen) == per_epoch * 8  # no window twice in an epoch
    ranks = [DataLoader(data_dir, "train", 4, 64, r, 2, seed=5, shuffle=True) for r in range(2)]
    r0, r1 = windows(ranks[0], 10), windows(ranks[1], 10)
    assert not set(sum(r0, ())) & set(sum(r1, ()))
    # Two ranks of 4 read exactly what one process of 8 reads, in order.
    assert [a + b for a, b in zip(r0, r1)] == [tuple(row for row in batch) for batch in windows(
        DataLoader(data_dir, "train", 8, 64, 0, 1, seed=5, shuffle=True), 10)]
    # The order is shuffled (not the file order) and differs between epochs.
    ordered = DataLoader(data_dir, "train", 8, 64, 0, 1, seed=5, shuffle=False)
    assert windows(ordered, 1) != windows(DataLoader(data_dir, "train", 8, 64, 0, 1, seed=5, shuffle=True), 1)
    assert single.epoch == 0
    next_epoch = windows(single, 1)
    assert single.epoch == 1 and set(next_epoch[0]) != set(seen[:8])
    # The shards are shuffled too, not only the windows inside them.
    assert len(single.paths) >= 2
    shard_orders = {tuple(DataLoader(data_dir, "train", 8, 64, 0, 1, seed=seed, shuffle=True)._order()[0]) for seed in range(8)}
    assert len(shard_orders) > 1


def test_loader_resumes_exactly_in_a_later_epoch(counting_dir):
    a = DataLoader(counting_dir, "train", 8, 64, 0, 1, seed=3, shuffle=True)
    for _ in range(a.total_windows // 8 + 3):  # into the second epoch
        a.next_batch()
    assert a.epoch == 1
    b = DataLoader(counting_dir, "train", 8, 64, 0, 1, seed=3, shuffle=True)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_prefetched_batches_are_the_loaders_and_resume_at_the_first_not_taken(counting_dir):
    """DeviceBatches gathers the next batch ahead of time; a checkpoint taken while one waits must
    resume at that batch, not after it."""
    plain = DataLoader(counting_dir, "train", 8, 64, 0, 1, seed=3, shuffle=True)
    batches = train_gpt2.DeviceBatches(DataLoader(counting_dir, "train", 8, 64, 0, 1, seed=3, shuffle=True), torch.device("cpu"))
    for _ in range(5):
        x, y = batches.take()
        assert torch.equal(x, plain.next_batch()[0])
        batches.prefetch()  # as the training loop does once a micro-step is queued
    state = batches.state_dict()
    assert state == plain.state_dict() and batches.loader.position == plain.position + 8
    resumed = DataLoader(counting_dir, "train", 8, 64, 0, 1, seed=3, shuffle=True)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch()[0], batches.take()[0])


def test_loader_state_dict_resumes_exactly(data_dir):
    a = DataLoader(data_dir, "train", 4, 32, 0, 1, seed=1, shuffle=True)
    for _ in range(7):
        a.next_batch()
    b = DataLoader(data_dir, "train", 4, 32, 0, 1, seed=1, shuffle=True)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    c = DataLoader(data_dir, "train", 4, 64, 0, 1, seed=1, shuffle=True)
    with pytest.raises(TrainError, match="resume with the same data, --seq-len and --seed"):
        c.load_state_dict(a.state_dict())


def test_targets_are_inputs_shifted(data_dir):
    x, y = DataLoader(data_dir, "val", 2, 16, 0, 1, seed=0, shuffle=False).next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])
    first = fineweb.load_shard(fineweb.list_shards(data_dir, "val")[0])
    assert x[0].tolist() == first[:16].tolist()


def test_missing_data_prints_the_fineweb_command(tmp_path, capsys):
    assert train_gpt2.main(tiny_args(tmp_path / "nothing", tmp_path / "log")) == 2
    assert "python fineweb.py" in capsys.readouterr().err


def test_split_shorter_than_one_batch(data_dir, tmp_path, capsys):
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", "--micro-batch", "512", "--total-batch", "16384")) == 2
    assert "is shorter than one batch" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# Training runs


def test_smoke_run_learns_logs_and_checkpoints(data_dir, tmp_path):
    log_dir = tmp_path / "log"
    args = tiny_args(data_dir, log_dir, "--max-steps", "30", "--eval-every", "15", "--save-every", "10", "--keep-last", "2")
    assert train_gpt2.main(args) == 0
    records = train_gpt2.read_metrics(log_dir / "metrics.jsonl")
    assert records[0]["type"] == "header" and records[0]["config"]["max_steps"] == 30
    assert {"git_commit", "torch", "device", "model_config"} <= set(records[0])
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert {"step", "train_loss", "lr", "grad_norm", "dt_ms", "tokens_per_s", "mfu", "tokens_seen"} <= set(train[0])
    first, last = train[0]["train_loss"], np.mean([r["train_loss"] for r in train[-5:]])
    assert abs(first - math.log(50257)) < 0.5 and last < first - 2.0
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 2.0
    samples = [r for r in records if r["type"] == "sample"]
    assert samples and all(s["text"].startswith("Hello, I'm a language model,") for s in samples)
    assert (log_dir / "loss.png").stat().st_size > 10_000
    # keep_last 2: steps 20 and 30 remain; each holds everything a resume needs.
    assert [p.name for p in train_gpt2.list_checkpoints(log_dir)] == ["ckpt_000020.pt", "ckpt_000030.pt"]
    ckpt = torch.load(log_dir / "ckpt_000030.pt", weights_only=True)
    assert ckpt["step"] == 30 and ckpt["tokens_seen"] == 30 * 256
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"][0])


def test_resume_is_exact(data_dir, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_gpt2.main(tiny_args(data_dir, full)) == 0
    assert train_gpt2.main(tiny_args(data_dir, split, "--stop-at-step", "5")) == 0
    assert train_gpt2.latest_checkpoint(split).name == "ckpt_000005.pt"
    assert train_gpt2.main(tiny_args(data_dir, split, "--resume", "auto")) == 0
    assert_same_run(full, split, steps=12, tolerance=1e-6)
    assert torch.load(split / "ckpt_000012.pt", weights_only=True)["tokens_seen"] == 12 * 256
    # The log was appended to, not wiped: two launches, two headers.
    headers = [r for r in train_gpt2.read_metrics(split / "metrics.jsonl") if r["type"] == "header"]
    assert [h["start_step"] for h in headers] == [0, 5]


def test_hellaswag_in_training_scores_as_hellaswag_py_does(data_dir, tmp_path):
    from test_hellaswag import synthetic_examples, write_jsonl  # the HellaSwag tests' own examples

    data = write_jsonl(tmp_path / "hellaswag.jsonl", synthetic_examples(24))
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--hellaswag", "--hellaswag-data", str(data), "--stop-at-step", "6")) == 0
    record = records_by_step(log_dir, "eval")[6]
    expected = hellaswag.evaluate(load_model(log_dir / "ckpt_000006.pt"), list(hellaswag.iterate_examples(data)), "cpu")
    assert expected.acc != expected.acc_norm  # so that the two cannot be swapped unnoticed
    assert (record["hellaswag_acc"], record["hellaswag_acc_norm"], record["hellaswag_n"]) == (expected.acc, expected.acc_norm, 24)


def test_hellaswag_that_cannot_be_downloaded_skips_with_one_line(data_dir, tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(hellaswag, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--hellaswag", "--stop-at-step", "1")) == 0
    printed = capsys.readouterr()
    assert printed.err.count("hellaswag: download failed") == 1 and "Name or service not known" in printed.err
    assert "pass its path with --hellaswag-data" in printed.err and "with --data" not in printed.err
    assert f"hellaswag: skipped, {tmp_path / 'cache' / 'hellaswag_val.jsonl'} is not there" in printed.out
    assert records_by_step(log_dir, "eval")[0]["hellaswag_acc_norm"] is None


def test_fresh_run_refuses_a_log_dir_with_checkpoints(data_dir, tmp_path, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "1")) == 0
    before = (log_dir / "ckpt_000001.pt").read_bytes()
    assert train_gpt2.main(tiny_args(data_dir, log_dir)) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert (log_dir / "ckpt_000001.pt").read_bytes() == before


def test_resume_with_another_model_config_is_refused(data_dir, tmp_path, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "1")) == 0
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto", "--no-pad-vocab")) == 2
    assert "pass the flags it was trained with" in capsys.readouterr().err


def test_interrupted_save_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "6")) == 0
    good = (log_dir / "ckpt_000006.pt").read_bytes()
    real_save = torch.save

    def crash_midway(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(1000)  # half a file on disk, then the machine dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto"))
    monkeypatch.undo()
    assert [p.name for p in train_gpt2.list_checkpoints(log_dir)] == ["ckpt_000006.pt"]
    assert (log_dir / "ckpt_000006.pt").read_bytes() == good
    assert (log_dir / "ckpt_000012.pt.tmp").exists()  # the half-written file, under its temporary name
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto")) == 0  # and it still resumes
    assert f"removed {log_dir / 'ckpt_000012.pt.tmp'}" in capsys.readouterr().out
    assert not list(log_dir.glob("*.tmp"))


def test_non_finite_loss_stops_without_saving(data_dir, tmp_path, monkeypatch, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "6")) == 0
    real_forward = train_gpt2.GPT.forward
    calls = {"n": 0}

    def nan_after_a_while(self, idx, targets=None, cache=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, cache, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            # The third step of the resumed run (2 micro-steps each), after the micro-step that checks,
            # before step 1, that the micro-batch fits.
            if calls["n"] > 5:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train_gpt2.GPT, "forward", nan_after_a_while)
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto")) == 2
    assert "step 9: the loss is nan" in capsys.readouterr().err
    assert [p.name for p in train_gpt2.list_checkpoints(log_dir)] == ["ckpt_000006.pt"]
    # torchrun --max-restarts would start the workers again, from the same checkpoint: refused.
    monkeypatch.undo()
    assert json.loads((log_dir / train_gpt2.NONFINITE_FILE).read_text())["step"] == 9
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto")) == 2
    assert "a restart from there would repeat that exactly" in capsys.readouterr().err
    # A launch by hand (new settings, or data fixed) goes ahead, and its first save clears the record.
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto")) == 0
    assert not (log_dir / train_gpt2.NONFINITE_FILE).exists()


def test_non_finite_gradient_with_a_finite_loss_stops_too(data_dir, tmp_path, monkeypatch, capsys):
    class InfiniteGradient(torch.autograd.Function):
        """The loss unchanged, its gradient infinite: only the gradient norm shows the failure."""

        @staticmethod
        def forward(ctx, loss):
            return loss.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    real_forward = train_gpt2.GPT.forward

    def infinite_gradient(self, idx, targets=None, *args, **kwargs):
        logits, loss = real_forward(self, idx, targets, *args, **kwargs)
        return logits, (InfiniteGradient.apply(loss) if loss is not None and self.training else loss)

    monkeypatch.setattr(train_gpt2.GPT, "forward", infinite_gradient)
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir)) == 2
    error = capsys.readouterr().err
    assert "step 1: the loss is " in error and "the loss is nan" not in error and "and the gradient norm nan" in error
    assert train_gpt2.list_checkpoints(log_dir) == []


def test_resume_auto_passes_over_a_truncated_checkpoint(data_dir, tmp_path, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "9", "--save-every", "3")) == 0
    newest = log_dir / "ckpt_000009.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a machine that died before the data reached the disk
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", "auto", "--stop-at-step", "7")) == 0
    assert f"passes over {newest}" in capsys.readouterr().err
    assert train_gpt2.read_metrics(log_dir / "metrics.jsonl")[-1]["step"] == 7
    assert len(newest.read_bytes()) == 1000  # reported, not deleted


def test_resume_from_an_older_checkpoint_refuses_newer_ones_beside_it(data_dir, tmp_path, capsys):
    log_dir = tmp_path / "log"
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--stop-at-step", "6", "--save-every", "3")) == 0
    before = sorted(p.name for p in log_dir.iterdir())
    assert train_gpt2.main(tiny_args(data_dir, log_dir, "--resume", str(log_dir / "ckpt_000003.pt"))) == 2
    assert "holds checkpoints newer than" in capsys.readouterr().err
    assert sorted(p.name for p in log_dir.iterdir()) == before
    # Into another log dir it goes ahead.
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "other", "--resume", str(log_dir / "ckpt_000003.pt"),
                                     "--stop-at-step", "4")) == 0


def test_a_repeated_sigterm_is_ignored_a_second_ctrl_c_is_not():
    # raise_signal runs the handler in this thread before it returns (os.kill may be delivered to
    # another of the process's threads, and the handler run later).
    with train_gpt2.StopSignals(announce=False) as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the same preemption, delivered again
        assert stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_ddp_two_processes_match_one_with_accumulation(data_dir, tmp_path):
    """torchrun with 2 gloo processes, micro-batch 4 each, equals 1 process accumulating 2 micro-batches."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["--max-steps", "6", "--eval-every", "6", "--save-every", "6"]
    # --val-steps counts micro-batches per rank: 4 in one process read the 2 x 2 of two ranks.
    assert train_gpt2.main(tiny_args(data_dir, single, *common, "--val-steps", "4")) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO_ROOT, "train_gpt2.py"), *tiny_args(data_dir, ddp, *common)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    header = train_gpt2.read_metrics(ddp / "metrics.jsonl")[0]
    assert header["world_size"] == 2 and header["grad_accum_steps"] == 1
    assert train_gpt2.read_metrics(single / "metrics.jsonl")[0]["grad_accum_steps"] == 2
    assert_same_run(single, ddp, steps=6, tolerance=1e-5)


def test_a_checkpoint_that_another_rank_cannot_see_stops_the_run(tmp_path, monkeypatch):
    """Two ranks on two nodes without shared storage: this rank sees the checkpoint, the other does not."""
    checkpoint = tmp_path / "ckpt_000006.pt"
    checkpoint.write_bytes(b"")
    two_ranks = train_gpt2.Distributed(rank=0, local_rank=0, world_size=2)
    monkeypatch.setattr(train_gpt2, "all_reduce_sum", lambda values, device: [v + 0.0 for v in values])  # the other rank adds 0
    with pytest.raises(TrainError, match=r"ckpt_000006\.pt is not visible to every rank: .*--log-dir must be on storage"):
        train_gpt2.check_visible_to_every_rank(checkpoint, two_ranks, torch.device("cpu"))
    monkeypatch.setattr(train_gpt2, "all_reduce_sum", lambda values, device: [v + 1.0 for v in values])  # the other sees it
    train_gpt2.check_visible_to_every_rank(checkpoint, two_ranks, torch.device("cpu"))


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    state = train_gpt2.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3).tolist())
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    train_gpt2.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == expected
