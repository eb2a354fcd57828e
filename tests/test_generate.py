import sys

import pytest
import torch

import generate
import model as model_module
from model import EOT_TOKEN, GPT, GPTConfig, get_tokenizer

BLOCK_SIZE = 64


def tiny_model() -> GPT:
    return GPT(GPTConfig(block_size=BLOCK_SIZE, n_layer=2, n_head=4, n_embd=64), seed=0).eval()


def save_checkpoint(m: GPT, path):
    # The part of train_gpt2.py's checkpoint format that model.load_model reads.
    torch.save({"model": m.state_dict(), "model_config": m.config.to_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tiny_model(), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def eot_model() -> GPT:
    """A model whose next-token distribution ignores its input: <|endoftext|> gets logit 1 and
    every other token about 0, so with --top-k 5 it ends a sample with probability ~0.4 per step."""
    m = tiny_model()
    direction = torch.zeros(m.config.n_embd)
    direction[0] = 1.0
    with torch.no_grad():
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.copy_(direction)  # every position's final hidden state
        m.transformer.wte.weight[EOT_TOKEN] = direction  # tied to lm_head: EOT's logit is 1
    return m


def run(capsys, *args):
    """main(args) -> (returned texts, stdout, stderr)."""
    texts = generate.main(list(args))
    captured = capsys.readouterr()
    return texts, captured.out, captured.err


def greedy_text(m: GPT, tokens: list[int], max_new_tokens: int) -> str:
    out = m.generate(torch.tensor([tokens]), max_new_tokens, temperature=0)
    return get_tokenizer().decode(out[0, len(tokens) :].tolist())


def test_same_seed_same_output(checkpoint, capsys):
    args = ("-m", checkpoint, "--prompt", "Once upon a time", "--max-new-tokens", "20", "-d", "cpu")
    first, first_out, _ = run(capsys, *args, "--seed", "3")
    again, again_out, _ = run(capsys, *args, "--seed", "3")
    other, _, _ = run(capsys, *args, "--seed", "4")
    assert first == again and first_out == again_out
    assert first != other
    # Seeded per prompt: a prompt's samples do not depend on the prompts before it.
    both, _, _ = run(capsys, "-m", checkpoint, "--prompt", "Elsewhere", *args[2:], "--seed", "3")
    assert both[1] == first[0]


def test_greedy_with_and_without_kv_cache_is_identical(checkpoint, capsys):
    # 80 new tokens run past block_size=64, where the cached path falls back to recomputing.
    args = ("-m", checkpoint, "--prompt", "The", "--temperature", "0", "--max-new-tokens", "80", "--no-stop", "-d", "cpu")
    cached, cached_out, _ = run(capsys, *args)
    recomputed, recomputed_out, _ = run(capsys, *args, "--no-kv-cache")
    assert cached == recomputed and cached_out == recomputed_out
    assert cached[0][0] == "The" + greedy_text(tiny_model(), get_tokenizer().encode("The"), 80)


def test_all_samples_of_a_prompt_are_one_batch(checkpoint, capsys, monkeypatch):
    batch_shapes = []
    original = GPT.generate

    def spy(self, idx, *args, **kwargs):
        batch_shapes.append(tuple(idx.shape))
        return original(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", spy)
    texts, out, _ = run(capsys, "-m", checkpoint, "--prompt", "One", "--prompt", "Two words", "--num-samples", "3",
                        "--max-new-tokens", "10", "--seed", "5", "-d", "cpu")
    assert batch_shapes == [(3, 1), (3, 2)]
    assert [len(samples) for samples in texts] == [3, 3] and len(set(texts[0])) == 3
    assert out.count(generate.SEPARATOR + "\n") == 6
    # Row i of the batch is what one batched call with the same seeded generator gives.
    m = tiny_model()
    rows = original(m, torch.tensor([get_tokenizer().encode("One")] * 3), 10, temperature=1.0, top_k=50,
                    generator=torch.Generator().manual_seed(5))
    assert texts[0] == ["One" + generate.decode_completion(row, stop=True) for row in rows[:, 1:].tolist()]


def test_long_prompt_keeps_its_last_block_size_tokens(checkpoint, capsys):
    prompt = " ".join(f"word{i}" for i in range(100))
    tokens = get_tokenizer().encode(prompt)
    assert len(tokens) > BLOCK_SIZE
    texts, _, err = run(capsys, "-m", checkpoint, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "5", "--no-stop",
                        "-d", "cpu")
    assert f"prompt of {len(tokens)} tokens is longer than the model's block_size=64: keeping its last 64 tokens" in err
    assert texts[0][0] == prompt + greedy_text(tiny_model(), tokens[-BLOCK_SIZE:], 5)


def test_empty_prompt_starts_from_end_of_text(checkpoint, capsys):
    texts, _, _ = run(capsys, "-m", checkpoint, "--prompt", "", "--temperature", "0", "--max-new-tokens", "12", "--no-stop", "-d", "cpu")
    assert texts[0][0] == greedy_text(tiny_model(), [EOT_TOKEN], 12)


def test_stream_prints_the_same_text(tmp_path, checkpoint, capsys):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Café au lait, s'il vous plaît:\n")
    eot_checkpoint = save_checkpoint(eot_model(), tmp_path / "eot.pt")
    for model_path, extra in ((checkpoint, ()), (eot_checkpoint, ("--top-k", "5")), (eot_checkpoint, ("--top-k", "5", "--no-stop"))):
        for prompt_args in (("--prompt-file", str(prompt_file)), ("--prompt", "x", "--prompt", "")):
            args = ("-m", model_path, *prompt_args, "--max-new-tokens", "40", "--seed", "11", "-d", "cpu", *extra)
            batched, batched_out, _ = run(capsys, *args)
            streamed, streamed_out, _ = run(capsys, *args, "--stream")
            assert streamed == batched and streamed_out == batched_out


def test_stream_prints_a_character_split_over_tokens_once(capsys):
    enc = get_tokenizer()
    # "é" is two bytes; as two single-byte tokens, decoding token by token would print two
    # replacement characters.
    tokens = [*enc.encode("Caf"), enc.encode_single_token(b"\xc3"), enc.encode_single_token(b"\xa9")]

    class Scripted:
        def generate_tokens(self, idx, max_new_tokens, **sampling):
            return iter(torch.tensor([t]) for t in tokens)

    config = generate.GenerateConfig(max_new_tokens=3)
    assert generate.stream_sample(Scripted(), torch.tensor([[EOT_TOKEN]]), config, enc) == "Café"
    assert capsys.readouterr().out == "Café\n"


def test_stops_at_end_of_text_unless_no_stop(tmp_path, capsys):
    model_path = save_checkpoint(eot_model(), tmp_path / "eot.pt")
    for seed in range(20):
        args = ("-m", model_path, "--prompt", "Hi", "--top-k", "5", "--max-new-tokens", "30", "--seed", str(seed), "-d", "cpu")
        (unstopped,), _, _ = run(capsys, *args, "--no-stop")
        if not unstopped[0].startswith("Hi<|endoftext|>"):
            break  # a seed whose sample has text before its first <|endoftext|>
    assert "<|endoftext|>" in unstopped[0]
    (stopped,), out, _ = run(capsys, *args)
    assert stopped[0] == unstopped[0].split("<|endoftext|>")[0] and len(stopped[0]) > len("Hi")
    assert "<|endoftext|>" not in out


def test_loads_a_checkpoint_and_a_hugging_face_folder(tmp_path, checkpoint, capsys):
    m = tiny_model()
    folder = m.save_pretrained(tmp_path / "hf")
    expected = "Hello" + greedy_text(m, get_tokenizer().encode("Hello"), 15)
    for model_path in (checkpoint, str(folder)):
        texts, _, _ = run(capsys, "-m", model_path, "--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "15", "--no-stop",
                          "-d", "cpu")
        assert texts == [[expected]]
    with pytest.raises(SystemExit, match=r"--model .*nope\.pt: could not load it"):
        generate.main(["-m", str(tmp_path / "nope.pt")])


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "-0.5"],
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--top-k", "0"],
        ["--top-p", "0"],
        ["--top-p", "1.5"],
        ["--num-samples", "0"],
        ["--max-new-tokens", "0"],
        ["--stream", "--num-samples", "2"],
        ["--compile", "--no-kv-cache"],
        ["--bench-preset", "gpt2"],
        ["--prompt", "a", "--prompt-file", "b.txt"],
        ["--prompt-file", "/nonexistent/prompt.txt"],
        ["--dtype", "fp8"],
        ["--compare", "--bench"],
        ["--compare", "--no-kv-cache"],
        ["--compare-rounds", "0"],
    ],
)
def test_bad_flags_are_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as excinfo:
        generate.parse_args(args)
    assert excinfo.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_sampling_flags_reach_the_config():
    config = generate.parse_args(["--temperature", "0", "--top-k", "1", "--top-p", "1", "--no-stop", "--no-kv-cache"])
    assert (config.temperature, config.top_k, config.top_p, config.stop, config.kv_cache) == (0.0, 1, 1.0, False, False)
    assert generate.parse_args([]).prompt == [generate.DEFAULT_PROMPT]
    assert (generate.parse_args([]).compile, generate.parse_args(["--compile"]).compile) == (None, True)


