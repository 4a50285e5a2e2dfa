"""GPT-2, every layer written here (after nanoGPT's ``model.py``).

Parameter names are GPT-2's own (``wte``, ``wpe``, ``h.N.ln_1``, ``attn.c_attn``,
``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_f``) so OpenAI's weights map
one to one. Linear weights are stored as ``(out, in)`` like ``nn.Linear``;
OpenAI's checkpoints use ``Conv1D`` with ``(in, out)``, which ``hub`` transposes.

Shape letters: B batch, T sequence length, S cached + new length (keys),
C embedding size (n_embd), nh heads, hs head size (C // nh), V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2_scratch.config import GPTConfig


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with a learned scale and shift."""

    def __init__(self, ndim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: the tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))."""
    # F.gelu(approximate="tanh") computes exactly this formula in one fused kernel.
    return F.gelu(x, approximate="tanh")


def attention(q, k, v, mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention ``(B, nh, T, hs)`` of queries ``(B, nh, T, hs)`` over keys/values ``(B, nh, S, hs)``.

    The model's one attention route. Without ``mask`` (no padding) it is plain causal attention,
    and a single new token attends to everything cached; ``mask`` ``(B, 1, T, S)`` also keeps
    padding out. bfloat16 decoding on CPU (one query a row) is computed in float32 and rounded
    once: there torch's bfloat16 kernel is 2.6x (1 row) to 3.6x (8 rows) slower than its float32
    one (docs/performance.md); the cache of a bfloat16 model on CPU holds its keys and values in
    float32 (exactly: they were bfloat16), so decoding reads them without converting. Prefill (many
    queries) stays on the bfloat16 kernel, faster there.
    """
    if q.dtype == torch.bfloat16 and q.is_cpu and q.shape[2] == 1:
        return attention(q.float(), k.float(), v.float(), mask, dropout_p).to(q.dtype)
    k, v = k.to(q.dtype), v.to(q.dtype)  # a float32 cache read by bfloat16 queries (prefill); else no copy
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=q.shape[2] > 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# ---- caches: what a forward pass with a cache reads and appends to ---------------------------------
#
# ``GPT.forward`` takes either cache. Both answer the same five calls: ``end(T)`` (the context the
# forward will fill), ``positions(T, device)``, ``attend(layer, q, k, v, mask, dropout_p)`` (store
# this step's keys and values, attend over everything cached) and ``advance(T)``; ``last(x)`` picks
# the hidden states whose logits the caller wants with ``last_only``.


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding of a batch of ``B`` rows.

    ``k`` and ``v`` are ``(n_layer, B, nh, max_len, hs)``; positions ``[0, length)``
    are filled. ``key_valid`` (``(B, max_len)`` bool, or None when no row is
    padded) marks real tokens, so left padding is never attended to.
    Preallocating avoids re-copying the whole cache with ``torch.cat`` on every
    new token.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, *, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        # Uninitialised: attention only ever reads positions [0, length), which are written first.
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len
        self.key_valid: torch.Tensor | None = None

    def end(self, T: int) -> int:
        return self.length + T

    def positions(self, T: int, device) -> torch.Tensor:
        return torch.arange(self.length, self.length + T, device=device).unsqueeze(0)  # (1, T)

    def attend(self, layer: int, q, k, v, mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
        """Write this step's keys and values ``(B, nh, T, hs)`` of ``layer`` after the cached ones, then
        attend with ``q`` over all of them (``S = length + T`` keys)."""
        start, end = self.length, self.length + q.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} tokens; {end} do not fit")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return attention(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end], mask, dropout_p)  # (B, nh, T, hs)

    def advance(self, T: int) -> None:
        self.length += T

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:, :]  # (B, 1, C)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every batch row not in ``rows`` (finished sequences stop costing compute)."""
        # Copy only the filled part: the rest of the buffer is garbage anyway.
        n = self.length
        k = self.k.new_empty(self.k.shape[0], len(rows), *self.k.shape[2:])
        v = torch.empty_like(k)
        k[:, :, :, :n] = self.k[:, rows, :, :n]
        v[:, :, :, :n] = self.v[:, rows, :, :n]
        self.k, self.v = k, v
        if self.key_valid is not None:
            self.key_valid = self.key_valid[rows]


