import json
from dataclasses import replace

import pytest
import torch

import bench
from model import GPT, GPTConfig


def test_bench_measures_the_smoke_preset(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "peak_flops", lambda device: 1e12)  # pretend a known GPU peak to check MFU
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "smoke", "--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| default (fp32 on CPU)" in printed and "peak bf16 FLOP/s assumed: 1000000000000.0" in printed
    result = json.loads(out.read_text())["results"][0]
    assert result["micro_batch"] == 8 and result["tokens_per_s"] > 0
    assert result["tokens_per_s"] == pytest.approx(8 * 64 / (result["step_ms"] / 1000))
    flops_per_token = GPT(GPTConfig.from_preset("tiny", pad_vocab_multiple=64)).flops_per_token(64)
    assert result["mfu"] == pytest.approx(flops_per_token * result["tokens_per_s"] / 1e12)


def test_ladder_needs_cuda():
    with pytest.raises(SystemExit, match="run it on a CUDA device"):
        bench.main(["--ladder", "--device", "cpu"])


def test_ladder_turns_on_one_feature_per_rung():
    """Each step changes one setting, from the fp32 baseline to the full recipe plus CUDA graphs."""
    rung = bench.BASELINE
    for name, change in bench.LADDER_STEPS:
        assert len(change) == 1 and getattr(rung, *change) != next(iter(change.values())), name
        rung = replace(rung, **change)
    assert replace(rung, name=bench.FULL.name, attention="default", compile_mode="default") == bench.FULL


def test_every_ladder_rung_runs_its_steps():
    """Each rung's step function runs repeatedly (warm-up and timed steps), as on a GPU; compiled
    rungs run eagerly here to keep the test fast, and the cuDNN backend, which a CPU lacks, fails
    in its own row instead of stopping the ladder."""
    cfg = bench.BenchConfig(model="tiny", micro_batch=2, seq_len=16, steps=2, warmup_steps=2)
    rung = bench.BASELINE
    for name, change in [(rung.name, {})] + bench.LADDER_STEPS:
        rung = replace(rung, name=name, **change)
        result = bench.run_rung(cfg, replace(rung, compile=False), torch.device("cpu"))
        if rung.attention == "cudnn":
            assert "error" in result
        else:
            assert "error" not in result and result["tokens_per_s"] > 0, result


def test_a_failing_rung_is_reported_and_the_ladder_goes_on(tmp_path, capsys, monkeypatch):
    def fake_measure(cfg, rung, device):
        if rung.name == "+ cuDNN attention":
            raise RuntimeError("No available kernel. Aborting execution.")
        if rung.name == "fp32 baseline":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return {"rung": rung.name, "micro_batch": rung.micro_batch or cfg.micro_batch, "step_ms": 100.0,
                "tokens_per_s": 1e6, "mfu": 0.5, "reserved_gib": 10.0, "peak_rss_gib": 1.0}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100's, for --dtype auto
    monkeypatch.setattr(bench, "peak_flops", lambda device: 989e12)
    monkeypatch.setattr(bench, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    out = tmp_path / "ladder.json"
    assert bench.main(["--ladder", "--larger-batch", "96", "--json-out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "| fp32 baseline                | out of memory |" in printed
    assert "| + cuDNN attention            | RuntimeError: No available kernel. Aborting execution. |" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["rung"] for r in results] == ["fp32 baseline"] + [name for name, _ in bench.LADDER_STEPS] + ["+ micro-batch 96"]
    settings = {r["rung"]: r["settings"] for r in results}
    # The baseline's out of memory says nothing about it: TF32 builds on it.
    assert settings["+ TF32 matmuls"] == {**settings["fp32 baseline"], "name": "+ TF32 matmuls", "tf32": True}
    # The failed cuDNN backend is left out of the rungs after it: they keep flash attention.
    assert settings["+ CUDA graphs"]["attention"] == "default" and settings["+ CUDA graphs"]["compile_mode"] == "reduce-overhead"
    assert results[-1]["micro_batch"] == 96 and settings["+ micro-batch 96"] == {
        **settings["+ CUDA graphs"], "name": "+ micro-batch 96", "micro_batch": 96}


def test_bench_times_a_slow_data_source_in_turn_and_prefetched(tmp_path, capsys):
    """--data-ms adds the two ways of feeding a step: on a CPU both wait for the data (the compute
    is synchronous there, so there is nothing to overlap with); each step waits at least data_ms."""
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "smoke", "--device", "cpu", "--model", "tiny", "--micro-batch", "2", "--seq-len", "16",
                       "--steps", "2", "--warmup-steps", "1", "--data-ms", "50", "--dtype", "bf16",
                       "--json-out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["rung"] for r in results] == ["default (bf16 on CPU)", "+ data 50 ms, in turn", "+ data 50 ms, prefetched"]
    assert [r["settings"]["data"] for r in results] == ["memory", "serial", "prefetch"]
    assert all(r["dtype"] == "bf16" for r in results)
    assert all(r["step_ms"] >= 50 for r in results[1:])