def test_sampling_flags_reach_the_sampler(tmp_path, capsys):
    m = tiny_model()
    with torch.no_grad():  # logits 5x as spread out (std 0.8, not 0.16): each setting below changes the tokens
        m.transformer.ln_f.weight.mul_(5)
        m.transformer.ln_f.bias.mul_(5)
    settings = dict(temperature=0.5, top_k=20, top_p=0.5)
    texts, _, _ = run(capsys, "-m", save_checkpoint(m, tmp_path / "sharp.pt"), "--prompt", "The", "--num-samples", "2",
                      "--max-new-tokens", "4", "--no-stop", "--seed", "3", "-d", "cpu", "--temperature", "0.5", "--top-k", "20", "--top-p", "0.5")

    def direct(**overrides) -> list[list[str]]:
        """The texts of the model's own generate with these settings and generate.py's seed."""
        rows = m.generate(torch.tensor([get_tokenizer().encode("The")] * 2), 4, generator=torch.Generator().manual_seed(3),
                          **{**settings, **overrides})
        return [["The" + generate.decode_completion(row, stop=False) for row in rows[:, 1:].tolist()]]

    assert texts == direct()
    # Each setting changes the text, so a flag that did not reach the sampler would be caught.
    for name, ignored in (("temperature", 1.0), ("top_k", None), ("top_k", generate.GenerateConfig.top_k), ("top_p", None)):
        assert direct(**{name: ignored}) != texts, f"{name}={ignored} gives the same text"


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """torch.compile with the aot_eager backend: inductor takes minutes on a CPU, aot_eager seconds."""
    torch._dynamo.reset()
    compile = torch.compile
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or compile(fn, **{**kwargs, "backend": "aot_eager"}))
    yield calls
    torch._dynamo.reset()