class RaggedCache:
    """Rows of different lengths in one forward pass, each row with its own one-row ``KVCache``.

    The input is the rows' new tokens concatenated, ``(1, N)`` with ``N = sum(lengths)``: what works
    token by token (embeddings, linear layers, LayerNorm, the head) runs once for every row, and
    each row's span attends over its own cache with its own attention call, exactly as when the row
    runs alone. So a request gets its solo tokens in any batch (the serving engine, ``Engine``),
    and no row waits for or pads to another. ``last`` gives each row's last token, ``(1, R, C)``.
    """

    def __init__(self, caches: list[KVCache], lengths: list[int]):
        if len(caches) != len(lengths) or not caches or min(lengths) < 1:
            raise ValueError("a ragged batch needs one cache and at least one new token per row")
        self.caches, self.lengths = caches, lengths
        self.offsets = [sum(lengths[:i]) for i in range(len(lengths))]

    def end(self, T: int) -> int:
        if T != sum(self.lengths):
            raise ValueError(f"a ragged batch of {sum(self.lengths)} tokens got {T}")
        return max(c.length + n for c, n in zip(self.caches, self.lengths))

    def positions(self, T: int, device) -> torch.Tensor:
        pos = [c.length + j for c, n in zip(self.caches, self.lengths) for j in range(n)]
        return torch.tensor(pos, device=device).unsqueeze(0)  # (1, N)

    def attend(self, layer: int, q, k, v, mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
        if mask is not None:
            raise ValueError("a ragged batch has no padding to mask")
        rows = zip(self.caches, *(t.split(self.lengths, dim=2) for t in (q, k, v)))  # each row's span
        ys = [c.attend(layer, q_row, k_row, v_row, None) for c, q_row, k_row, v_row in rows]
        return torch.cat(ys, dim=2)  # (1, nh, N, hs)

    def advance(self, T: int) -> None:
        for c, n in zip(self.caches, self.lengths):
            c.advance(n)

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, [o + n - 1 for o, n in zip(self.offsets, self.lengths)]]  # (1, R, C)


Cache = KVCache | RaggedCache


class Adapted(nn.Module):
    """A linear layer whose adapter may apply to some tokens only: ``forward(x, adapter)`` (``lora.LoRALinear``).

    ``adapter`` is a ``(B, T, 1)`` bool tensor (True: the token gets the adapter; ``GPT.forward`` takes it
    as ``(B, T)``) or None (every token): one batch then mixes rows of the finetuned model and of its
    base (the serving engine).
    """


