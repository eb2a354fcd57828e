"""--optimizer muon (issue 18): Muon on the transformer blocks' matrices, AdamW on the rest, one
schedule for both, both states through the checkpoint."""

from dataclasses import replace

import pytest
import torch

import train_gpt2
from model import GPT, GPTConfig
from test_train import assert_same_run, data_dir, records_by_step, tiny_args  # noqa: F401  (data_dir is a fixture)
from train_gpt2 import MuonWithAdamW, TrainConfig, build_optimizer, get_lr

CPU = torch.device("cpu")


@pytest.mark.parametrize("preset", ["tiny", "tiny-2.5"])
def test_muon_takes_every_block_matrix_and_nothing_else(preset):
    model = GPT(GPTConfig.from_preset(preset))
    optimizer = build_optimizer(TrainConfig(optimizer="muon"), model, CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): name for name, p in model.named_parameters()}
    muon = [names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]]
    adamw = [names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]]
    layers = model.config.n_layer
    expected = {f"transformer.h.{i}.{m}.weight" for i in range(layers)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(muon) == expected and len(muon) == 4 * layers
    # Every parameter in exactly one group of one optimizer: the embeddings (wte, tied to lm_head),
    # gains and biases go to AdamW.
    everything = muon + adamw
    assert len(everything) == len(set(everything)) and set(everything) == set(names.values())
    assert "transformer.wte.weight" in adamw and all(model.get_parameter(n).dim() < 2 for n in adamw if ".h." in n)
    # AdamW's groups keep their weight-decay rule: decay on the embeddings only, none on 1-D parameters.
    decayed, plain = optimizer.adamw.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert plain["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.1
    assert optimizer.muon.param_groups[0]["adjust_lr_fn"] == "original"


def test_adamw_stays_the_default_and_takes_everything():
    model = GPT(GPTConfig.from_preset("tiny"))
    optimizer = build_optimizer(train_gpt2.parse_config([]), model, CPU)
    assert type(optimizer) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_schedule_scales_both_optimizers(data_dir, tmp_path, monkeypatch):  # noqa: F811
    seen = []
    real_step = MuonWithAdamW.step

    def recording_step(self):
        seen.append(([g["lr"] for g in self.muon.param_groups], [g["lr"] for g in self.adamw.param_groups]))
        real_step(self)

    monkeypatch.setattr(MuonWithAdamW, "step", recording_step)
    args = tiny_args(data_dir, tmp_path / "log", "--optimizer", "muon", "--muon-lr", "0.02", "--stop-at-step", "4")
    assert train_gpt2.main(args) == 0
    cfg = train_gpt2.parse_config(args)
    assert len(seen) == 4
    for step, (muon_lrs, adamw_lrs) in enumerate(seen):
        assert muon_lrs == [pytest.approx(0.02 * get_lr(step, cfg) / cfg.max_lr, rel=1e-12)]
        assert adamw_lrs == [pytest.approx(get_lr(step, cfg), rel=1e-12)] * 2
    assert seen[0][0][0] < seen[1][0][0] and seen[3][0][0] < seen[1][0][0]  # warm-up, then decay


def test_muon_run_resumes_exactly_and_records_its_optimizer(data_dir, tmp_path, capsys):  # noqa: F811
    full, split = tmp_path / "full", tmp_path / "split"
    muon = ("--optimizer", "muon", "--muon-lr", "0.02", "--muon-weight-decay", "0.01")
    assert train_gpt2.main(tiny_args(data_dir, full, *muon)) == 0
    assert train_gpt2.main(tiny_args(data_dir, split, *muon, "--stop-at-step", "5")) == 0
    checkpoint = torch.load(split / "ckpt_000005.pt", weights_only=True)
    assert set(checkpoint["optimizer"]) == {"muon", "adamw"}
    assert all("momentum_buffer" in s for s in checkpoint["optimizer"]["muon"]["state"].values())
    assert train_gpt2.main(tiny_args(data_dir, split, *muon, "--resume", "auto")) == 0
    # One process on a CPU computes the same thing each time: a resumed run is exact, not close.
    assert_same_run(full, split, steps=12, tolerance=0.0)
    train = records_by_step(full, "train")
    assert train[12]["train_loss"] < train[1]["train_loss"] - 1.0
    header = train_gpt2.read_metrics(full / "metrics.jsonl")[0]
    assert header["type"] == "header"
    assert {k: header["config"][k] for k in ("optimizer", "muon_lr", "muon_momentum", "muon_weight_decay", "muon_adjust_lr")} == \
        {"optimizer": "muon", "muon_lr": 0.02, "muon_momentum": 0.95, "muon_weight_decay": 0.01, "muon_adjust_lr": "original"}
    # Its checkpoint cannot be continued by AdamW (nor an AdamW one by Muon): one line, exit 2.
    capsys.readouterr()
    assert train_gpt2.main(tiny_args(data_dir, split, "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained with --optimizer muon" in err and "resume with --optimizer muon" in err


def test_muon_with_fsdp_is_refused_in_one_line(data_dir, tmp_path, capsys):  # noqa: F811
    assert train_gpt2.main(tiny_args(data_dir, tmp_path / "log", "--optimizer", "muon", "--fsdp")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --optimizer muon does not work with --fsdp")
    assert not (tmp_path / "log").exists()


def test_fp16_loss_scaling_steps_or_skips_both_optimizers():
    """The GradScaler takes MuonWithAdamW as one optimizer: it unscales every gradient, and a
    gradient that overflowed skips Muon's and AdamW's updates alike."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=256))
    optimizer = build_optimizer(TrainConfig(optimizer="muon"), model, CPU)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    matrix, embedding = model.transformer.h[0].attn.c_attn.weight, model.transformer.wte.weight
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    model(tokens[:, :-1], tokens[:, 1:])[1].backward()
    true_grad = matrix.grad.clone()
    for overflow in (True, False):
        before = [matrix.detach().clone(), embedding.detach().clone()]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(model(tokens[:, :-1], tokens[:, 1:])[1]).backward()
        if overflow:
            embedding.grad[0, 0] = float("inf")
        scaler.unscale_(optimizer)
        torch.testing.assert_close(matrix.grad, true_grad)  # unscaled, Muon's parameters too
        scaler.step(optimizer)
        scaler.update()
        changed = [not torch.equal(b, p) for b, p in zip(before, (matrix, embedding))]
        assert changed == ([False, False] if overflow else [True, True])


def test_bench_times_the_optimizer_step_of_both():
    import bench

    cfg = bench.BenchConfig(model="tiny", micro_batch=2, seq_len=16, steps=2, warmup_steps=1)
    for optimizer in ("adamw", "muon"):
        result = bench.measure(replace(cfg, optimizer=optimizer), replace(bench.FULL, compile=False), CPU)
        assert 0 < result["optimizer_ms"] < result["step_ms"]
        assert result["optimizer_share"] == pytest.approx(result["optimizer_ms"] / result["step_ms"])
    assert "(" in bench.format_row(result) and "%)" in bench.format_row(result)


def test_compare_optimizers_counts_steps_to_the_adamw_target(tmp_path):
    """The table's numbers from metrics.jsonl files: the target is each seed's AdamW final loss, a
    run that never reaches it counts as None, one cut short has no final loss."""
    import json

    import compare_optimizers

    curves = {("adamw", 1): [(0, 10.0), (2, 6.0), (4, 5.0)], ("muon", 1): [(0, 10.0), (2, 4.9), (4, 4.0)],
              ("adamw", 2): [(0, 10.0), (2, 6.0), (4, 5.0)], ("muon", 2): [(0, 10.0), (2, 6.0), (4, 5.5)],
              ("adamw", 3): [(0, 10.0), (2, 6.0)], ("muon", 3): [(0, 10.0), (2, 4.0), (4, 3.0)]}
    for (name, seed), curve in curves.items():
        log_dir = compare_optimizers.run_dir(tmp_path, name, seed)
        log_dir.mkdir()
        lines = [{"type": "header", "config": {}}] + [{"type": "eval", "step": s, "val_loss": v} for s, v in curve]
        (log_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = compare_optimizers.summarize(tmp_path, [1, 2, 3], max_steps=4)
    assert [(r["target"], r["adamw_steps"], r["muon_steps"], r["ratio"]) for r in rows] == \
        [(5.0, 4, 2, 0.5), (5.0, 4, None, None), (None, None, None, None)]
    table = compare_optimizers.format_table(rows, 4, 0.75)
    assert table.endswith("within 75% of its steps in 1 of 3 seeds")
    assert compare_optimizers.main(["--data", str(tmp_path), "--out", str(tmp_path), "--max-steps", "4",
                                    "--seeds", "1", "2", "--summary-only"]) == 0
    assert (tmp_path / "val_loss.png").stat().st_size > 10_000
