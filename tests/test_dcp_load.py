"""A --fsdp checkpoint folder (ckpt_NNNNNN.dcp) read directly by model.load_model, generate.py,
hellaswag.py and upload_hf.py: the same model as the .pt file --convert-checkpoint writes from it,
only its model tensors read, and a clear error for a folder that is not a complete checkpoint.

The folder is written by train_gpt2.py's own --fsdp path, in this process as the one worker of a
torchrun launch (gloo on CPU): the tiny model, 3 steps.
"""

import shutil

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

import generate
import hellaswag
import train_gpt2
import upload_hf
from model import GPT, load_model, load_tokenizer
from test_distributed import free_port
from test_hellaswag import synthetic_examples, write_jsonl
from test_train import data_dir, tiny_args  # noqa: F401  (data_dir is a fixture)

STEPS = ["--max-steps", "3", "--save-every", "3", "--eval-every", "3"]


@pytest.fixture(scope="module")
def fsdp_log_dir(data_dir, tmp_path_factory):  # noqa: F811
    """A log dir holding ckpt_000003.dcp (and metrics.jsonl, loss.png), as train_gpt2.py --fsdp leaves it."""
    log_dir = tmp_path_factory.mktemp("fsdp") / "log"
    with pytest.MonkeyPatch.context() as monkeypatch:
        # What torchrun --standalone --nproc_per_node=1 sets for its worker.
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(free_port())}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        assert train_gpt2.main(tiny_args(data_dir, log_dir, *STEPS, "--fsdp")) == 0
    assert [p.name for p in train_gpt2.resumable_checkpoints(log_dir)] == ["ckpt_000003.dcp"]
    return log_dir


@pytest.fixture(scope="module")
def folder_and_file(fsdp_log_dir, tmp_path_factory):
    """(the .dcp folder, the .pt file --convert-checkpoint writes from it, elsewhere so the log dir keeps one checkpoint)."""
    folder = fsdp_log_dir / "ckpt_000003.dcp"
    converted = tmp_path_factory.mktemp("converted") / "ckpt_000003.pt"
    assert train_gpt2.main(["--convert-checkpoint", str(folder), "--out", str(converted)]) == 0
    return folder, converted


def test_folder_loads_the_model_of_its_converted_file(folder_and_file, monkeypatch):
    folder, converted = folder_and_file
    # Record what is read from the shards: the model's tensors, never the optimizer's.
    read = []
    real_read_data = FileSystemReader.read_data

    def recording_read_data(self, plan, planner):
        read.extend(item.storage_index.fqn for item in plan.items)
        return real_read_data(self, plan, planner)

    monkeypatch.setattr(FileSystemReader, "read_data", recording_read_data)
    from_folder = load_model(folder).eval()
    from_file = load_model(converted).eval()
    assert set(read) == {f"model.{name}" for name in from_file.state_dict()}
    assert from_folder.config == from_file.config
    assert from_folder.state_dict().keys() == from_file.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(from_folder.state_dict().values(), from_file.state_dict().values()))
    assert from_folder.lm_head.weight is from_folder.transformer.wte.weight  # still tied
    tokens = torch.randint(0, from_file.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(from_folder(tokens)[0], from_file(tokens)[0])
        # Trained weights, not a fresh initialisation: the check above could not pass by accident.
        assert not torch.equal(from_folder(tokens)[0], GPT(from_file.config, seed=1337).eval()(tokens)[0])
    # The folder records its tokenizer (GPT-2's here) as the file does.
    assert load_tokenizer(folder, from_folder.config.vocab_size).name == load_tokenizer(converted, from_file.config.vocab_size).name


def test_generate_and_hellaswag_read_the_folder(folder_and_file, tmp_path):
    folder, converted = folder_and_file
    sample = ["--prompt", "def main(", "--max-new-tokens", "8", "--seed", "3", "-d", "cpu"]
    texts = generate.main(["-m", str(folder), *sample])
    assert len(texts) == 1 and texts == generate.main(["-m", str(converted), *sample])
    data = write_jsonl(tmp_path / "val.jsonl", synthetic_examples(4))
    scored = [hellaswag.main(["-m", str(path), "--data", str(data), "-d", "cpu"]) for path in (folder, converted)]
    assert scored[0].n == 4 and scored[0].predictions == scored[1].predictions


def test_upload_hf_publishes_the_newest_folder(fsdp_log_dir, folder_and_file, tmp_path, capsys):
    folder, _ = folder_and_file
    out = tmp_path / "hf"
    args = ["--log-dir", str(fsdp_log_dir), "--repo-id", "me/tiny", "--dry-run", "--out", str(out), "--include-training-state"]
    assert upload_hf.main(args) == 0  # its own check: the export reloads to the folder's logits
    assert "checkpoint " + str(folder) + ": step 3" in capsys.readouterr().out
    assert "`ckpt_000003.dcp`" in (out / "README.md").read_text()
    copied = out / upload_hf.TRAINING_DIR / folder.name
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in folder.iterdir())
    exported, original = GPT.from_pretrained(out).eval(), load_model(folder).eval()
    tokens = torch.randint(0, original.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (exported(tokens)[0] - original(tokens)[0]).abs().max().item() <= 1e-5


def test_a_folder_that_is_not_a_complete_checkpoint_is_named_with_what_to_do(folder_and_file, tmp_path, capsys):
    folder, _ = folder_and_file
    empty = tmp_path / "ckpt_000009.dcp"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"ckpt_000009\.dcp is not a complete ckpt_\*\.dcp folder written by train_gpt2\.py "
                                         r"--fsdp \(it lacks \.metadata and train_state\.pt.*\): pass a complete one"):
        load_model(empty)
    # A save cut short: the shards and .metadata, no train state yet.
    cut_short = shutil.copytree(folder, tmp_path / "cut" / "ckpt_000003.dcp.tmp")
    (cut_short / train_gpt2.TRAIN_STATE_FILE).unlink()
    with pytest.raises(ValueError, match=r"ckpt_000003\.dcp\.tmp is not a complete .*it lacks train_state\.pt"):
        load_model(cut_short)
    # A shard lost in a copy: the file named, from every script, as one message.
    damaged = shutil.copytree(folder, tmp_path / "damaged" / "ckpt_000003.dcp")
    (damaged / "__0_0.distcp").unlink()
    with pytest.raises(SystemExit, match=r"could not load it \(cannot read the model weights of .*ckpt_000003\.dcp "
                                         r"\(FileNotFoundError: .*__0_0\.distcp'\); it may be damaged or incomplete\)"):
        generate.main(["-m", str(damaged), "-d", "cpu"])
    assert upload_hf.main(["--checkpoint", str(empty), "--repo-id", "me/tiny", "--dry-run", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {empty} is not a complete ckpt_*.dcp folder" in err and "Traceback" not in err
