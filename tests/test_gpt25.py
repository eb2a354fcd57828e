"""GPT-2.5 (RMSNorm, SwiGLU, RoPE, no biases): the model, its Llama-format export, and every stage
(training with exact resume, HellaSwag, generation with the KV cache, upload) run with it."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

import fineweb
import generate
import hellaswag
import model
import train_gpt2
import upload_hf
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

SMALL = dict(block_size=32, vocab_size=model.GPT2_VOCAB_SIZE, n_layer=2, n_head=4, n_embd=64)


def modern_model(seed=0, randomize_norms=True, **overrides) -> GPT:
    """A small GPT-2.5; its norm gains (all 1 at init) made random so that a lost or misplaced one shows."""
    m = GPT(GPTConfig(**{**SMALL, **model.MODERN, **overrides}), seed=seed).eval()
    if randomize_norms:
        generator = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if ".ln_" in name or name.endswith("bias"):
                    p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return m


def random_tokens(batch=2, length=16, seed=1, vocab=model.GPT2_VOCAB_SIZE):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# The model


def test_gpt25_preset_is_gpt2_size_with_modern_components():
    m = GPT(GPTConfig.from_preset("gpt2.5"))
    cfg = m.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.d_ff, cfg.rope_theta) == (12, 12, 768, 2048, 10_000.0)
    assert (cfg.norm, cfg.mlp, cfg.positions, cfg.bias) == ("rmsnorm", "swiglu", "rope", False)
    # Per layer: attention 4 C^2, SwiGLU 3 C d_ff, two RMSNorm gains; plus the tied embedding and ln_f.
    per_layer = 4 * 768**2 + 3 * 768 * 2048 + 2 * 768
    assert m.num_params() == 50257 * 768 + 12 * per_layer + 768 == 123_551_232
    names = set(m.state_dict())
    assert "transformer.wpe.weight" not in names and not any(name.endswith(".bias") for name in names)
    assert m.transformer.h[0].mlp.c_fc.weight.shape == (2 * 2048, 768)  # [gate | up]
    assert isinstance(m.transformer.ln_f, torch.nn.RMSNorm) and m.transformer.ln_f.eps == model.NORM_EPS
    # No position table: every parameter counts towards the 6N of the FLOPs estimate.
    assert m.flops_per_token(1024) == 6 * 123_551_232 + 12 * 12 * 768 * 1024
    # GPT-2 is unchanged by the new fields.
    gpt2 = GPT(GPTConfig.from_preset("gpt2"))
    assert gpt2.num_params() == 124_439_808 and "transformer.wpe.weight" in gpt2.state_dict()
    assert GPTConfig.from_preset("gpt2").hf_architecture == "GPT2LMHeadModel" and cfg.hf_architecture == "LlamaForCausalLM"
    tiny, tiny25 = GPTConfig.from_preset("tiny"), GPTConfig.from_preset("tiny-2.5")
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size) == (tiny25.n_layer, tiny25.n_head, tiny25.n_embd, tiny25.block_size)


def test_config_fields_are_checked_and_d_ff_defaults_to_equal_parameters():
    assert GPTConfig(n_embd=768, mlp="swiglu").d_ff == 2048 and GPTConfig(n_embd=768).d_ff == 3072
    assert GPTConfig(n_embd=128, n_head=4, mlp="swiglu").d_ff == GPTConfig.from_preset("tiny-2.5").d_ff == 352
    with pytest.raises(ValueError, match="norm='batchnorm' is not one of layernorm, rmsnorm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="positions='alibi' is not one of learned, rope"):
        GPTConfig(positions="alibi")
    with pytest.raises(ValueError, match="head size 5 must be even"):
        GPTConfig(n_embd=20, n_head=4, positions="rope")
    # A config from a checkpoint written before these fields existed is GPT-2's.
    old = {k: v for k, v in GPTConfig.from_preset("tiny").to_dict().items() if k not in ("norm", "mlp", "d_ff", "positions", "rope_theta")}
    assert GPTConfig.from_dict(old) == GPTConfig.from_preset("tiny")


def test_swiglu_residual_projections_get_the_scaled_init():
    m = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=32, **model.MODERN), seed=0)
    mlp = m.transformer.h[0].mlp
    assert abs(mlp.c_fc.weight.std().item() - 0.02) < 0.001
    assert abs(mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.0005
    assert abs(m.transformer.h[0].attn.c_proj.weight.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.0005


def test_modern_model_is_causal_and_position_aware():
    m = modern_model()
    x = random_tokens(1, 16)
    y = x.clone()
    y[0, 9] = (y[0, 9] + 1) % 50257
    logits_x, logits_y = m(x)[0], m(y)[0]
    assert torch.equal(logits_x[:, :9], logits_y[:, :9]) and not torch.allclose(logits_x[:, 9:], logits_y[:, 9:])
    # Without a position table only the rotary embedding gives order: in one layer, attention
    # without it sees the same set of keys and values after two earlier tokens are swapped.
    one_layer = modern_model(n_layer=1)
    with torch.no_grad():
        one_layer.transformer.h[0].attn.c_attn.weight.mul_(10)  # sharper attention than at init
    swapped = x.clone()
    swapped[0, [2, 5]] = x[0, [5, 2]]
    assert (one_layer(swapped)[0][0, -1] - one_layer(x)[0][0, -1]).abs().max() > 1e-3
    one_layer.rope_cos.fill_(1.0)  # no rotation: the check above would fail
    one_layer.rope_sin.fill_(0.0)
    assert torch.allclose(one_layer(swapped)[0][0, -1], one_layer(x)[0][0, -1], atol=1e-5)


def test_rope_kv_cache_matches_recompute():
    m = modern_model(vocab_size=1024)
    prompt = random_tokens(3, 5, vocab=1024)
    greedy_cached = m.generate(prompt, 40, temperature=0)  # runs past block_size=32
    assert torch.equal(greedy_cached, m.generate(prompt, 40, temperature=0, use_kv_cache=False))
    sample = lambda cache: m.generate(prompt, 20, temperature=0.9, top_k=50, use_kv_cache=cache,
                                      generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample(True), sample(False))
    # Chunks after cached positions are rotated by their absolute positions, as in the full forward.
    full, _ = m(prompt)
    cache = model.KVCache(m.config, 3, "cpu", torch.float32)
    m(prompt[:, :2], cache=cache)
    cache.pos = 2
    middle, _ = m(prompt[:, 2:4], cache=cache)
    cache.pos = 4
    last, _ = m(prompt[:, 4:], cache=cache)
    assert torch.allclose(torch.cat([middle, last], dim=1), full[:, 2:], atol=1e-5)


def test_rotary_embedding_is_llamas_rotate_half():
    """apply_rotary against transformers' own Llama functions, on the angles GPT precomputes."""
    from transformers.models.llama import modeling_llama

    m = modern_model(n_embd=64, n_head=2, rope_theta=500.0)
    hf_rope = modeling_llama.LlamaRotaryEmbedding(transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=2, max_position_embeddings=32, rope_theta=500.0))
    q, k = torch.randn(2, 2, 10, 32), torch.randn(2, 2, 10, 32)
    positions = torch.arange(3, 13)
    cos, sin = hf_rope(q, positions[None])
    assert torch.allclose(cos[0], m.rope_cos[positions], atol=1e-6) and torch.allclose(sin[0], m.rope_sin[positions], atol=1e-6)
    hf_q, hf_k = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    rotary = (m.rope_cos[positions], m.rope_sin[positions])
    assert torch.allclose(model.apply_rotary(q, *rotary), hf_q, atol=1e-6)
    assert torch.allclose(model.apply_rotary(k, *rotary), hf_k, atol=1e-6)