def test_compile_gives_the_same_text(checkpoint, capsys, aot_eager_compile):
    for extra in (("--temperature", "0"), ("--top-k", "20", "--seed", "2")):
        args = ("-m", checkpoint, "--prompt", "The", "--num-samples", "2", "--max-new-tokens", "20", "--no-stop", "-d", "cpu", *extra)
        compiled, compiled_out, _ = run(capsys, *args, "--compile")
        eager, eager_out, _ = run(capsys, *args)
        assert compiled == eager and compiled_out == eager_out
    assert aot_eager_compile == [dict(fullgraph=True, mode=None)] * 2  # no CUDA graphs on CPU


def test_bench_on_a_tiny_preset(tmp_path, capsys, aot_eager_compile):
    timings = generate.main(["--bench", "--bench-preset", "tiny", "--bench-tokens", "4", "-d", "cpu"])
    assert timings["cached_ms"] > 0 and timings["recompute_ms"] > 0 and "compiled_ms" not in timings  # CPU: no compile unless asked
    out = capsys.readouterr().out
    assert "bench: tiny (randomly initialised" in out and f"KV cache speed-up: {timings['speedup']:.2f}x" in out
    timings = generate.main(["--bench", "--bench-preset", "tiny", "--bench-tokens", "4", "-d", "cpu", "--compile"])
    out = capsys.readouterr().out
    for label, key in (("KV cache, eager:", "cached_ms"), ("KV cache, compiled:", "compiled_ms"), ("no KV cache, eager:", "recompute_ms")):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert f"{timings[key] / 4:.2f} ms/token" in line and f"{timings['recompute_ms'] / timings[key]:.2f}x" in line
    assert f"compiled KV cache speed-up: {timings['compiled_speedup']:.2f}x" in out and timings["compile_s"] > 0
    # A model that cannot be loaded is an error that points to --bench-preset, never a silent stand-in.
    with pytest.raises(SystemExit, match="--bench-preset gpt2 builds a randomly initialised model"):
        generate.main(["--bench", "-m", str(tmp_path / "missing.pt")])


