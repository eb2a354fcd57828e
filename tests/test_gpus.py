"""Running on whatever GPU a user has: the peak FLOP/s behind MFU, matched by device name, and the
loss plot of a run that has no HellaSwag scores. No GPU needed: the device name is monkeypatched."""

import json

import matplotlib.figure
import pytest
import torch

import train_gpt2
from train_gpt2 import PEAK_BF16_FLOPS, PEAK_FP16_ONLY_FLOPS, peak_flops

CUDA = torch.device("cuda", 0)

# torch.cuda.get_device_name() and get_device_capability() as real cards report them, and the peak
# dense tensor FLOP/s the data sheet gives for --dtype auto's choice (bf16 from 8.0, fp16 below).
REAL_DEVICES = [
    ("NVIDIA H100 80GB HBM3", (9, 0), 989e12),
    ("NVIDIA H100 PCIe", (9, 0), 756.5e12),
    ("NVIDIA H100 NVL", (9, 0), 835.5e12),
    ("NVIDIA H200", (9, 0), 989e12),
    ("NVIDIA H200 NVL", (9, 0), 835.5e12),
    ("NVIDIA GH200 480GB", (9, 0), 989e12),
    ("NVIDIA B200", (10, 0), 2.25e15),
    ("NVIDIA GB200", (10, 0), 2.5e15),
    ("NVIDIA A100-SXM4-40GB", (8, 0), 312e12),
    ("NVIDIA A100-SXM4-80GB", (8, 0), 312e12),
    ("NVIDIA A100-PCIE-40GB", (8, 0), 312e12),
    ("NVIDIA A100 80GB PCIe", (8, 0), 312e12),
    ("NVIDIA A10", (8, 6), 125e12),
    ("NVIDIA A10G", (8, 6), None),  # no NVIDIA data sheet: no MFU, and not the A10's figure
    ("NVIDIA L4", (8, 9), 121e12),
    ("NVIDIA L40", (8, 9), 181.05e12),
    ("NVIDIA L40S", (8, 9), 362.05e12),
    ("NVIDIA GeForce RTX 3090", (8, 6), 71e12),
    ("NVIDIA GeForce RTX 4090", (8, 9), 165.2e12),
    ("NVIDIA GeForce RTX 5090", (12, 0), 209.5e12),
    ("NVIDIA RTX A6000", (8, 6), 154.8e12),
    ("Tesla V100-SXM2-16GB", (7, 0), 125e12),
    ("Tesla V100-SXM2-32GB", (7, 0), 125e12),
    ("Tesla V100-PCIE-16GB", (7, 0), 112e12),
    ("Tesla V100S-PCIE-32GB", (7, 0), 130e12),
    ("Tesla T4", (7, 5), 65e12),
    ("NVIDIA GeForce RTX 2080 Ti", (7, 5), None),  # not listed: no MFU rather than a guess
    ("NVIDIA T400", (7, 5), None),  # not the T4
]


def pretend_gpu(monkeypatch, name: str, capability: tuple[int, int]):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("name,capability,expected", REAL_DEVICES)
def test_peak_flops_matches_real_device_names(monkeypatch, name, capability, expected):
    pretend_gpu(monkeypatch, name, capability)
    got = peak_flops(CUDA)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_no_key_is_shadowed_by_an_earlier_one():
    """First match wins, so a key that contains an earlier key (A100 after A10) could never match."""
    keys = [*PEAK_BF16_FLOPS, *PEAK_FP16_ONLY_FLOPS]
    shadowed = [(earlier, later) for i, earlier in enumerate(keys) for later in keys[i + 1:] if earlier in later]
    assert shadowed == []


def test_peak_depends_on_dtype(monkeypatch):
    pretend_gpu(monkeypatch, "Tesla V100-SXM2-16GB", (7, 0))
    assert peak_flops(CUDA, torch.float16) == 125e12
    assert peak_flops(CUDA, torch.bfloat16) is None  # emulated on Volta: no tensor-core peak
    pretend_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert peak_flops(CUDA, torch.bfloat16) == peak_flops(CUDA, torch.float16) == 312e12
    assert peak_flops(CUDA, torch.float32) is None  # TF32's peak is another figure
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


def write_metrics(log_dir, hellaswag_scores: bool):
    """A metrics.jsonl as a short run writes it: header, train steps, two evaluations."""
    records = [{"type": "header", "config": {"data": "data/pystdlib"}}]
    records += [{"type": "train", "step": step, "train_loss": 10.0 - step / 10} for step in range(1, 21)]
    for step in (0, 20):
        hs = 0.25 + step / 1000 if hellaswag_scores else None
        records.append({"type": "eval", "step": step, "val_loss": 10.0 - step / 10, "hellaswag_acc_norm": hs})
    (log_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("hellaswag_scores,titles", [(False, ["loss"]), (True, ["loss", "HellaSwag"])])
def test_plot_has_a_hellaswag_panel_only_with_scores(tmp_path, monkeypatch, hellaswag_scores, titles):
    saved = []
    savefig = matplotlib.figure.Figure.savefig

    def record_panels(fig, *args, **kwargs):
        saved.append([ax.get_title() for ax in fig.axes])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_panels)
    write_metrics(tmp_path, hellaswag_scores)
    out = train_gpt2.plot_metrics(tmp_path)
    assert saved == [titles]
    assert out == tmp_path / "loss.png" and out.stat().st_size > 10_000
