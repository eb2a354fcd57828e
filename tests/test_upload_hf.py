"""upload_hf.py on fake train_gpt2.py log folders: export, model card, pre-flight checks, and the
Hub calls (faked: these tests never reach the network)."""

import json
import math
import re
import shlex
import socket
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import httpx

import upload_hf
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

REPO_ID = "me/gpt2-tiny"
TOTAL_BATCH = 4096
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
               "tokenizer_config.json", "special_tokens_map.json", "README.md", "loss.png"}  # fmt: skip
# Figures in the fake metrics.jsonl. The eval at step 20 was first logged as 5.9999, then the run
# crashed and resumed from step 10 and logged it again: the later line counts. The eval at step
# 25 comes after the newest checkpoint (20), so it does not describe the exported model.
VAL_LOSS, STALE_VAL_LOSS, LATER_VAL_LOSS = 5.4321, 5.9999, 4.0123
ACC_NORM, ACC = 0.2679, 0.2555


def tiny_model(seed: int) -> GPT:
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64, pad_vocab_multiple=64), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # GPT-2's init zeroes biases and sets LayerNorm gains to 1: randomise them so the export is tested
        for name, param in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def save_checkpoint(path, model, step, train_config, **overrides):
    """A checkpoint in train_gpt2.py's format (format_version 1), small plausible values where the export does not look."""
    checkpoint = {
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4, "params": []}]},
        "step": step,
        "tokens_seen": step * TOTAL_BATCH,
        "train_loader": {"shard_index": 0, "position": step * TOTAL_BATCH},
        "rng": {"torch": torch.get_rng_state()},
        "config": train_config,
        "format_version": 1,
    }
    torch.save({**checkpoint, **overrides}, path)