@pytest.fixture
def compiled_step_calls(monkeypatch):
    """torch.compile through aot_eager (see aot_eager_compile), recording the addresses of the KV
    cache and the weights that each call of the compiled decode step reads."""
    torch._dynamo.reset()
    compile = torch.compile
    calls = []

    def spy_compile(fn, **kwargs):
        compiled = compile(fn, **{**kwargs, "backend": "aot_eager"})

        def step(token, cache, noise, temperature, top_k, top_p, weights):
            calls.append(([t.data_ptr() for t in (*cache.k, *cache.v, cache.pos, cache.key_pos)],
                          {name: w.data_ptr() for name, w in weights.items()}))
            return compiled(token, cache, noise, temperature, top_k, top_p, weights)

        return step

    monkeypatch.setattr(torch, "compile", spy_compile)
    yield calls
    torch._dynamo.reset()


def test_compiled_generation_keeps_its_cache_and_weights_across_calls(compiled_step_calls):
    # A CUDA graph records the addresses it reads, and records again (a capture) when one changes:
    # consecutive generations must hand the compiled step the same cache and weight tensors.
    m = tiny_model()
    prompt = torch.tensor([get_tokenizer().encode("Once upon a time")] * 2)
    first = m.generate(prompt, 12, temperature=0, compile=True)
    steps_of_first = len(compiled_step_calls)
    second = m.generate(prompt[:, 1:], 20, temperature=0, compile=True)  # shorter prompt, same cache length (64)
    assert torch.equal(second[:, 1:], m.generate(prompt[:, 1:], 20, temperature=0, use_kv_cache=False)[:, 1:])
    assert torch.equal(first, m.generate(prompt, 12, temperature=0, use_kv_cache=False))
    addresses = {repr(call) for call in compiled_step_calls}
    assert steps_of_first == 11 and len(compiled_step_calls) == 11 + 19 and len(addresses) == 1
    # CPU: the step reads every weight matrix as a copy in the (in, out) layout (GPT.decode_weights).
    weight_addresses = compiled_step_calls[0][1]
    assert len(weight_addresses) == 4 * 2 + 1 and "lm_head.weight" in weight_addresses
    # Training changes the weights in place between the samples it generates: the kept copies
    # follow them, in the same tensors.
    optimizer = torch.optim.AdamW(m.parameters(), lr=0.05)
    for param in m.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    after_step = m.generate(prompt, 12, temperature=0, compile=True)
    assert torch.equal(after_step, m.generate(prompt, 12, temperature=0, use_kv_cache=False))
    assert not torch.equal(after_step, first)  # the step changed the tokens: stale weights would be caught
    assert len({repr(call) for call in compiled_step_calls}) == 1
    # So do the eager steps, which read the same kept copies on CPU; and load_state_dict's copies.
    m.load_state_dict(tiny_model().state_dict())
    assert torch.equal(m.generate(prompt, 12, temperature=0), first)
    assert torch.equal(m.generate(prompt, 12, temperature=0, compile=True), first)
    # Another batch size needs another cache; the weights stay where they are.
    m.generate(prompt[:1], 5, temperature=0, compile=True)
    cache_addresses, weight_addresses_now = compiled_step_calls[-1]
    assert cache_addresses != compiled_step_calls[0][0] and weight_addresses_now == weight_addresses


