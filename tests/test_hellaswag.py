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
    enc = get_tokenizer()
    lengths = [len(row) for example in examples for row in hellaswag.render_example(example, enc)[0]]
    assert len(set(lengths)) > 10 and max(lengths) > BLOCK_SIZE  # padding and truncation both matter
    reference = reference_scores(model, examples)
    model.train()  # evaluate switches to eval mode and back
    result = hellaswag.evaluate(model, examples, "cpu", batch_size=4)  # 9 = 4 + 4 + 1: a short last batch
    assert model.training
    assert_matches_reference(result.predictions, reference)
    assert [p["index"] for p in result.predictions] == list(range(9))
    assert [p["ind"] for p in result.predictions] == [e["ind"] for e in examples]
    num_correct = sum(pred == e["label"] for (pred, _, _, _), e in zip(reference, examples))
    num_correct_norm = sum(pred_norm == e["label"] for (_, pred_norm, _, _), e in zip(reference, examples))
    assert (result.n, result.num_correct, result.num_correct_norm) == (9, num_correct, num_correct_norm)
    assert result.acc == num_correct / 9 and result.acc_norm == num_correct_norm / 9
    # A compiled model (the eager backend: no C++ toolchain needed) is called the same way.
    compiled = hellaswag.evaluate(torch.compile(tiny_model(), backend="eager"), examples, "cpu", batch_size=4)
    assert [p["pred"] for p in compiled.predictions] == [p["pred"] for p in result.predictions]


def test_many_examples_share_one_padded_forward_pass():
    model = tiny_model()
    shapes = []
    model.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    hellaswag.evaluate(model, synthetic_examples(5), "cpu", batch_size=2)
    assert shapes == [(8, BLOCK_SIZE)] * 3  # the short last batch is padded to the same shape

    rows = [[1, 2, 3], [4, 5, 6, 7, 8]]
    idx, mask = hellaswag.collate(rows, [[0, 1, 1], [0, 0, 0, 1, 1]], block_size=100, num_rows=4)
    assert idx.shape == mask.shape == (4, 64)  # rounded up to PAD_MULTIPLE_TOKENS
    assert idx[1, :5].tolist() == [4, 5, 6, 7, 8] and mask[1, :6].tolist() == [False] * 3 + [True] * 2 + [False]
    assert not mask[2:].any()
    idx, mask = hellaswag.collate([list(range(90))], [[0] * 80 + [1] * 10], block_size=70, num_rows=1)
    assert idx.shape == (1, 70)  # capped at block_size, keeping the last tokens
    assert idx[0].tolist() == list(range(20, 90)) and mask[0].sum() == 10


def test_cli_writes_predictions_and_prints_result_last(tmp_path, checkpoint, capsys):
    examples = synthetic_examples(6)
    data = write_jsonl(tmp_path / "val.jsonl", examples)
    out = tmp_path / "results" / "hs.json"
    result = hellaswag.main(["-m", str(checkpoint), "--data", str(data), "--out", str(out), "-d", "cpu", "--batch-size", "4"])
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
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "hellaswag.py",
               "-m", str(checkpoint), "--cache-dir", str(cache), "--out", str(tmp_path / "two.json"), "-d", "cpu", "--batch-size", "2"]
    proc = subprocess.run(command, cwd=REPO_ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"hellaswag acc={single.acc:.4f} acc_norm={single.acc_norm:.4f} n=7"
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    for key in ("n", "num_correct", "num_correct_norm", "acc", "acc_norm"):
        assert one[key] == two[key]
    assert [p["index"] for p in two["predictions"]] == list(range(7))
    assert [(p["pred"], p["pred_norm"]) for p in one["predictions"]] == [(p["pred"], p["pred_norm"]) for p in two["predictions"]]


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


def test_missing_data_file_and_bad_flags(tmp_path, checkpoint):
    with pytest.raises(SystemExit, match=r"--data .*nope\.jsonl: no such file"):
        hellaswag.main(["-m", str(checkpoint), "--data", str(tmp_path / "nope.jsonl"), "-d", "cpu"])
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(1))
    with pytest.raises(SystemExit, match=r"--model .*missing\.pt: could not load it"):
        hellaswag.main(["-m", str(tmp_path / "missing.pt"), "--data", str(data), "-d", "cpu"])
    with pytest.raises(SystemExit):
        hellaswag.parse_args(["--limit", "0"])
    with pytest.raises(SystemExit):
        hellaswag.parse_args(["--batch-size", "-1"])


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