def project(layer: nn.Module, x: torch.Tensor, adapter: torch.Tensor | None) -> torch.Tensor:
    """``layer(x)``, handing ``adapter`` to the layers that take it (``Adapted``)."""
    return layer(x, adapter) if adapter is not None and isinstance(layer, Adapted) else layer(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        # query, key and value projections of all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, layer: int = 0, cache: Cache | None = None, mask=None, adapter=None):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = project(self.c_attn, x, adapter).view(B, T, 3, nh, hs)  # q, k, v side by side, each nh heads
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs): views, as split and transpose give
        dropout_p = self.dropout if self.training else 0.0
        if cache is not None:  # the cache appends k and v, then attends over everything it holds
            y = cache.attend(layer, q, k, v, mask, dropout_p)
        else:
            y = attention(q, k, v, mask, dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(project(self.c_proj, y, adapter))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, adapter=None):
        return self.dropout(project(self.c_proj, gelu_tanh(project(self.c_fc, x, adapter)), adapter))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, layer: int = 0, cache: Cache | None = None, mask=None, adapter=None):
        x = x + self.attn(self.ln_1(x), layer, cache, mask, adapter)
        x = x + self.mlp(self.ln_2(x), adapter)
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon, config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output head is the token embedding (GPT-2 has no separate head).
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) at init.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters, the tied head counted once (124,439,808 for GPT-2 small)."""
        return sum(p.numel() for p in self.parameters())

    def state_dict_untied(self) -> dict[str, torch.Tensor]:
        """Parameters to save: the tied head stored once (as wte), on CPU, contiguous (safetensors needs both)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k != "lm_head.weight"}

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load ``state`` (our parameter names, head excluded), checking every key and shape first.

        A missing, unexpected or wrong-shaped tensor is a one-line ``ValueError``
        naming it and ``source``; nothing is loaded partially. Weights stored in
        bfloat16 or float16 (a smaller download) become float32 parameters: the
        model trains and computes in float32, and the inference formats are made
        from float32 after loading (``inference.to_inference``).
        """
        expected = {k: tuple(v.shape) for k, v in self.state_dict().items() if k != "lm_head.weight"}
        for key, tensor in state.items():
            if key not in expected:
                raise ValueError(f"{source}: unexpected tensor {key!r}")
            if tuple(tensor.shape) != expected[key]:
                raise ValueError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {expected[key]}")
        missing = [k for k in expected if k not in state]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ValueError(f"{source}: missing tensor {missing[0]!r}{more}")
        state = {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in state.items()}
        # A model built on the meta device (no memory, no random init) takes the tensors
        # themselves: loading then needs no second copy of the weights.
        assign = self.transformer.wte.weight.is_meta
        self.load_state_dict({**state, "lm_head.weight": state["transformer.wte.weight"]}, assign=assign)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one Parameter under both names

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` rows of up to ``max_len`` tokens, in the embeddings' dtype
        (a bfloat16 model on CPU: float32, which its decoding attends in; see ``attention``)."""
        if max_len > self.config.block_size:
            raise ValueError(f"cache length {max_len} exceeds the context length {self.config.block_size}")
        w = self.transformer.wte.weight
        dtype = torch.float32 if w.dtype == torch.bfloat16 and w.device.type == "cpu" else w.dtype
        return KVCache(self.config, batch_size, max_len, device=w.device, dtype=dtype)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        adapter: torch.Tensor | None = None,
        last_only: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, V)`` for token ids ``idx`` ``(B, T)``. The one forward pass: training,
        generation and the serving engine all run it.

        cache: a ``KVCache`` to read from and append to (generation; its length advances by T),
            or a ``RaggedCache`` (``idx`` is ``(1, N)``: several rows' new tokens, one after the other).
        position_ids: ``(B, T)`` positions; default: the cache's next ones (``0..T-1`` without one).
            Left-padded rows pass their own so each row's text starts at position 0.
        attention_mask: ``(B, S)`` 1 for real tokens and 0 for padding, over the
            cached and new tokens (S = cache.length + T).
        adapter: ``(B, T)`` bool, which tokens get the LoRA adapters (``Adapted`` layers);
            None: all of them. A model without adapters ignores it.
        last_only: logits for the last position only, ``(B, 1, V)`` (a ragged batch: each row's
            last token, ``(1, R, V)``): the head is the largest matmul and generation needs only these.
        logits_at: ``(B, T)`` bool: logits at these positions only, ``(N, V)`` in
            row-major order (the loss scores response tokens, not prompts or padding).
        """
        B, T = idx.shape
        end = cache.end(T) if cache is not None else T
        if end > self.config.block_size:
            raise ValueError(f"sequence length {end} exceeds the context length {self.config.block_size}")
        if position_ids is None:
            position_ids = cache.positions(T, idx.device) if cache is not None else torch.arange(T, device=idx.device)

        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = self._attention_mask(attention_mask.bool(), end - T, T)  # (B, 1, T, S)
        if adapter is not None:
            adapter = adapter.view(B, T, 1)  # broadcast over each token's features

        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, i, cache, mask, adapter)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = cache.last(x) if cache is not None else x[:, -1:, :]
        elif logits_at is not None:
            x = x[logits_at]  # (N, C)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, V)

    @staticmethod
    def _attention_mask(key_valid: torch.Tensor, past: int, T: int) -> torch.Tensor:
        """Boolean SDPA mask ``(B, 1, T, S)``: causal, and no attention to padding keys.

        A padding query would otherwise attend to nothing (a row of -inf gives NaN),
        so every query may always attend to its own position; its output is
        never used.
        """
        S = key_valid.shape[1]
        q_pos = torch.arange(past, past + T, device=key_valid.device).unsqueeze(1)  # (T, 1)
        k_pos = torch.arange(S, device=key_valid.device).unsqueeze(0)  # (1, S)
        causal = k_pos <= q_pos  # (T, S)
        allowed = causal & (key_valid[:, None, :] | (k_pos == q_pos))  # (B, T, S)
        return allowed.unsqueeze(1)  # (B, 1, T, S)
