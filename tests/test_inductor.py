"""The GPU recipe rehearsed on CPU: torch.compile's default backend (inductor, which compiles C++
kernels for the CPU as it compiles Triton kernels for a GPU) under bf16 autocast with fused AdamW,
through training, evaluation, checkpoints and a resume; DDP over the compiled model; and
hellaswag.py and generate.py compiled. A recipe that breaks a graph, recompiles at every step or
cannot save what it trained fails here, before it costs GPU hours.

Every inductor test lives in this module, so that its cost is visible: inductor's compiles take
tens of seconds each on a CPU (about 35 s for the tiny model's train and eval graphs on 2 free
cores), so one compiled run serves most assertions and there is one torchrun launch. Inductor's
cache (torch's default, in the temporary folder) makes a second session faster. FSDP2's bf16
policy, which needs no compiler to rehearse, is tested in tests/test_distributed.py.
"""

import json
import math
import subprocess

import pytest
import torch
from torch._dynamo.utils import counters

import generate
import hellaswag
import train_gpt2
from test_distributed import BF16_LOSS_TOLERANCE, ENV, TIMEOUT_S, TORCHRUN, TRAIN_SCRIPT, losses
from test_generate import save_checkpoint, tiny_model
from test_hellaswag import synthetic_examples, write_jsonl
from test_train import REPO_ROOT, assert_same_run, data_dir, records_by_step, tiny_args  # noqa: F401  (data_dir is a fixture)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use, found as inductor finds it (g++, or what
    torch._inductor.config.cpp.cxx names), or None where there is none."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


pytestmark = pytest.mark.skipif(cpp_compiler() is None, reason="inductor compiles C++ kernels for the CPU, and no C++ "
                                "compiler (g++) is installed here")

# The run of every compiled test: 6 steps of 2 micro-batches of 4 x 32 tokens, evaluated at steps
# 0, 3 and 6 (validation loss, HellaSwag on 8 synthetic examples, 2 samples), saved at 3 and 6.
RECIPE = ["--max-steps", "6", "--eval-every", "3", "--save-every", "3", "--compile", "--dtype", "bf16"]


