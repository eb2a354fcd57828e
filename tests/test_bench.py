import json

import pytest

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
    """Each rung differs from the one before it in exactly one setting, as the table claims."""
    keys = ("tf32", "bf16", "attention", "compile", "fused_adamw", "pad_vocab")
    for before, after in zip(bench.LADDER, bench.LADDER[1:]):
        changed = [k for k in keys if getattr(before, k) != getattr(after, k)]
        assert len(changed) == 1, (before.name, after.name, changed)