# -----------------------------------------------------------------------------
# Llama format


def hf_llama(bias: bool, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5,
                                   rope_theta=500.0, tie_word_embeddings=True, attention_bias=bias, mlp_bias=bias)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers sets norm gains to 1 and biases to 0: make them random too
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("bias", [False, True])
def test_loads_a_llama_folder_written_by_transformers(tmp_path, bias):
    hf = hf_llama(bias)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    assert (ours.config.rope_theta, ours.config.d_ff, ours.config.bias, ours.config.positions) == (500.0, 160, bias, "rope")
    x = random_tokens(2, 32)
    with torch.no_grad():
        hf_out = hf(x, labels=x)
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -1)], dim=1)  # transformers shifts labels inside the model
    logits, loss = ours(x, targets)
    assert (logits - hf_out.logits).abs().max().item() <= 1e-5
    assert abs(loss.item() - hf_out.loss.item()) <= 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_save_pretrained_writes_a_llama_folder_transformers_loads(tmp_path, monkeypatch, bias):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = modern_model(seed=5, bias=bias, pad_vocab_multiple=64)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert {k: config[k] for k in ("hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "attention_bias", "mlp_bias",
                                   "head_dim", "num_key_value_heads", "max_position_embeddings", "intermediate_size", "vocab_size")} == {
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10_000.0, "tie_word_embeddings": True, "attention_bias": bias,
        "mlp_bias": bias, "head_dim": 16, "num_key_value_heads": 4, "max_position_embeddings": 32, "intermediate_size": 192,
        "vocab_size": 50257}  # fmt: skip
    from safetensors.torch import load_file

    names = set(load_file(tmp_path / "model.safetensors"))
    layer0 = {n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")}
    expected = {f"self_attn.{p}_proj.weight" for p in "qkvo"} | {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    expected |= {"input_layernorm.weight", "post_attention_layernorm.weight"}
    if bias:
        expected |= {f"self_attn.{p}_proj.bias" for p in "qkvo"} | {f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")}
    assert layer0 == expected
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= names and "lm_head.weight" not in names

    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = random_tokens(2, 32)
    with torch.no_grad():
        hf_logits = hf.eval()(x).logits
    logits, _ = ours(x)
    assert hf_logits.shape == (2, 32, 50257) and (logits - hf_logits).abs().max().item() <= 1e-5
    # Generation with transformers' KV cache and rotary positions picks the tokens ours does.
    prompt = x[:1, :8]
    hf_greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(hf_greedy, ours.generate(prompt, 12, temperature=0))
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)("Hello, I'm a language model,")["input_ids"] == [
        15496, 11, 314, 1101, 257, 3303, 2746, 11]
    again = GPT.from_pretrained(tmp_path).eval()
    assert again.config == GPTConfig(**{**ours.config.to_dict(), "pad_vocab_multiple": 1})
    assert torch.equal(again(x)[0], logits)


def test_rope_theta_reaches_transformers(tmp_path):
    """The exported theta is the one transformers uses: another theta gives other logits."""
    ours = modern_model(rope_theta=500.0)
    ours.save_pretrained(tmp_path)
    x = random_tokens(1, 32)
    logits, _ = ours(x)
    with torch.no_grad():
        same = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()(x).logits
        config = json.loads((tmp_path / "config.json").read_text())
        config["rope_theta"] = config["rope_parameters"]["rope_theta"] = 10_000.0
        (tmp_path / "config.json").write_text(json.dumps(config))
        other = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()(x).logits
    assert (same - logits).abs().max() <= 1e-5 and (other - logits).abs().max() > 1e-3


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_key_value_heads=2), r"num_key_value_heads=2 \(grouped-query attention\) is not supported"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings is not true"),
        (dict(rms_norm_eps=1e-6), "rms_norm_eps 1e-06 differs from 1e-05"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu' is not SwiGLU's silu"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope type 'yarn' is not supported"),
        (dict(intermediate_size=200), r"tensor model\.layers\.0\.mlp\.gate_proj\.weight \+ model\.layers\.0\.mlp\.up_proj\.weight has shape"),
        (dict(model_type="mistral"), "model_type is 'mistral', expected 'gpt2' or 'llama'"),
    ],
)
def test_llama_folders_this_model_cannot_be_are_clear_errors(tmp_path, changes, message):
    modern_model(randomize_norms=False).save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        GPT.from_pretrained(tmp_path)