def make_run(log_dir, data, steps=(10, 20), metrics=True, plot=True):
    """A log folder as train_gpt2.py leaves it: checkpoints, metrics.jsonl and loss.png."""
    log_dir.mkdir(parents=True)
    train_config = {"model": "tiny", "data": str(data), "log_dir": str(log_dir), "total_batch": TOTAL_BATCH, "micro_batch": 8,
                    "seq_len": 64, "max_steps": 30, "max_lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 5, "weight_decay": 0.1,
                    "seed": 1337}  # fmt: skip
    for step in steps:
        save_checkpoint(log_dir / f"ckpt_{step:06d}.pt", tiny_model(seed=step), step, train_config)
    if metrics:
        header = {"type": "header", "config": train_config, "git_commit": "abc1234", "torch": torch.__version__, "device": "cpu"}
        records = [header]
        records += [{"type": "train", "step": s, "train_loss": 10 - 0.2 * s, "lr": 6e-4, "grad_norm": 1.0, "dt_ms": 5.0,
                     "tokens_per_s": 1e5, "mfu": None, "tokens_seen": (s + 1) * TOTAL_BATCH} for s in range(21)]  # fmt: skip
        records += [
            {"type": "eval", "step": 10, "val_loss": 6.5, "hellaswag_acc_norm": 0.25, "hellaswag_acc": 0.24},
            {"type": "eval", "step": 20, "val_loss": STALE_VAL_LOSS, "hellaswag_acc_norm": 0.3, "hellaswag_acc": 0.3},
            header,
            {"type": "eval", "step": 20, "val_loss": VAL_LOSS, "hellaswag_acc_norm": ACC_NORM, "hellaswag_acc": ACC},
            {"type": "sample", "step": 20, "text": "Hello, I'm a language model, and"},
            {"type": "eval", "step": 25, "val_loss": LATER_VAL_LOSS, "hellaswag_acc_norm": 0.31, "hellaswag_acc": 0.3},
        ]
        (log_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot(range(21), [10 - 0.2 * s for s in range(21)])
        fig.savefig(log_dir / "loss.png")
        plt.close(fig)
    # What a crash in the middle of writing a checkpoint or the plot leaves behind.
    (log_dir / f"ckpt_{steps[-1] + 10:06d}.pt.tmp").write_bytes(b"half a checkpoint")
    (log_dir / "loss.tmp.png").write_bytes(b"half a plot")
    return log_dir


def uploaded_files(folder):
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


class FakeHub:
    """Replaces HfApi's network methods and records their calls."""

    def __init__(self, monkeypatch, error=None, upload_error=None):
        self.calls = []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", api.token, (repo_id,), kwargs))
            if error is not None:
                raise error
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(("create_branch", api.token, (repo_id,), kwargs))

        def upload_folder(api, **kwargs):
            folder = kwargs["folder_path"]
            # The folder is temporary: record what it holds while it exists.
            hub.files = uploaded_files(folder)
            hub.card = (folder / "README.md").read_text()
            hub.uploaded_checkpoint = (folder / "training" / "ckpt_000020.pt").read_bytes() if (folder / "training").is_dir() else None
            hub.calls.append(("upload_folder", api.token, (), kwargs))
            if upload_error is not None:
                raise upload_error
            return types.SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abc")

        for name, fake in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
            monkeypatch.setattr(upload_hf.HfApi, name, fake)

    def names(self):
        return [call[0] for call in self.calls]


def block_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    # fineweb.py's folder for FineWeb-Edu, absent here as on a machine the shards were not copied to.
    return make_run(root / "log", data=root / "data" / "edu_fineweb10B")


@pytest.fixture(scope="module")
def dry_run(run_dir, tmp_path_factory):
    """One --dry-run export of the newest checkpoint, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("export") / "hf"
    with pytest.MonkeyPatch.context() as monkeypatch:
        block_network(monkeypatch)
        monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
        hub = FakeHub(monkeypatch)
        assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]) == 0
    assert hub.calls == []
    return out


def test_dry_run_writes_a_folder_transformers_loads_with_the_checkpoint_logits(dry_run, run_dir):
    assert uploaded_files(dry_run) == MODEL_FILES | {upload_hf.EXPORT_MARKER}
    assert (dry_run / "loss.png").read_bytes() == (run_dir / "loss.png").read_bytes()
    hf_model, info = transformers.GPT2LMHeadModel.from_pretrained(dry_run, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tokens = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf_logits = hf_model.eval()(tokens).logits
        newest, _ = GPT.from_checkpoint(run_dir / "ckpt_000020.pt").eval()(tokens)
        older, _ = GPT.from_checkpoint(run_dir / "ckpt_000010.pt").eval()(tokens)
    assert (hf_logits - newest).abs().max().item() <= 1e-5
    assert (hf_logits - older).abs().max().item() > 1e-2  # the newest checkpoint was the one exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(dry_run)
    assert tokenizer("Hello, I'm a language model,")["input_ids"] == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert tokenizer.eos_token_id == 50256


def test_model_card_has_metadata_recipe_and_the_checkpoints_figures(dry_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(dry_run / "README.md")
    assert card.data.license == "mit"
    assert card.data.library_name == "transformers"
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert "gpt2" in card.data.tags
    text = card.text
    assert f"| validation loss | {VAL_LOSS:.4f} | 20 |" in text
    assert f"| HellaSwag acc_norm | {ACC_NORM:.4f} | 20 |" in text
    assert f"| HellaSwag acc | {ACC:.4f} | 20 |" in text
    assert "| training loss | 6.0000 | 20 |" in text
    assert f"{STALE_VAL_LOSS:.4f}" not in text and f"{LATER_VAL_LOSS:.4f}" not in text
    assert f"{20 * TOTAL_BATCH:,} training tokens" in text
    assert "20 optimizer steps of the 30 planned" in text
    assert "| max_lr | `0.0006` |" in text and f"| total_batch | `{TOTAL_BATCH}` |" in text and "| warmup_steps | `5` |" in text
    assert f"HellaSwag acc_norm {upload_hf.GPT2_124M_HELLASWAG}" in text and f"validation loss {upload_hf.GPT2_124M_VAL_LOSS}" in text
    assert "`abc1234`" in text
    assert "](loss.png)" in text
    assert "training/" not in text  # no training state in this export


def test_model_card_usage_code_runs_offline(dry_run, capsys):
    code = re.search(r"```python\n(.*?)```", (dry_run / "README.md").read_text(), re.S).group(1)
    assert f'"{REPO_ID}"' in code
    torch.manual_seed(0)
    exec(code.replace(f'"{REPO_ID}"', repr(str(dry_run))), {})
    assert capsys.readouterr().out.startswith("Hello, I'm a language model,")


@pytest.mark.parametrize(
    "data_name, meta_source, expected_datasets",
    [
        ("pystdlib", {"dataset": "pystdlib"}, None),  # shards present: meta.json says what they are
        ("my_shards", {"dataset": "fineweb-edu", "repo": "HuggingFaceFW/fineweb-edu"}, ["HuggingFaceFW/fineweb-edu"]),
        ("pystdlib", None, None),  # shards absent, folder not FineWeb-Edu's
    ],
)
def test_model_card_cites_the_dataset_only_when_it_was_the_data(tmp_path, data_name, meta_source, expected_datasets):
    from huggingface_hub import ModelCard

    data = tmp_path / "data" / data_name
    if meta_source is not None:
        data.mkdir(parents=True)
        (data / "meta.json").write_text(json.dumps({"format_version": 1, "source": meta_source}))
    run = make_run(tmp_path / "log", data=data, steps=(30,), metrics=False, plot=False)
    out = tmp_path / "hf"
    assert upload_hf.main(["--log-dir", str(run), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == expected_datasets
    assert "No evaluation was recorded" in card.text
    assert "loss.png" not in card.text and not (out / "loss.png").exists()
    assert "planned" not in card.text  # step 30 of max_steps 30: a finished run


def test_model_card_says_when_hellaswag_was_not_measured(tmp_path):
    run = make_run(tmp_path / "log", data=tmp_path / "data" / "edu_fineweb10B", steps=(20,), plot=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:  # as train_gpt2.py logs evaluations when the HellaSwag data was absent
        if record["type"] == "eval":
            record.update(hellaswag_acc_norm=None, hellaswag_acc=None)
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    assert upload_hf.main(["--log-dir", str(run), "--repo-id", REPO_ID, "--dry-run", "--out", str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"| validation loss | {VAL_LOSS:.4f} | 20 |" in card
    assert "| HellaSwag acc_norm | not measured | 20 |" in card and "| HellaSwag acc | not measured | 20 |" in card


def test_upload_checks_then_creates_repo_and_uploads_the_folder(run_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    hub = FakeHub(monkeypatch)
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID]) == 0
    assert hub.names() == ["create_repo", "upload_folder"]
    _, token, args, kwargs = hub.calls[0]
    assert (token, args, kwargs) == ("hf_fake", (REPO_ID,), {"private": None, "exist_ok": True})  # the Hub's default visibility
    _, token, _, kwargs = hub.calls[1]
    assert token == "hf_fake" and kwargs["repo_id"] == REPO_ID and kwargs["revision"] is None
    assert kwargs["commit_message"] == f"Upload GPT-2 from ckpt_000020.pt (step 20, {20 * TOTAL_BATCH:,} tokens)"
    assert kwargs["ignore_patterns"] == [upload_hf.EXPORT_MARKER]
    assert hub.files == MODEL_FILES | {upload_hf.EXPORT_MARKER}  # the marker is there, but ignored
    assert f"| validation loss | {VAL_LOSS:.4f} |" in hub.card
    assert not kwargs["folder_path"].exists()  # the temporary folder is cleaned up
    assert "https://huggingface.co/me/gpt2-tiny/commit/0123abc" in capsys.readouterr().out


def test_upload_with_training_state_private_revision_and_message(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    hub = FakeHub(monkeypatch)
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--private", "--revision", "run-1",
            "--commit-message", "GPT-2 tiny, step 20", "--include-training-state", "--out", str(tmp_path / "hf")]  # fmt: skip
    assert upload_hf.main(args) == 0
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][2:] == ((REPO_ID,), {"private": True, "exist_ok": True})
    assert hub.calls[1][2:] == ((REPO_ID,), {"branch": "run-1", "exist_ok": True})
    kwargs = hub.calls[2][3]
    assert kwargs["folder_path"] == tmp_path / "hf"
    assert (kwargs["revision"], kwargs["commit_message"]) == ("run-1", "GPT-2 tiny, step 20")
    training = {"training/ckpt_000020.pt", "training/metrics.jsonl", "training/loss.png"}
    assert hub.files == MODEL_FILES | training | {upload_hf.EXPORT_MARKER}  # not the older ckpt_000010.pt
    assert hub.uploaded_checkpoint == (run_dir / "ckpt_000020.pt").read_bytes()
    assert "training/" in hub.card and f'from_pretrained("{REPO_ID}", revision="run-1")' in hub.card


def test_hub_refusal_is_one_message(run_dir, monkeypatch, capsys):
    from huggingface_hub.utils import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", "hf_bad")
    refusal = HfHubHTTPError("401 Client Error: Unauthorized", response=types.SimpleNamespace(headers={}, request=None))
    hub = FakeHub(monkeypatch, error=refusal)
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID]) == 2
    assert hub.names() == ["create_repo"]
    err = capsys.readouterr().err
    assert "the Hub refused the upload to me/gpt2-tiny: 401 Client Error" in err and "Traceback" not in err


def no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))


def standard_args(run_dir, tmp_path, **flags):
    """A valid upload command line, with some flags replaced (a value of None drops the flag)."""
    args = {"--log-dir": str(run_dir), "--repo-id": REPO_ID, "--out": str(tmp_path / "hf"), **flags}
    return [item for flag, value in args.items() if value is not None for item in (flag, value)]


def junk_checkpoint(run_dir, tmp_path):
    (tmp_path / "ckpt_000005.pt").write_bytes(b"not a checkpoint")
    return standard_args(run_dir, tmp_path, **{"--checkpoint": str(tmp_path / "ckpt_000005.pt")})


def incomplete_checkpoint(run_dir, tmp_path):
    model = tiny_model(seed=0)
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict()}, tmp_path / "ckpt_000005.pt")
    return standard_args(run_dir, tmp_path, **{"--checkpoint": str(tmp_path / "ckpt_000005.pt")})


def mismatched_checkpoint(run_dir, tmp_path):
    model = tiny_model(seed=0)
    save_checkpoint(tmp_path / "ckpt_000005.pt", model, 5, {}, model_config={**model.config.to_dict(), "n_embd": 128})
    return standard_args(run_dir, tmp_path, **{"--checkpoint": str(tmp_path / "ckpt_000005.pt")})


def broken_metrics(run_dir, tmp_path):
    run = make_run(tmp_path / "log", data="data/pystdlib", steps=(20,), plot=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "st\n')  # as a run killed mid-write leaves it
    return standard_args(run, tmp_path)


def card_with_broken_metadata(run_dir, tmp_path):
    (tmp_path / "card.md").write_text("---\nlicense: [mit\n---\n\n# My model\n")
    return standard_args(run_dir, tmp_path, **{"--card": str(tmp_path / "card.md")})


def card_and_license(run_dir, tmp_path):
    (tmp_path / "card.md").write_text("# My model\n")
    return standard_args(run_dir, tmp_path, **{"--card": str(tmp_path / "card.md"), "--license": "apache-2.0"})


def empty_log_dir(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    return standard_args(tmp_path / "empty", tmp_path)


PREFLIGHT_FAILURES = {
    "no-namespace": (lambda r, t: standard_args(r, t, **{"--repo-id": "gpt2-tiny"}), "--repo-id 'gpt2-tiny' must be namespace/name"),
    "two-slashes": (lambda r, t: standard_args(r, t, **{"--repo-id": "me/team/gpt2"}), "must be namespace/name"),
    "space": (lambda r, t: standard_args(r, t, **{"--repo-id": "me/gpt2 tiny"}), "--repo-id 'me/gpt2 tiny' is not a valid Hub repo id"),
    "double-dash": (lambda r, t: standard_args(r, t, **{"--repo-id": "me/gpt2--tiny"}), "not a valid Hub repo id: Cannot have -- or .."),
    "missing-checkpoint": (lambda r, t: standard_args(r, t, **{"--checkpoint": str(t / "nope.pt")}), "--checkpoint {tmp}/nope.pt does not exist"),
    "unreadable-checkpoint": (junk_checkpoint, "--checkpoint {tmp}/ckpt_000005.pt is not a readable train_gpt2.py checkpoint"),
    "incomplete-checkpoint": (incomplete_checkpoint, "is not a complete train_gpt2.py checkpoint: it lacks step, tokens_seen, config, format_version"),
    "mismatched-checkpoint": (mismatched_checkpoint, "--checkpoint {tmp}/ckpt_000005.pt: Error(s) in loading state_dict"),
    "empty-log-dir": (empty_log_dir, "--log-dir {tmp}/empty holds no checkpoint (ckpt_NNNNNN.pt or ckpt_NNNNNN.dcp): train with train_gpt2.py first"),
    "missing-log-dir": (lambda r, t: standard_args(t / "missing", t), "--log-dir {tmp}/missing does not exist"),
    "broken-metrics": (broken_metrics, "{tmp}/log/metrics.jsonl has a line that is not JSON"),
    "dry-run-without-out": (lambda r, t: standard_args(r, t, **{"--out": None}) + ["--dry-run"], "--dry-run needs --out DIR"),
    "no-token": (standard_args, "no Hugging Face token: set HF_TOKEN"),
    "license-not-an-identifier": (lambda r, t: standard_args(r, t, **{"--license": "MIT"}), "--license 'MIT' is not a Hub licence identifier"),
    "missing-card": (lambda r, t: standard_args(r, t, **{"--card": str(t / "card.md")}), "--card {tmp}/card.md cannot be read"),
    "card-with-broken-metadata": (card_with_broken_metadata, "--card {tmp}/card.md has a metadata block (between the --- lines at its top) "
                                                             "that is not valid YAML: while parsing a flow sequence"),
    "card-and-license": (card_and_license, "--license sets the licence of the generated model card; a --card is published as it is"),
}


@pytest.mark.parametrize("case", PREFLIGHT_FAILURES)
def test_preflight_failure_is_one_message_before_any_network_call(case, run_dir, tmp_path, monkeypatch, capsys):
    make_args, expected = PREFLIGHT_FAILURES[case]
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    if case == "no-token":
        no_token(monkeypatch, tmp_path)
    hub = FakeHub(monkeypatch)
    assert upload_hf.main(make_args(run_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert hub.calls == []
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.partial-*"))


def test_log_dir_gives_the_newest_checkpoint_of_either_kind(tmp_path):
    """Without --checkpoint: the highest step, a ckpt_*.pt file or a complete --fsdp ckpt_*.dcp
    folder; at one step (a folder and the file converted from it), the folder."""
    def folder(name, complete=True):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".metadata").write_bytes(b"")
        if complete:
            (tmp_path / name / "train_state.pt").write_bytes(b"")

    def newest():
        return upload_hf.resolve_paths(upload_hf.UploadConfig(repo_id=REPO_ID, log_dir=str(tmp_path)))[0].name

    (tmp_path / "ckpt_000010.pt").write_bytes(b"")
    folder("ckpt_000020.dcp")
    assert newest() == "ckpt_000020.dcp"
    folder("ckpt_000030.dcp", complete=False)  # copied in part
    folder("ckpt_000040.dcp.tmp")  # a save still under way
    (tmp_path / "ckpt_000020.pt").write_bytes(b"")
    assert newest() == "ckpt_000020.dcp"
    (tmp_path / "ckpt_000030.pt").write_bytes(b"")
    assert newest() == "ckpt_000030.pt"


def test_broken_export_is_caught_before_upload(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    hub = FakeHub(monkeypatch)
    real_from_pretrained = GPT.from_pretrained.__func__

    def broken_from_pretrained(cls, folder):
        model = real_from_pretrained(cls, folder)
        with torch.no_grad():
            model.transformer.ln_f.bias.add_(1e-3)  # as if one tensor were exported wrongly
        return model

    monkeypatch.setattr(GPT, "from_pretrained", classmethod(broken_from_pretrained))
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--out", str(tmp_path / "hf")]) == 2
    assert "the exported folder's logits differ from" in capsys.readouterr().err
    assert hub.calls == [] and not (tmp_path / "hf").exists()


def test_out_folder_of_the_user_is_never_lost(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]
    assert upload_hf.main(args) == 2
    assert "--out " + str(out) + " is not empty and was not written by upload_hf.py" in capsys.readouterr().err
    assert uploaded_files(out) == {"notes.txt"}

    assert upload_hf.main(args + ["--overwrite-out"]) == 0
    assert "model.safetensors" in uploaded_files(out)
    (backup,) = tmp_path.glob("hf.backup-*")
    assert (backup / "notes.txt").read_text() == "mine"

    # Folders that hold the inputs are refused even with --overwrite-out.
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--overwrite-out", "--out", str(run_dir.parent)]
    assert upload_hf.main(args) == 2
    assert f"holds {run_dir}" in capsys.readouterr().err


def test_previous_export_is_replaced(run_dir, tmp_path):
    out = tmp_path / "hf"
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]
    assert upload_hf.main(args + ["--include-training-state"]) == 0
    assert (out / "training" / "ckpt_000020.pt").is_file()
    assert upload_hf.main(args + ["--checkpoint", str(run_dir / "ckpt_000010.pt")]) == 0
    assert "`ckpt_000010.pt`" in (out / "README.md").read_text()
    assert not (out / "training").exists()  # replaced, not merged
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]  # no backup, no leftovers


# -----------------------------------------------------------------------------
# A failed upload keeps the export and says how to run it again


def kept_folder_and_rerun(err):
    """The folder a failed upload kept and the command that uploads it, from the error message."""
    match = re.search(r"the verified export is kept in (\S+): .*rerun \(safe to repeat[^)]*\): (python upload_hf\.py .*)$", err.strip())
    assert match, err
    return Path(match.group(1)), shlex.split(match.group(2))


# What huggingface_hub lets through unchanged when the connection fails: the errors of its HTTP
# library (after its own retries, for uploads), or OfflineModeIsEnabled under HF_HUB_OFFLINE=1.
# test_a_refused_connection_from_huggingface_hubs_own_create_repo gets the first from huggingface_hub itself.
NETWORK_FAILURES = {
    "refused-at-create-repo": ("error", lambda: httpx.ConnectError("[Errno 111] Connection refused"), "nothing was uploaded"),
    "timeout-during-upload": ("upload_error", lambda: httpx.ReadTimeout("The read operation timed out"),
                              f"{REPO_ID} may now exist on the Hub, empty or with part of the upload"),
    "dropped-during-upload": ("upload_error", lambda: httpx.RemoteProtocolError("Server disconnected without sending a response."),
                              f"{REPO_ID} may now exist on the Hub, empty or with part of the upload"),
    "offline-mode": ("error", lambda: OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled."),
                     "nothing was uploaded"),
}  # fmt: skip


@pytest.mark.parametrize("case", NETWORK_FAILURES)
def test_network_failure_keeps_the_export_and_its_rerun_command_uploads_it(case, run_dir, tmp_path, monkeypatch, capsys):
    where, make_error, state = NETWORK_FAILURES[case]
    error = make_error()
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the export goes without --out
    FakeHub(monkeypatch, **{where: error})
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--private", "--commit-message", "tiny, step 20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"the upload to {REPO_ID} did not complete ({type(error).__name__}: {error}): {state}; " in err
    assert "once the Hub can be reached" in err
    folder, command = kept_folder_and_rerun(err)
    assert folder.parent == tmp_path and uploaded_files(folder) == MODEL_FILES | {upload_hf.EXPORT_MARKER}
    assert command[:2] == ["python", "upload_hf.py"]
    # The same checkpoint, even if training writes a newer one meanwhile, and the same flags.
    assert command[command.index("--checkpoint") + 1] == str(run_dir / "ckpt_000020.pt")
    assert command[command.index("--out") + 1] == str(folder)
    assert "--private" in command and command[command.index("--commit-message") + 1] == "tiny, step 20"

    hub = FakeHub(monkeypatch)  # the connection works again
    assert upload_hf.main(command[2:]) == 0
    assert hub.names() == ["create_repo", "upload_folder"]
    assert hub.calls[0][3]["private"] is True and hub.calls[1][3]["commit_message"] == "tiny, step 20"
    assert hub.calls[1][3]["folder_path"] == folder and hub.files == MODEL_FILES | {upload_hf.EXPORT_MARKER}


def test_a_refused_connection_from_huggingface_hubs_own_create_repo(run_dir, tmp_path, monkeypatch, capsys):
    """No fake HfApi: huggingface_hub's own create_repo, over an HTTP transport that refuses every
    connection as a closed port does (HF_ENDPOINT=http://127.0.0.1:9 gives the same error)."""
    from huggingface_hub.utils import _http

    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    # huggingface_hub's shared client, made by this factory on first use; both restored afterwards.
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", lambda: httpx.Client(transport=httpx.MockTransport(refuse)))
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT", None)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    out = tmp_path / "hf"
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the upload to {REPO_ID} did not complete (ConnectError: [Errno 111] Connection refused): nothing was uploaded" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert kept_folder_and_rerun(err)[0] == out and (out / "model.safetensors").is_file()


def test_hub_refusal_and_interruption_keep_the_export(run_dir, tmp_path, monkeypatch, capsys):
    from huggingface_hub.utils import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    out = tmp_path / "hf"
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--out", str(out)]
    refusal = HfHubHTTPError("403 Forbidden: you don't have the rights to create a model under the namespace \"me\".\n"
                             "Cannot access content at: https://huggingface.co/api/repos/create.",
                             response=types.SimpleNamespace(headers={}, request=None))  # fmt: skip
    FakeHub(monkeypatch, error=refusal)
    assert upload_hf.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the Hub refused the upload to me/gpt2-tiny: 403 Forbidden" in err
    assert "once the cause is fixed, rerun" in err and kept_folder_and_rerun(err)[0] == out

    # Ctrl-C in the middle of the upload: the traceback of the interruption, and a note first.
    FakeHub(monkeypatch, upload_error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        upload_hf.main(args)
    err = capsys.readouterr().err
    assert f"the upload to {REPO_ID} did not complete; the verified export is kept in {out}" in err
    assert (out / "model.safetensors").is_file()


def test_upload_without_out_leaves_no_folder_behind(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    FakeHub(monkeypatch)
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID]) == 0
    assert list(tmp_path.iterdir()) == []


# -----------------------------------------------------------------------------
# An export the user changed is never replaced without asking; --card publishes their card


def test_edited_card_is_kept_and_published_with_card(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hf"
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--out", str(out)]
    assert upload_hf.main(args + ["--dry-run"]) == 0
    assert f"with --card {out / 'README.md'}" in capsys.readouterr().out  # the dry run says how
    edited = (out / "README.md").read_text().replace("## Limitations", "## Intended use\n\nTeaching.\n\n## Limitations")
    (out / "README.md").write_text(edited)

    # A rerun as before would lose the edit: refused, saying how to publish it.
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    hub = FakeHub(monkeypatch)
    assert upload_hf.main(args) == 2
    err = capsys.readouterr().err
    assert f"--out {out} was changed since upload_hf.py wrote it (README.md edited)" in err
    assert f"add --card {out / 'README.md'} (and --checkpoint {run_dir / 'ckpt_000020.pt'}" in err
    assert hub.calls == [] and (out / "README.md").read_text() == edited

    assert upload_hf.main(args + ["--card", str(out / "README.md")]) == 0
    assert hub.card == edited and (out / "README.md").read_text() == edited
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]  # no backup: nothing was lost
    assert upload_hf.main(args + ["--card", str(out / "README.md"), "--dry-run"]) == 0  # the record now holds the user's card


def test_changed_export_is_moved_aside_only_with_overwrite_out(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]
    assert upload_hf.main(args) == 0
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text((out / "config.json").read_text().replace('"n_layer": 2', '"n_layer": 3'))
    (out / "loss.png").unlink()  # deleting a file of the export loses nothing
    assert upload_hf.main(args) == 2
    err = capsys.readouterr().err
    assert f"--out {out} was changed since upload_hf.py wrote it (config.json edited, notes.txt added): " in err
    assert "--card" not in err and "pass --overwrite-out to move its contents aside" in err
    assert (out / "notes.txt").read_text() == "mine"
    # --card does not excuse changes other than the card's.
    assert upload_hf.main(args + ["--card", str(out / "README.md")]) == 2
    assert "(config.json edited, notes.txt added)" in capsys.readouterr().err

    assert upload_hf.main(args + ["--overwrite-out"]) == 0
    (backup,) = tmp_path.glob("hf.backup-*")
    assert (backup / "notes.txt").read_text() == "mine" and '"n_layer": 3' in (backup / "config.json").read_text()
    assert uploaded_files(out) == MODEL_FILES | {upload_hf.EXPORT_MARKER}


def test_export_of_an_older_upload_hf_is_not_replaced_blindly(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("# my edits, made before upload_hf.py recorded its files")
    (out / upload_hf.EXPORT_MARKER).write_text("written by upload_hf.py from log/ckpt_000020.pt; a rerun with this --out replaces the folder\n")
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(out)]
    assert upload_hf.main(args) == 2
    assert f"--out {out} was written by an older upload_hf.py, which kept no record of its files" in capsys.readouterr().err
    assert upload_hf.main(args + ["--overwrite-out"]) == 0
    (backup,) = tmp_path.glob("hf.backup-*")
    assert (backup / "README.md").read_text().startswith("# my edits")


def test_card_from_elsewhere_is_published_as_it_is(run_dir, tmp_path, monkeypatch, capsys):
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: apache-2.0\ntags:\n- gpt2\n---\n\n# My model\n")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    hub = FakeHub(monkeypatch)
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--card", str(card)]) == 0
    assert hub.card == card.read_text()

    card.write_text("# No metadata\n")
    assert upload_hf.main(["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--card", str(card)]) == 0
    assert f"note: --card {card} has no metadata block" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# The card's HellaSwag figures say how many examples they cover; the licence is a flag


def with_hellaswag_n(run, n):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:  # as train_gpt2.py logs it, with --hellaswag-limit N or on the whole set
        if record["type"] == "eval":
            record["hellaswag_n"] = n
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.mark.parametrize("n", [40, 10_042])
def test_model_card_says_how_many_hellaswag_examples_were_scored(n, tmp_path):
    run = make_run(tmp_path / "log", data=tmp_path / "data" / "edu_fineweb10B", steps=(20,), plot=False)
    with_hellaswag_n(run, n)
    args = ["--log-dir", str(run), "--repo-id", REPO_ID, "--dry-run", "--out", str(tmp_path / "hf"), "--license", "apache-2.0"]
    assert upload_hf.main(args) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"| HellaSwag acc_norm ({n:,} examples) | {ACC_NORM:.4f} | 20 |" in card
    assert f"| HellaSwag acc ({n:,} examples) | {ACC:.4f} | 20 |" in card
    assert f"HellaSwag acc_norm {upload_hf.GPT2_124M_HELLASWAG} on all 10,042 validation examples" in card
    stderr = math.sqrt(ACC_NORM * (1 - ACC_NORM) / n)
    subset = f"HellaSwag was scored on 40 examples, a subset of the 10,042 in its validation set (train_gpt2.py --hellaswag-limit), "
    assert (subset in card and f"about {stderr:.3f}" in card) == (n == 40)
    assert "does not record how many HellaSwag examples" not in card
    assert "license: apache-2.0" in card


def test_model_card_says_when_the_number_of_hellaswag_examples_is_unknown(dry_run):
    card = (dry_run / "README.md").read_text()  # its metrics.jsonl predates hellaswag_n
    assert "does not record how many HellaSwag examples these figures cover" in card
    assert "subset" not in card and f"| HellaSwag acc_norm | {ACC_NORM:.4f} | 20 |" in card


# -----------------------------------------------------------------------------
# The export is also loaded with transformers, where it is installed


def test_export_is_checked_with_transformers(run_dir, tmp_path, monkeypatch, capsys):
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(tmp_path / "hf")]
    assert upload_hf.main(args) == 0
    assert re.search(r"verified: transformers \S+ loads the export as GPT2LMHeadModel with the checkpoint's logits", capsys.readouterr().out)

    # A mistake that model.py's writer and reader share, which only transformers can see.
    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained

    def misread(*args, **kwargs):
        model = real_from_pretrained(*args, **kwargs)
        with torch.no_grad():
            model.transformer.ln_f.bias.add_(1e-3)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", misread)
    assert upload_hf.main(args[:-1] + [str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "transformers' GPT2LMHeadModel gives logits that differ from" in err and "nothing was uploaded" in err
    assert not (tmp_path / "hf2").exists()


def test_export_without_transformers_says_it_was_not_checked_with_it(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    args = ["--log-dir", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--out", str(tmp_path / "hf")]
    assert upload_hf.main(args) == 0
    out = capsys.readouterr().out
    assert "note: transformers is not installed, so the export was not also loaded with it" in out
    assert "verified: the export reloads to the checkpoint's logits" in out and "verified: transformers" not in out