def test_kv_cache_under_bf16_stays_within_bf16_rounding_of_recomputing():
    """In fp32 the cached and recomputed paths give the same greedy tokens (tests above). Under
    bf16 autocast they need not: the cached step multiplies one row at a time where recomputing
    multiplies all T, so the bf16 matmuls round differently, and once two tokens' logits are
    closer than that rounding, greedy decoding can pick either. What holds is that the cached
    logits are as close to the recomputed ones as bf16 itself is to fp32."""
    m = tiny_model()
    tokens = torch.randint(0, m.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact, _ = m(tokens)  # fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recomputed, _ = m(tokens)
            cache = model_module.KVCache(m.config, 2, "cpu", torch.bfloat16)
            cached = [m(tokens[:, :8], cache=cache)[0]]
            cache.pos += 8
            for t in range(8, 40):
                cached.append(m(tokens[:, t : t + 1], cache=cache)[0])
                cache.pos += 1
    cached = torch.cat(cached, dim=1).float()
    # Tolerance: each bf16 path is within bf16's rounding of the exact (fp32) logits, so by the
    # triangle inequality the two are within twice that of each other. bf16 keeps 8 significant
    # bits (a relative rounding of 2^-8 = 0.4% per operation), so that bound is well above zero;
    # a cache that attended to a wrong or unwritten position would miss it by far more.
    bf16_error = (recomputed.float() - exact).abs().amax(dim=-1)  # (B, T): per position
    assert bf16_error.min() > 0  # bf16 does round here, so the bound below is not vacuous
    assert ((cached - recomputed.float()).abs().amax(dim=-1) <= 2 * bf16_error.amax()).all()


def test_dtype_sets_the_autocast_of_generation(checkpoint, capsys, monkeypatch):
    seen = []
    original = GPT.generate

    def spy(self, idx, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return original(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "generate", spy)
    args = ("-m", checkpoint, "--prompt", "The", "--temperature", "0", "--max-new-tokens", "6", "--no-stop", "-d", "cpu")
    for dtype, expected in (("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        texts, _, err = run(capsys, *args, "--dtype", dtype)
        assert seen.pop() == expected and f"dtype: {generate.dtype_name(expected)}\n" in err
        with torch.autocast("cpu", dtype=expected, enabled=expected != torch.float32):
            assert texts[0][0] == "The" + greedy_text(tiny_model(), get_tokenizer().encode("The"), 6)
    timings = generate.main(["--bench", "--bench-preset", "tiny", "--bench-tokens", "2", "-d", "cpu", "--dtype", "bf16"])
    assert timings["dtype"] == "bf16" and ", bf16, batch 1" in capsys.readouterr().out


def test_compare_against_transformers_on_a_tiny_preset(capsys, monkeypatch):
    result = generate.main(["--compare", "--bench-preset", "tiny", "--bench-tokens", "6", "--compare-rounds", "3",
                            "--num-samples", "2", "-d", "cpu"])
    out = capsys.readouterr().out
    assert result["same_tokens"] and result["shared_tokens"] == 6 and result["dtype"] == "fp32"
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("round ")] == ["round 1", "round 2", "round 3"]
    assert f"{result['transformers_median_ms'] / result['ours_median_ms']:.2f}x (medians)" in out
    assert result["ours_best_ms"] <= result["ours_median_ms"] and "GPT2LMHeadModel (sdpa attention)" in out
    # transformers is a test-only dependency: without it, one line says what to install.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(SystemExit, match="--compare needs transformers"):
        generate.main(["--compare", "--bench-preset", "tiny", "--bench-tokens", "2", "-d", "cpu"])
