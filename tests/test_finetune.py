"""train_gpt2.py --init-from: fine-tunes start from a Hugging Face GPT-2 or Llama folder (written by
transformers itself) or from one of our checkpoints, resume exactly, and say so in the model card."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import train_gpt2
import upload_hf
from model import EOT_TEXT, EOT_TOKEN, GPT2_VOCAB_SIZE, file_sha256, gpt2_bpe_files
from train_gpt2 import DataLoader

transformers = pytest.importorskip("transformers")

from test_gpt25 import hf_llama  # noqa: E402  (a random Llama of transformers', max_position_embeddings 32)
from test_model import hf_model  # noqa: E402  (a random GPT-2 of transformers', n_positions 32)
from test_train import assert_same_run, data_dir, records_by_step, tiny_args  # noqa: E402, F401  (data_dir: a fixture)

# Six steps of the tiny run's shape (seq-len 32, micro-batch 4, 2 validation micro-batches), in fp32.
FAST = ("--dtype", "fp32", "--no-compile", "--max-steps", "6", "--eval-every", "3", "--save-every", "3")


def finetune_args(data_dir, log_dir, source, *extra):
    return tiny_args(data_dir, log_dir, "--init-from", str(source), *FAST, *extra)


def reference_val_loss(hf, data_dir, micro_batch=4, seq_len=32, steps=2) -> float:
    """transformers' mean loss over the validation windows that train_gpt2.py's evaluation reads."""
    loader = DataLoader(data_dir, "val", micro_batch, seq_len, rank=0, world_size=1, seed=1337, shuffle=False)
    loader.reset()
    losses = []
    with torch.no_grad():
        for _ in range(steps):
            x, y = loader.next_batch()
            logits = hf(x).logits  # (B, T, 50257): targets are already shifted
            losses.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item())
    return sum(losses) / len(losses)


def swapped_gpt2_tokenizer_json() -> str:
    """A tokenizer.json of GPT-2's size that is not GPT-2's: its BPE with the ids of "!" and '"' swapped."""
    files = gpt2_bpe_files()
    if files is None:
        pytest.skip("GPT-2's vocab.bpe and encoder.json are not available offline")
    vocab_bpe, encoder_json = files
    vocab = json.loads(encoder_json.read_text())
    vocab["!"], vocab['"'] = vocab['"'], vocab["!"]
    merges = [line for line in vocab_bpe.read_text().splitlines()[1:] if line]  # after the version line
    return json.dumps({
        "added_tokens": [{"id": EOT_TOKEN, "content": EOT_TEXT, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
    })


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-gpt2")
    model = hf_model(seed=3)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def full_run(data_dir, hf_gpt2, tmp_path_factory):
    """One uninterrupted 6-step fine-tune from the GPT-2 folder, shared by the tests that read it."""
    log_dir = tmp_path_factory.mktemp("full") / "log"
    assert train_gpt2.main(finetune_args(data_dir, log_dir, hf_gpt2[0])) == 0
    return log_dir


def test_step_0_loss_is_the_gpt2_folders_and_the_fine_tune_learns(data_dir, hf_gpt2, full_run):
    folder, hf = hf_gpt2
    evals, train = records_by_step(full_run, "eval"), records_by_step(full_run, "train")
    # The run pads the vocabulary to 50304 rows (--pad-vocab); transformers' model has 50257.
    assert evals[0]["val_loss"] == pytest.approx(reference_val_loss(hf, data_dir), abs=1e-4)
    assert evals[6]["val_loss"] < evals[0]["val_loss"] - 0.1
    assert train[6]["train_loss"] < train[1]["train_loss"] - 0.1
    header = train_gpt2.read_metrics(full_run / "metrics.jsonl")[0]
    assert header["init_from"] == {"name": str(folder), "hub_repo": None, "sha256": None}
    assert header["config"]["model"] is None and header["model_config"]["n_embd"] == 64
    checkpoint = torch.load(full_run / "ckpt_000006.pt", weights_only=True)
    assert checkpoint["init_from"] == header["init_from"] and checkpoint["step"] == 6
    # The padded rows start as zeros and, never scored, get no gradient: training leaves them zero.
    embedding = checkpoint["model"]["transformer.wte.weight"]
    assert embedding.shape[0] == 50304 and not embedding[GPT2_VOCAB_SIZE:].any()


def test_a_stopped_and_resumed_fine_tune_equals_an_uninterrupted_one(data_dir, hf_gpt2, full_run, tmp_path, capsys):
    split = tmp_path / "split"
    # The preemptible pattern: the same command each time, --resume auto with --init-from.
    args = finetune_args(data_dir, split, hf_gpt2[0], "--resume", "auto")
    assert train_gpt2.main([*args, "--stop-at-step", "2"]) == 0
    assert train_gpt2.main(args) == 0
    assert f"--init-from {hf_gpt2[0]} is not read" in capsys.readouterr().out
    assert_same_run(full_run, split, steps=6, tolerance=1e-6)
    assert torch.load(split / "ckpt_000006.pt", weights_only=True)["init_from"]["name"] == str(hf_gpt2[0])


def test_init_from_our_checkpoint_starts_at_its_loss(data_dir, full_run, tmp_path):
    source = full_run / "ckpt_000006.pt"
    log_dir = tmp_path / "log"
    # --no-pad-vocab trims the checkpoint's 50304 rows to 50257: the loss must not change.
    assert train_gpt2.main(finetune_args(data_dir, log_dir, source, "--no-pad-vocab", "--stop-at-step", "1")) == 0
    assert records_by_step(log_dir, "eval")[0]["val_loss"] == pytest.approx(records_by_step(full_run, "eval")[6]["val_loss"], abs=1e-6)
    header = train_gpt2.read_metrics(log_dir / "metrics.jsonl")[0]
    assert header["init_from"]["sha256"] == file_sha256(source)
    assert header["model_config"]["pad_vocab_multiple"] == 1 and header["start_step"] == 0


def test_step_0_loss_is_the_llama_folders(data_dir, tmp_path):
    hf = hf_llama(bias=False, seed=4)
    hf.save_pretrained(tmp_path / "llama")
    log_dir = tmp_path / "log"
    assert train_gpt2.main(finetune_args(data_dir, log_dir, tmp_path / "llama", "--stop-at-step", "1")) == 0
    assert records_by_step(log_dir, "eval")[0]["val_loss"] == pytest.approx(reference_val_loss(hf, data_dir), abs=1e-4)
    model_config = train_gpt2.read_metrics(log_dir / "metrics.jsonl")[0]["model_config"]
    assert (model_config["norm"], model_config["mlp"], model_config["positions"], model_config["rope_theta"]) == ("rmsnorm", "swiglu", "rope", 500.0)


def test_model_card_says_what_it_was_fine_tuned_from(full_run, hf_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    assert upload_hf.main(["--log-dir", str(full_run), "--repo-id", "me/tiny-finetune", "--dry-run", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"It was fine-tuned from `{hf_gpt2[0]}`: training started from its weights" in card
    assert "fine-tuned with `train_gpt2.py`" in card and "trained from scratch" not in card
    assert "- fine-tuned" in card and "pretrained-from-scratch" not in card and "base_model" not in card


def test_model_card_of_a_hub_fine_tune_names_the_base_model(full_run, tmp_path):
    checkpoint = torch.load(full_run / "ckpt_000006.pt", weights_only=True)
    checkpoint["init_from"] = {"name": "gpt2", "hub_repo": "openai-community/gpt2", "sha256": None}
    metrics = {"header": None, "train": None, "eval": None}
    card = upload_hf.model_card(upload_hf.UploadConfig(repo_id="me/gpt2-shakespeare"), checkpoint, full_run / "ckpt_000006.pt",
                                metrics, num_params=1, has_plot=False, tokenizer_json=None, vocab_size=GPT2_VOCAB_SIZE)
    assert "base_model: openai-community/gpt2" in card
    assert "It was fine-tuned from [openai-community/gpt2](https://huggingface.co/openai-community/gpt2): " in card


def test_finetune_preset_is_a_constant_learning_rate_from_gpt2():
    cfg = train_gpt2.parse_config(["--preset", "finetune"])
    assert (cfg.init_from, cfg.model, cfg.total_batch, cfg.seq_len) == ("gpt2", None, 32_768, 1024)
    assert train_gpt2.make_plan(cfg, world_size=1, block_size=1024).grad_accum_steps == 4
    assert {train_gpt2.get_lr(step, cfg) for step in range(cfg.max_steps)} == {3e-5}  # nanoGPT's decay_lr False
    explicit = train_gpt2.parse_config(["--preset", "finetune", "--model", "gpt2-medium"])
    assert explicit.model == "gpt2-medium"  # kept, to be checked against the source


@pytest.mark.parametrize("case", ["unknown name", "bert folder", "other model", "seq-len", "vocabulary", "tokenizer"])
def test_bad_init_from_is_one_line(case, data_dir, hf_gpt2, tmp_path, capsys):
    source, extra = hf_gpt2[0], []
    if case == "unknown name":
        source = "gpt3"
    elif case == "bert folder":
        source = tmp_path / "bert"
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    elif case == "other model":
        extra = ["--model", "tiny"]
    elif case == "seq-len":
        extra = ["--seq-len", "64"]  # the folder's n_positions is 32
    elif case == "tokenizer":
        source = tmp_path / "other-tokenizer"
        shutil.copytree(hf_gpt2[0], source)
        (source / "tokenizer.json").write_text(swapped_gpt2_tokenizer_json())
    else:
        source = tmp_path / "small-vocab"
        transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=32, n_embd=32, n_layer=1, n_head=2, vocab_size=1000)).save_pretrained(source)
    capsys.readouterr()  # transformers' own output while writing the folder
    assert train_gpt2.main(finetune_args(data_dir, tmp_path / "log", source, *extra)) == 2
    err = one_error_line(capsys)
    expected = {
        "unknown name": "--init-from gpt3: gpt3 is neither a checkpoint file, a model folder, nor one of gpt2,",
        "bert folder": "model_type is 'bert', expected 'gpt2' or 'llama'",
        "other model": f"--model tiny is not the architecture of --init-from {source} (2 layers, 64-dimensional",
        "seq-len": f"--seq-len 64 exceeds the block size 32 of the model of --init-from {source}",
        "vocabulary": f"--init-from {source} has a vocabulary of 1,000 tokens, but {data_dir} was tokenized with",
        "tokenizer": f"--init-from {source} was trained with another tokenizer (bpe50257-",
    }[case]
    assert expected in err
    assert not (tmp_path / "log" / "metrics.jsonl").exists()
