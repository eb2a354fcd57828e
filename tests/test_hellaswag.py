import functools
import io
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from torch.nn import functional as F

import hellaswag
from conftest import REPO_ROOT, shared_file
from model import GPT, GPTConfig, get_tokenizer

BLOCK_SIZE = 64
TORCHRUN_TIMEOUT_S = 180
WORDS = "the a man woman dog ball runs jumps into over slowly quickly then and water red house street".split()


def tiny_model() -> GPT:
    return GPT(GPTConfig(block_size=BLOCK_SIZE, n_layer=2, n_head=4, n_embd=64), seed=0).eval()


def synthetic_examples(n: int, seed: int = 0) -> list[dict]:
    """Endings of 1 to 12 words, so rows differ in length and padding matters; example 2 has a
    context far longer than BLOCK_SIZE tokens."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        ctx_words = 90 if i == 2 else rng.randint(2, 15)
        examples.append(
            {
                "ind": 100 + i,
                "ctx": " ".join(rng.choice(WORDS) for _ in range(ctx_words)).capitalize() + ".",
                "endings": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + "." for _ in range(4)],
                "label": rng.randrange(4),
            }
        )
    return examples


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(example) + "\n" for example in examples))
    return path


def torchrun_two_ranks(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """torchrun with 2 CPU ranks (gloo), one thread each; a run that hangs fails the test after
    TORCHRUN_TIMEOUT_S, its ranks stopped with it."""
    env = {k: v for k, v in env.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its ranks on SIGTERM; SIGKILL would leave them running
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun ran past {TORCHRUN_TIMEOUT_S} s (a collective that one rank never joined?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    m = tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": m.state_dict(), "model_config": m.config.to_dict()}, path)
    return path


def reference_scores(model: GPT, examples: list[dict]) -> list[tuple[int, int, list[float], list[float]]]:
    """The plain reference: one example at a time, its 4 rows run one by one with no padding, loss
    over the ending tokens only; rows longer than block_size keep their last tokens."""
    enc = get_tokenizer()
    results = []
    with torch.no_grad():
        for example in examples:
            ctx = enc.encode(example["ctx"])
            sums, means = [], []
            for ending in example["endings"]:
                ending_tokens = enc.encode(" " + ending)
                row = (ctx + ending_tokens)[-model.config.block_size :]
                num_scored = min(len(ending_tokens), len(row) - 1)
                logits, _ = model(torch.tensor([row]))
                losses = F.cross_entropy(logits[0, :-1], torch.tensor(row[1:]), reduction="none")[-num_scored:]
                sums.append(losses.sum().item())
                means.append(losses.mean().item())
            results.append((min(range(4), key=sums.__getitem__), min(range(4), key=means.__getitem__), sums, means))
    return results


def assert_matches_reference(predictions, reference):
    assert len(predictions) == len(reference)
    for prediction, (pred, pred_norm, sums, means) in zip(predictions, reference):
        assert (prediction["pred"], prediction["pred_norm"]) == (pred, pred_norm)
        assert torch.allclose(torch.tensor(prediction["sum_losses"]), torch.tensor(sums), atol=1e-4)
        assert torch.allclose(torch.tensor(prediction["mean_losses"]), torch.tensor(means), atol=1e-4)


def test_batched_scoring_matches_one_example_at_a_time():
    model = tiny_model()
    examples = synthetic_examples(9)
    # An ending longer than the context window fills its whole row, so the row's first token (which
    # nothing predicts) is the one ending token that is not scored.
    examples[4]["endings"][1] = " ".join(WORDS[i % len(WORDS)] for i in range(80)) + "."
    rows, num_ending_tokens = hellaswag.render_examples(examples, get_tokenizer())
    assert len(set(map(len, rows))) > 10 and max(map(len, rows)) > BLOCK_SIZE  # padding and truncation both matter
    assert num_ending_tokens[4 * 4 + 1] > BLOCK_SIZE and sum(n >= BLOCK_SIZE for n in num_ending_tokens) == 1
    reference = reference_scores(model, examples)
    model.train()  # evaluate switches to eval mode and back
    result = hellaswag.evaluate(model, examples, "cpu", batch_tokens=200)  # a few rows per forward pass
    assert model.training
    assert_matches_reference(result.predictions, reference)
    assert [p["index"] for p in result.predictions] == list(range(9))
    assert [p["ind"] for p in result.predictions] == [e["ind"] for e in examples]
    num_correct = sum(pred == e["label"] for (pred, _, _, _), e in zip(reference, examples))
    num_correct_norm = sum(pred_norm == e["label"] for (_, pred_norm, _, _), e in zip(reference, examples))
    assert (result.n, result.num_correct, result.num_correct_norm) == (9, num_correct, num_correct_norm)
    assert result.acc == num_correct / 9 and result.acc_norm == num_correct_norm / 9
    # A compiled model (the eager backend: no C++ toolchain needed) is looked through to the GPT.
    compiled = hellaswag.evaluate(torch.compile(tiny_model(), backend="eager"), examples, "cpu", batch_tokens=200)
    assert [p["pred"] for p in compiled.predictions] == [p["pred"] for p in result.predictions]


def test_predictions_do_not_depend_on_batching_or_order():
    model = tiny_model()
    examples = synthetic_examples(12)
    # One row per forward pass (batch size 1), and up to 16 examples' rows per forward pass.
    one, sixteen = (hellaswag.evaluate(model, examples, "cpu", batch_tokens=tokens) for tokens in (1, 16 * 4 * BLOCK_SIZE))
    shuffled = random.Random(1).sample(examples, len(examples))  # other rows share each forward pass
    by_ind = {p["ind"]: p for p in hellaswag.evaluate(model, shuffled, "cpu", batch_tokens=100).predictions}
    for a, b, c in zip(one.predictions, sixteen.predictions, (by_ind[e["ind"]] for e in examples)):
        assert (a["pred"], a["pred_norm"]) == (b["pred"], b["pred_norm"]) == (c["pred"], c["pred_norm"])
        for key in ("sum_losses", "mean_losses"):
            assert torch.allclose(torch.tensor(a[key]), torch.tensor(b[key]), atol=1e-5)
            assert torch.allclose(torch.tensor(a[key]), torch.tensor(c[key]), atol=1e-5)


def test_rows_are_packed_by_length_and_only_scored_positions_are_projected():
    model = tiny_model()
    examples = synthetic_examples(10)
    rows, num_ending_tokens = hellaswag.render_examples(examples, get_tokenizer())
    shapes, projected = [], []
    model.transformer.wte.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    model.lm_head.register_forward_hook(lambda module, args, output: projected.append(args[0].shape[0]))
    hellaswag.evaluate(model, examples, "cpu", batch_tokens=256)
    assert sum(R for R, _ in shapes) == len(rows) == 40
    assert all(T % hellaswag.PAD_MULTIPLE_TOKENS == 0 and T <= BLOCK_SIZE and (R * T <= 256 or R == 1) for R, T in shapes)
    assert [T for _, T in shapes] == sorted((T for _, T in shapes), reverse=True)  # longest rows first
    real_tokens = sum(min(len(row), BLOCK_SIZE) for row in rows)
    assert real_tokens / sum(R * T for R, T in shapes) > 0.8  # 0.24 in unsorted batches of 8 examples padded to 64
    # The vocabulary projection sees the scored positions only: each row's ending tokens (fewer where
    # a row is truncated to BLOCK_SIZE and its first token is an ending token).
    num_scored = [min(n, min(len(row), BLOCK_SIZE) - 1) for row, n in zip(rows, num_ending_tokens)]
    assert projected == [T for T in projected if T > 0] and sum(projected) == sum(num_scored) < real_tokens / 2

    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], list(range(100, 190))]
    packed = hellaswag.pack(rows, [2, 3, 10], block_size=70, batch_tokens=80)
    # Longest first: the 90-token row is cut to its last 70 tokens (70 is the cap, not a multiple of
    # 8) alone in its pass; the other two share one pass of 16 = 9 rounded up to a multiple of 8.
    assert [(b.num_rows, b.seq_len) for b in packed.batches] == [(1, 70), (2, 16)]
    assert packed.tokens[:70].tolist() == list(range(120, 190))
    assert packed.tokens[70:86].tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12] + [0] * 7
    assert packed.tokens[86:].tolist() == [1, 2, 3] + [0] * 13
    assert packed.num_scored.tolist() == [2, 3, 10]
    assert packed.targets.tolist() == list(range(180, 190)) + [10, 11, 12, 2, 3]
    assert packed.target_rows.tolist() == [2] * 10 + [1] * 3 + [0] * 2
    # positions are flat within their pass: each one predicts the token after it
    assert packed.positions.tolist() == list(range(59, 69)) + [5, 6, 7, 16, 17]
    assert [(b.token_start, b.target_start, b.target_end) for b in packed.batches] == [(0, 0, 10), (70, 10, 15)]


def test_default_batch_tokens_depend_on_the_device():
    assert hellaswag.default_batch_tokens("cuda:3") == hellaswag.GPU_BATCH_TOKENS == 32768
    assert hellaswag.default_batch_tokens(torch.device("cpu")) == hellaswag.default_batch_tokens("mps") == hellaswag.CPU_BATCH_TOKENS
    # Left out, batch_tokens is the device's default: on CPU the 40 rows of 10 examples take several
    # passes of at most CPU_BATCH_TOKENS tokens (a GPU's default would pack them into one).
    model, shapes = tiny_model(), []
    model.transformer.wte.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    examples = synthetic_examples(40)
    hellaswag.evaluate(model, examples, "cpu")
    assert sum(R for R, _ in shapes) == 160 and len(shapes) > 1
    assert all(R * T <= hellaswag.CPU_BATCH_TOKENS for R, T in shapes)


def test_reference_scorer_is_build_nanogpts_scoring():
    """evaluate_reference, which --compare times evaluate against, pads each example's 4 rows to the
    longest and scores every position: the same losses as the unpadded rows one by one."""
    model = tiny_model()
    examples = synthetic_examples(6)
    examples[4]["endings"][1] = " ".join(WORDS[i % len(WORDS)] for i in range(80)) + "."  # an ending that fills its row
    model.train()
    result = hellaswag.evaluate_reference(model, examples, "cpu")
    assert model.training
    assert_matches_reference(result.predictions, reference_scores(model, examples))
    assert (result.n, result.num_correct) == (6, sum(p["pred"] == e["label"] for p, e in zip(result.predictions, examples)))


def test_compare_times_both_scorings_and_fails_when_they_disagree(tmp_path, checkpoint, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(6))
    out = tmp_path / "compare.json"
    result = hellaswag.main(["-m", str(checkpoint), "--data", str(data), "-d", "cpu", "--compare", "--compare-rounds", "2",
                             "--out", str(out)])
    printed = capsys.readouterr().out
    assert "different predictions: 0 of 6 examples" in printed and printed.count("round ") == 2
    saved = json.loads(out.read_text())
    assert (saved["dtype"], saved["batch_tokens"], saved["n"]) == ("fp32", hellaswag.CPU_BATCH_TOKENS, 6)
    rounds = saved["compare"]["rounds_s"]
    assert len(rounds) == 2 and all(set(times) == {"reference", "ours"} and min(times.values()) > 0 for times in rounds)
    assert list(rounds[0]) == ["reference", "ours"] and list(rounds[1]) == ["ours", "reference"]  # alternating order
    assert saved["compare"]["speedup"] == pytest.approx(saved["compare"]["reference_s"] / saved["compare"]["ours_s"])
    assert saved["compare"]["num_different"] == 0 and saved["compare"]["max_loss_difference"] < 1e-4
    assert [p["pred"] for p in saved["predictions"]] == [p["pred"] for p in result.predictions]

    # A reference that picks other endings (here: its losses reversed) is reported as a failure in fp32.
    reference = hellaswag.evaluate_reference

    def reversed_reference(*args, **kwargs):
        result = reference(*args, **kwargs)
        for p in result.predictions:
            p["sum_losses"], p["pred"] = p["sum_losses"][::-1], 3 - p["pred"]
        return result

    monkeypatch.setattr(hellaswag, "evaluate_reference", reversed_reference)
    with pytest.raises(SystemExit, match="--compare: in fp32 the two scorings chose differently on [1-6] examples"):
        hellaswag.main(["-m", str(checkpoint), "--data", str(data), "-d", "cpu", "--compare", "--compare-rounds", "1"])

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as excinfo:
        hellaswag.parse_args(["--compare"])
    assert excinfo.value.code == 2 and "--compare times one process" in capsys.readouterr().err


@pytest.mark.parametrize("flag, autocast_dtype", [([], None), (["--dtype", "fp32"], None), (["--dtype", "bf16"], torch.bfloat16)])
def test_dtype_flag_sets_autocast_and_is_recorded(tmp_path, checkpoint, capsys, monkeypatch, flag, autocast_dtype):
    seen = []
    evaluate = hellaswag.evaluate

    def recording_evaluate(*args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(hellaswag, "evaluate", recording_evaluate)
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(2))
    out = tmp_path / "hs.json"
    hellaswag.main(["-m", str(checkpoint), "--data", str(data), "-d", "cpu", "--out", str(out), *flag])
    name = "bf16" if autocast_dtype is torch.bfloat16 else "fp32"  # auto is fp32 on CPU
    assert seen == [autocast_dtype] and json.loads(out.read_text())["dtype"] == name
    assert f"dtype {name}," in capsys.readouterr().out


def test_vocabulary_projection_runs_in_fp32_under_autocast():
    model = tiny_model()
    dtypes = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda module, args, output: dtypes.append(("body", output.dtype)))
    model.lm_head.register_forward_hook(lambda module, args, output: dtypes.append(("projection", output.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = hellaswag.evaluate(model, synthetic_examples(3), "cpu")
    assert set(dtypes) == {("body", torch.bfloat16), ("projection", torch.float32)} and result.n == 3


def test_compile_traces_once_for_all_batch_shapes(monkeypatch):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    # The eager backend behind a counter: dynamo traces as it would for inductor, without a compiler.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    torch._dynamo.reset()
    model, examples = tiny_model(), synthetic_examples(9)
    packed = hellaswag.pack(*hellaswag.render_examples(examples, get_tokenizer()), BLOCK_SIZE, 200)
    assert len({(batch.num_rows, batch.seq_len) for batch in packed.batches}) >= 4
    compiled = hellaswag.evaluate(model, examples, "cpu", batch_tokens=200, use_compile=True)
    assert len(graphs) == 1  # dynamic shapes: one trace serves every (rows, tokens) shape
    eager = hellaswag.evaluate(model, examples, "cpu", batch_tokens=200)
    assert [(p["pred"], p["pred_norm"]) for p in compiled.predictions] == [(p["pred"], p["pred_norm"]) for p in eager.predictions]


def test_cli_writes_predictions_and_prints_result_last(tmp_path, checkpoint, capsys):
    examples = synthetic_examples(6)
    data = write_jsonl(tmp_path / "val.jsonl", examples)
    out = tmp_path / "results" / "hs.json"
    result = hellaswag.main(["-m", str(checkpoint), "--data", str(data), "--out", str(out), "-d", "cpu", "--batch-tokens", "256"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"hellaswag acc={result.acc:.4f} acc_norm={result.acc_norm:.4f} n=6"
    saved = json.loads(out.read_text())
    assert saved["n"] == 6 and saved["model"] == str(checkpoint)
    assert saved["acc"] == sum(p["pred"] == p["label"] for p in saved["predictions"]) / 6
    assert saved["acc_norm"] == sum(p["pred_norm"] == p["label"] for p in saved["predictions"]) / 6
    assert [p["label"] for p in saved["predictions"]] == [e["label"] for e in examples]
    assert_matches_reference(saved["predictions"], reference_scores(tiny_model(), examples))
    assert not list(out.parent.glob("*.tmp"))

    hellaswag.main(["-m", str(checkpoint), "--data", str(data), "--limit", "2", "-d", "cpu"])
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(" n=2")


def test_two_gloo_ranks_give_the_same_counts_as_one(tmp_path, checkpoint):
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(7))  # 4 + 3: unequal shares
    single = hellaswag.main(["-m", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "one.json"), "-d", "cpu"])
    # The two ranks read the same file from the download cache (no --data): rank 0 finds it there
    # and does not download, and the other rank waits for it at a barrier.
    cache = tmp_path / "cache"
    cache.mkdir()
    hellaswag.default_data_path(cache).write_bytes(data.read_bytes())
    proc = torchrun_two_ranks(["hellaswag.py", "-m", str(checkpoint), "--cache-dir", str(cache), "--out", str(tmp_path / "two.json"),
                               "-d", "cpu", "--batch-tokens", "64"], os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"hellaswag acc={single.acc:.4f} acc_norm={single.acc_norm:.4f} n=7"
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    for key in ("n", "num_correct", "num_correct_norm", "acc", "acc_norm"):
        assert one[key] == two[key]
    assert [p["index"] for p in two["predictions"]] == list(range(7))
    # The same predictions and losses, although one process packs all 28 rows into one forward pass
    # and each rank packs its rows into passes of 64 tokens.
    assert [(p["pred"], p["pred_norm"]) for p in one["predictions"]] == [(p["pred"], p["pred_norm"]) for p in two["predictions"]]
    for a, b in zip(one["predictions"], two["predictions"]):
        assert a["sum_losses"] == pytest.approx(b["sum_losses"], abs=1e-5)


FSDP_SCRIPT = """
import json, sys
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
import hellaswag
from test_hellaswag import synthetic_examples, tiny_model