class FusedAdamW(torch.optim.AdamW):
    """AdamW with fused=True whatever the caller asks: model.configure_optimizers fuses on CUDA only,
    and torch's fused kernel runs on the CPU too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "fused": True})


def run_recipe(args: list[str]) -> dict:
    """train_gpt2.main(args) in this process from a cold dynamo cache, with fused AdamW; returns
    dynamo's counters at the end of the run (graphs compiled, graph breaks), and the number of
    graphs compiled by the time each training step was logged."""
    torch._dynamo.reset()
    counters.clear()
    graphs_by_step = {}
    log = train_gpt2.MetricsLog.write

    def log_and_count(self, record_type: str, **fields):
        if record_type == "train":
            graphs_by_step[fields["step"]] = counters["stats"]["unique_graphs"]
        log(self, record_type, **fields)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim, "AdamW", FusedAdamW)
        patch.setattr(train_gpt2.MetricsLog, "write", log_and_count)
        assert train_gpt2.main(args) == 0
    return {**{kind: dict(values) for kind, values in counters.items()}, "graphs_by_step": graphs_by_step}


@pytest.fixture(scope="module")
def recipe(data_dir, tmp_path_factory):  # noqa: F811
    """The recipe run uninterrupted, and the same run stopped after step 3 and resumed."""
    root = tmp_path_factory.mktemp("recipe")
    examples = write_jsonl(root / "hellaswag.jsonl", synthetic_examples(8))
    args = [*RECIPE, "--hellaswag", "--hellaswag-data", str(examples)]
    full_counters = run_recipe(tiny_args(data_dir, root / "full", *args))
    run_recipe(tiny_args(data_dir, root / "split", *args, "--stop-at-step", "3"))
    run_recipe(tiny_args(data_dir, root / "split", *args, "--resume", "auto"))
    return {"full": root / "full", "split": root / "split", "counters": full_counters, "args": args}


def test_compiled_bf16_run_learns_evaluates_and_saves(recipe):
    full = recipe["full"]
    header = train_gpt2.read_metrics(full / "metrics.jsonl")[0]
    assert header["compile"] is True and header["config"]["dtype"] == "bf16"
    train = records_by_step(full, "train")
    assert sorted(train) == list(range(1, 7))
    train_losses = [train[step]["train_loss"] for step in sorted(train)]
    assert all(math.isfinite(loss) for loss in train_losses)
    # From about ln(50257) = 10.8 at initialisation; the tiny model at the smoke preset's learning rate loses more
    # than 1 nat in 6 steps (a run whose bf16 gradients vanished or were not applied loses none).
    assert abs(train_losses[0] - math.log(50257)) < 0.5 and train_losses[-1] < train_losses[0] - 1.0
    evals = records_by_step(full, "eval")
    assert sorted(evals) == [0, 3, 6] and evals[6]["val_loss"] < evals[0]["val_loss"]
    assert all(record["hellaswag_n"] == 8 for record in evals.values())
    samples = [r for r in train_gpt2.read_metrics(full / "metrics.jsonl") if r["type"] == "sample"]
    assert len(samples) == 6 and all(s["text"].startswith("Hello, I'm a language model,") for s in samples)
    checkpoint = torch.load(full / "ckpt_000006.pt", weights_only=True)
    assert all(group["fused"] for group in checkpoint["optimizer"]["param_groups"])


def test_compiled_run_compiles_two_whole_graphs_once(recipe):
    """One graph for the training micro-step (forward and backward) and one for evaluation (eval
    mode, no gradients), each whole and compiled once: a graph break, or a guard that fails at a
    later step or evaluation, compiles more. HellaSwag and the samples run the model eagerly."""
    stats = recipe["counters"]
    assert stats.get("graph_break", {}) == {}, stats["graph_break"]
    graphs = stats["graphs_by_step"]
    assert graphs[1] == graphs[6], f"graphs compiled by each step: {graphs}"
    assert stats["stats"]["unique_graphs"] == 2, (
        f"{stats['stats']['unique_graphs']} graphs (TORCH_LOGS=recompiles says why): a graph compiled before step 1 "
        "that training does not use? dynamo guards on the inputs' strides and aliasing, so fit_micro_batch's try "
        "must feed x and y as the data loader does (two views of one (B, T + 1) buffer), not one tensor twice")


def test_compiled_bf16_run_resumes(recipe):
    """A run stopped after step 3 and resumed (with fused AdamW's state) continues the uninterrupted
    one, to float rounding, not to the bit: inductor's CPU kernels add the embedding's gradient
    rows with atomic adds across threads, as its GPU kernels do, so even two uninterrupted
    compiled runs can differ in the last bits (eager runs do not: tests/test_distributed.py)."""
    assert_same_run(recipe["full"], recipe["split"], steps=6, tolerance=BF16_LOSS_TOLERANCE)


def test_ddp_over_the_compiled_model_matches_one_process(recipe, data_dir, tmp_path):  # noqa: F811
    """torchrun, 2 gloo ranks of micro-batch 4 with DDP wrapping the compiled model: the losses of
    one process accumulating the same 2 micro-batches per step."""
    log_dir, console = tmp_path / "ddp", tmp_path / "ddp.txt"
    with open(console, "w") as out:
        proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", TRAIN_SCRIPT,
                               *tiny_args(data_dir, log_dir, *recipe["args"])],
                              cwd=REPO_ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT, timeout=2 * TIMEOUT_S)
    assert proc.returncode == 0, console.read_text()[-3000:]
    header = train_gpt2.read_metrics(log_dir / "metrics.jsonl")[0]
    assert header["world_size"] == 2 and header["grad_accum_steps"] == 1 and header["compile"] is True
    got, expected = losses(log_dir), losses(recipe["full"])
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    worst = max(abs(got[step][0] - expected[step][0]) for step in expected)
    worst_norm = max(abs(got[step][1] / expected[step][1] - 1) for step in expected)
    print(f"\nDDP vs one process, bf16 compiled: losses differ by up to {worst:.2e}, gradient norms by {worst_norm:.2e}")
    assert worst <= BF16_LOSS_TOLERANCE, f"losses differ by up to {worst}: {got} vs {expected}"
    # The gradient norm shows a gradient scaled wrongly (Adam's step would hide it from the loss).
    assert worst_norm <= 10 * BF16_LOSS_TOLERANCE, f"gradient norms differ by up to {worst_norm:.2e} (relative)"


def test_hellaswag_compiled_with_inductor_scores_as_eager(tmp_path):
    checkpoint = save_checkpoint(tiny_model(), tmp_path / "tiny.pt")
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(9))
    torch._dynamo.reset()
    counters.clear()
    results = {}
    for flag in ("--no-compile", "--compile"):
        out = tmp_path / f"{flag}.json"
        # 200 tokens per forward pass: several batch shapes, which the dynamic-shape graph all serves.
        hellaswag.main(["-m", checkpoint, "--data", str(data), "-d", "cpu", "--batch-tokens", "200", flag, "--out", str(out)])
        results[flag] = json.loads(out.read_text())["predictions"]
    assert counters["inductor"], "inductor compiled nothing"
    eager, compiled = results["--no-compile"], results["--compile"]
    assert [(p["pred"], p["pred_norm"]) for p in compiled] == [(p["pred"], p["pred_norm"]) for p in eager]
    # Inductor's fused kernels sum in another order: each ending's summed loss (about 11 nats for
    # each of its up to 15 tokens) agrees to 1e-4, a few times fp32's rounding of such sums, and the
    # bound that tests/test_hellaswag.py holds eager scoring to against its reference.
    for a, b in zip(compiled, eager):
        assert a["sum_losses"] == pytest.approx(b["sum_losses"], abs=1e-4)


def test_generate_compiled_with_inductor_gives_the_eager_tokens(tmp_path):
    checkpoint = save_checkpoint(tiny_model(), tmp_path / "tiny.pt")
    torch._dynamo.reset()
    counters.clear()
    # Greedy, and sampled: a graph of its own.
    for extra in (["--temperature", "0"], ["--top-k", "20", "--seed", "2"]):
        args = ["-m", checkpoint, "--prompt", "The", "--num-samples", "2", "--max-new-tokens", "20", "--no-stop", "-d", "cpu", *extra]
        assert generate.main([*args, "--compile"]) == generate.main(args)
    assert counters["inductor"], "inductor compiled nothing"