def test_a_mix_of_components_cannot_be_exported(tmp_path):
    m = GPT(GPTConfig(**SMALL, norm="rmsnorm"))  # RMSNorm with GPT-2's MLP and positions: neither GPT-2 nor Llama
    with pytest.raises(ValueError, match="neither transformers' GPT-2 .* nor Llama"):
        m.save_pretrained(tmp_path)


# -----------------------------------------------------------------------------
# Every stage with --model tiny-2.5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pystdlib"
    assert fineweb.main(["--dataset", "pystdlib", "--max-tokens", "60000", "--val-tokens", "6000", "--out", str(out), "--workers", "1"]) == 0
    return out


def tiny25_args(data_dir, log_dir, *extra):
    return ["--preset", "smoke", "--model", "tiny-2.5", "--data", str(data_dir), "--log-dir", str(log_dir), "--device", "cpu",
            "--micro-batch", "4", "--seq-len", "32", "--total-batch", "256", "--max-steps", "8", "--warmup-steps", "2",
            "--eval-every", "8", "--save-every", "8", "--val-steps", "2", "--no-hellaswag", "--sample-tokens", "4", *extra]


def train_losses(log_dir) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in train_gpt2.read_metrics(log_dir / "metrics.jsonl") if r["type"] == "train"}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny-2.5 run of 8 steps, and the same run stopped at step 4 and resumed."""
    root = tmp_path_factory.mktemp("runs")
    assert train_gpt2.main(tiny25_args(data_dir, root / "full")) == 0
    assert train_gpt2.main(tiny25_args(data_dir, root / "split", "--stop-at-step", "4")) == 0
    assert train_gpt2.main(tiny25_args(data_dir, root / "split", "--resume", "auto")) == 0
    return root


def test_tiny25_trains_and_resumes_exactly(trained):
    header = train_gpt2.read_metrics(trained / "full" / "metrics.jsonl")[0]
    assert header["model_config"]["positions"] == "rope" and header["model_config"]["mlp"] == "swiglu"
    full, split = train_losses(trained / "full"), train_losses(trained / "split")
    assert sorted(split) == list(range(1, 9))
    assert max(abs(full[s] - split[s]) for s in full) <= 1e-6
    assert full[8] < full[1] - 1.0  # it learns
    checkpoint = torch.load(trained / "full" / "ckpt_000008.pt", weights_only=True)
    assert "transformer.wpe.weight" not in checkpoint["model"] and not any(k.endswith("rope_cos") for k in checkpoint["model"])


def test_generate_with_a_tiny25_checkpoint_same_text_with_and_without_cache(trained, capsys):
    # Past block_size the cache falls back to recomputing: test_rope_kv_cache_matches_recompute covers that.
    args = ["-m", str(trained / "full" / "ckpt_000008.pt"), "--prompt", "def main(argv):\n", "--max-new-tokens", "40",
            "--no-stop", "-d", "cpu", "--num-samples", "2"]
    cached = generate.main(args)
    assert cached == generate.main(args + ["--no-kv-cache"])
    assert all(text.startswith("def main(argv):\n") and len(text) > 40 for text in cached[0])


def test_hellaswag_with_a_tiny25_checkpoint_matches_unbatched_scoring(trained, tmp_path):
    """Right-padded batches give a rotary model the scores of each ending alone."""
    examples = [{"ctx": "def main(argv):", "endings": ["return 0", "import os", "x = [1, 2, 3]", "pass"], "label": i % 4}
                for i in range(3)]
    examples[1]["ctx"] = "class Foo(object): " * 3
    data = tmp_path / "hs.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    checkpoint = trained / "full" / "ckpt_000008.pt"
    result = hellaswag.main(["-m", str(checkpoint), "--data", str(data), "-d", "cpu", "--batch-tokens", "64"])
    m, enc = GPT.from_checkpoint(checkpoint).eval(), model.get_tokenizer()
    for example, prediction in zip(examples, sorted(result.predictions, key=lambda p: p["index"])):
        sums = []
        for ending in example["endings"]:
            ctx, end = enc.encode_ordinary(example["ctx"]), enc.encode_ordinary(" " + ending)
            tokens = torch.tensor([ctx + end])
            with torch.no_grad():
                logits, _ = m(tokens)
            sums.append(F.cross_entropy(logits[0, len(ctx) - 1 : -1], tokens[0, len(ctx) :], reduction="sum").item())
        assert prediction["sum_losses"] == pytest.approx(sums, abs=1e-4)


def test_upload_dry_run_of_a_tiny25_checkpoint_is_a_llama_model(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    args = ["--log-dir", str(trained / "full"), "--repo-id", "me/gpt2.5-tiny", "--dry-run", "--out", str(out)]
    assert upload_hf.main(args) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    card = (out / "README.md").read_text()
    assert "A GPT-2.5 language model" in card and "LlamaForCausalLM" in card and "- llama" in card
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = random_tokens(2, 64, vocab=50257)
    with torch.no_grad():
        expected, _ = GPT.from_checkpoint(trained / "full" / "ckpt_000008.pt").eval()(x)
        assert (hf(x).logits - expected).abs().max().item() <= 1e-5