dist.init_process_group("gloo")
model = tiny_model()
for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
result = hellaswag.evaluate(model, synthetic_examples(7), "cpu", batch_tokens=64, rank=dist.get_rank(), world_size=2)
assert "hidden_states" not in vars(model) and "logits" not in vars(model)  # FSDP's patches are undone
with open(f"{sys.argv[1]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(result.predictions, f)
dist.barrier()  # no rank tears gloo down while the other may still be finishing FSDP's last collective
dist.destroy_process_group()
"""


def test_fsdp_sharded_model_with_unequal_forward_counts(tmp_path):
    """Under FSDP every forward pass is a collective: a rank with fewer passes runs empty ones
    rather than hang, and the sharded weights are gathered around hidden_states() and logits()."""
    examples = synthetic_examples(7)
    rows = [hellaswag.render_examples(examples[rank::2], get_tokenizer()) for rank in range(2)]
    assert len({len(hellaswag.pack(*share, BLOCK_SIZE, 64).batches) for share in rows}) == 2
    script = tmp_path / "fsdp_hellaswag.py"
    script.write_text(FSDP_SCRIPT)
    proc = torchrun_two_ranks([str(script), str(tmp_path)],
                              {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = sorted((p for rank in range(2) for p in json.loads((tmp_path / f"rank{rank}.json").read_text())), key=lambda p: p["index"])
    assert_matches_reference(sharded, reference_scores(tiny_model(), examples))


def test_real_validation_file(tmp_path, checkpoint):
    path = shared_file("hellaswag/hellaswag_val_text.jsonl")
    examples = list(hellaswag.iterate_examples(path, limit=40))
    assert len(examples) == 40 and examples[0]["ctx"].startswith("A man is sitting on a roof.")
    out = tmp_path / "real.json"
    result = hellaswag.main(["-m", str(checkpoint), "--data", str(path), "--limit", "40", "--out", str(out), "-d", "cpu"])
    assert result.n == 40
    saved = json.loads(out.read_text())
    assert [p["label"] for p in saved["predictions"]] == [e["label"] for e in examples]
    assert [p["ind"] for p in saved["predictions"]] == [e["ind"] for e in examples]
    # Real contexts run past the tiny model's 64 positions, so truncation is exercised on real text.
    assert_matches_reference(saved["predictions"], reference_scores(tiny_model(), examples))


GOOD = json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0})


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"ctx": "A man", "endings": ["a", "b"', "not valid JSON"),
        (json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}), "label 4 is not one of 0, 1, 2, 3"),
        (json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "1"}), "label '1' is not one of"),
        (json.dumps({"ctx": "A man", "endings": ["a", "b", "c"], "label": 0}), "expected exactly 4 endings .*found 3 endings"),
        (json.dumps({"endings": ["a", "b", "c", "d"], "label": 0}), "'ctx' must be a non-empty string"),
        (json.dumps({"ctx": "", "endings": ["a", "b", "c", "d"], "label": 0}), "'ctx' must be a non-empty string"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, checkpoint, bad_line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(f"{GOOD}\n\n{bad_line}\n{GOOD}\n")  # the bad example is on line 3
    with pytest.raises(hellaswag.HellaSwagDataError, match=f"bad.jsonl:3: {message}"):
        list(hellaswag.iterate_examples(data))
    assert len(list(hellaswag.iterate_examples(data, limit=1))) == 1  # the good line before it is fine
    with pytest.raises(SystemExit, match=f"bad.jsonl:3: {message}"):
        hellaswag.main(["-m", str(checkpoint), "--data", str(data), "-d", "cpu"])


def test_missing_data_file_and_bad_flags(tmp_path, checkpoint, capsys):
    with pytest.raises(SystemExit, match=r"--data .*nope\.jsonl: no such file"):
        hellaswag.main(["-m", str(checkpoint), "--data", str(tmp_path / "nope.jsonl"), "-d", "cpu"])
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(1))
    with pytest.raises(SystemExit, match=r"--model .*missing\.pt: could not load it"):
        hellaswag.main(["-m", str(tmp_path / "missing.pt"), "--data", str(data), "-d", "cpu"])
    for flag in ("--limit", "--batch-tokens", "--compare-rounds"):
        with pytest.raises(SystemExit) as excinfo:
            hellaswag.parse_args([flag, "0"])
        assert excinfo.value.code == 2
        assert f"error: argument {flag}: must be an integer of at least 1, not 0" in capsys.readouterr().err


def test_download_once_to_a_temporary_name(tmp_path, monkeypatch):
    content = write_jsonl(tmp_path / "served.jsonl", synthetic_examples(3)).read_bytes()
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(content)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    path = hellaswag.download(cache, expected_git_sha1=hellaswag.git_blob_sha1(content))
    assert path == hellaswag.default_data_path(cache) == cache / "hellaswag_val.jsonl"
    assert path.read_bytes() == content and requested == [hellaswag.HELLASWAG_VAL_URL]
    assert sorted(p.name for p in cache.iterdir()) == ["hellaswag_val.jsonl"]  # no temporary file left
    assert hellaswag.download(cache) == path and len(requested) == 1  # cached: not downloaded again

    # The CLI without --data reads the cached file.
    out = tmp_path / "hs.json"
    checkpoint = tmp_path / "tiny.pt"
    m = tiny_model()
    torch.save({"model": m.state_dict(), "model_config": m.config.to_dict()}, checkpoint)
    assert hellaswag.main(["-m", str(checkpoint), "--cache-dir", str(cache), "--out", str(out), "-d", "cpu"]).n == 3
    assert len(requested) == 1


def test_download_refuses_a_wrong_file_and_explains_network_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b'{"truncated": '))
    cache = tmp_path / "cache"
    with pytest.raises(hellaswag.HellaSwagDataError, match=f"not the expected {hellaswag.HELLASWAG_VAL_GIT_SHA1}"):
        hellaswag.download(cache)
    assert list(cache.iterdir()) == []  # nothing saved, so the next run downloads again

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit, match="could not download https://raw.githubusercontent.com/rowanz/.*pass its path with --data"):
        hellaswag.main(["--cache-dir", str(cache), "-d", "cpu"])
