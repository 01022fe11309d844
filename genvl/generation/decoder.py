"""Cached forward passes of a VisionEncoderDecoder's decoder, for decoding.

`CachedDecoder` is the fast path, written for GPT-2 decoders (genvl's own and the public ViT-GPT2 checkpoints).

The weights stay in the transformers modules (so LoRA layers wrapped around them keep working); this file
only re-plans the computation:

- cross-attention keys/values are computed once per image, and every beam of that image attends to the
  same tensors (queries of the K beams are stacked as K query rows of one image);
- self-attention keys/values live in a preallocated cache, written in place each step;
- images whose rows have all finished can be dropped (`keep`), and beams reordered (`reorder`).

`ModelDecoder` is the fallback for every other decoder family (BERT- and RoBERTa-style, TrOCR, MBart as in Donut):
the decoder's own forward with transformers' cache, behind the same four methods. `decoder_for` picks one.
"""

import torch
import torch.nn.functional as F

from ..attention import attend, attention_backend


def _wrapped(module) -> bool:
    """Whether calling `module` does more than its class's forward: hooks (its own or global ones), or a forward
    replaced on the instance, as accelerate's offloading hooks do (their weights wait on the meta device)."""
    from torch.nn.modules import module as torch_module

    global_hooks = (
        getattr(torch_module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
    )
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or "forward" in vars(module)
        or hasattr(module, "_hf_hook")
        or any(global_hooks)
    )


def _direct(module):
    """A callable that equals `module` on 2-D input. A plain GPT-2 `Conv1D`, `nn.Linear`, `nn.LayerNorm` or
    `nn.Embedding` becomes its one kernel call, skipping the module call's overhead (which costs as much as the
    small matrix products of a decoding step); anything else, such as a LoRA-wrapped, hooked or offloaded layer,
    stays the module."""
    from transformers.pytorch_utils import Conv1D

    if _wrapped(module):
        return module
    if type(module) is Conv1D:
        weight, bias = module.weight, module.bias
        return lambda x: torch.addmm(bias, x, weight)
    if type(module) is torch.nn.Linear:
        return _linear(module.weight, module.bias)
    if type(module) is torch.nn.LayerNorm:
        return lambda x: F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
    if type(module) is torch.nn.Embedding and module.max_norm is None:
        return lambda ids: F.embedding(ids, module.weight)
    return module


# A weight this large is streamed from memory at every step. With few rows, MKL reads it about twice as fast when
# it is the tall operand of W @ x^T than when it is the wide operand of x @ W^T (measured here on GPT-2's
# 50257 x 768 output layer: 14 against 27 ms for 8 rows, 8 against 26 ms for 4); small weights stay on
# `F.linear`, which is faster for them.
_TALL_BYTES = 16 * 2**20
_TALL_ROWS = 32


def _linear(weight, bias, tall: bool | None = None):
    """`F.linear(x, weight, bias)` for 2-D `x`, as W @ x^T for large fp32 weights on the CPU and few rows
    (`tall` forces the choice for every row count up to `_TALL_ROWS`)."""
    if tall is None:
        tall = weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() * 4 >= _TALL_BYTES

    def linear(x):
        if not tall or x.shape[0] > _TALL_ROWS:
            return F.linear(x, weight, bias)
        out = torch.mm(weight, x.t()) if bias is None else torch.addmm(bias[:, None], weight, x.t())
        return out.t().contiguous()

    return linear


class _Block:
    """One GPT-2 block's layers as direct callables (see `_direct`)."""

    def __init__(self, block, tanh_gelu: bool):
        self.ln_1, self.ln_cross, self.ln_2 = map(_direct, (block.ln_1, block.ln_cross_attn, block.ln_2))
        self.c_attn, self.attn_proj = _direct(block.attn.c_attn), _direct(block.attn.c_proj)
        self.q_attn, self.cross_proj = _direct(block.crossattention.q_attn), _direct(block.crossattention.c_proj)
        self.cross_kv, self.split = block.crossattention.c_attn, block.crossattention.split_size
        c_fc, c_proj = _direct(block.mlp.c_fc), _direct(block.mlp.c_proj)
        # GPT-2's "gelu_new" is the tanh approximation; torch's fused kernel computes it in one op
        self.mlp = (lambda x: c_proj(F.gelu(c_fc(x), approximate="tanh"))) if tanh_gelu else block.mlp


class CachedDecoder:
    def __init__(self, model, encoder_states: torch.Tensor, max_length: int, rows_per_image: int = 1):
        """`encoder_states`: (B, N, C) encoder output; the decoder runs B * rows_per_image rows (image-major)
        of up to `max_length` tokens."""
        decoder = model.decoder
        transformer = decoder.transformer
        config = decoder.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scales = [
            (self.head_dim**-0.5 if config.scale_attn_weights else 1.0)
            / (float(i + 1) if config.scale_attn_by_inverse_layer_idx else 1.0)
            for i in range(config.n_layer)
        ]
        tanh_gelu = config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
        self.blocks = [_Block(block, tanh_gelu) for block in transformer.h]
        self.wte, self.wpe = _direct(transformer.wte), _direct(transformer.wpe)
        self.ln_f, self.lm_head = _direct(transformer.ln_f), _direct(decoder.lm_head)
        self.backend = attention_backend(model)  # the model's attention backend: sdpa, xformers or eager
        if max_length > config.n_positions:
            raise ValueError(
                f"decoding needs {max_length} positions but the decoder has only n_positions={config.n_positions}"
            )
        self.positions = torch.arange(max_length, device=encoder_states.device)
        images = encoder_states.shape[0]
        # (B, H, N, D) per layer, shared by all beams of an image
        self.cross = [self._cross_kv(block, encoder_states) for block in self.blocks]
        rows = images * rows_per_image
        # one tensor (layer, key/value, row, head, position, D), so that reordering rows is one copy
        shape = (config.n_layer, 2, rows, self.heads, max_length, self.head_dim)
        self.cache = torch.empty(shape, dtype=encoder_states.dtype, device=encoder_states.device)
        self.length = 0

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (R, T, C) -> (R, H, T, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _cross_kv(self, block, encoder_states):
        key, value = block.cross_kv(encoder_states).split(block.split, dim=2)
        return self._split_heads(key), self._split_heads(value)

    def _cross_attention(self, block, layer: int, hidden: torch.Tensor, rows: int, steps: int) -> torch.Tensor:
        key, value = self.cross[layer]  # (B, H, N, D)
        images = key.shape[0]
        # stack the beams' queries as query rows of their image: (B, H, beams * T, D)
        query = block.q_attn(hidden).view(images, rows // images * steps, self.heads, self.head_dim).transpose(1, 2)
        out = attend(query, key, value, self.backend, scale=self.scales[layer])
        return block.cross_proj(out.transpose(1, 2).reshape(rows * steps, -1))

    def _self_attention(self, block, layer: int, hidden: torch.Tensor, rows: int, steps: int, start: int):
        end = start + steps
        # (R * T, 3C) -> (3, R, H, T, D): query, key, value
        qkv = block.c_attn(hidden).view(rows, steps, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cache = self.cache[layer]
        cache[:, :, :, start:end] = qkv[1:]  # keys and values in one copy
        out = attend(
            qkv[0],
            cache[0, :, :, :end],
            cache[1, :, :, :end],
            self.backend,
            is_causal=steps > 1,
            scale=self.scales[layer],
        )
        # a multi-token step only happens at the start (prefill), where causal masking from 0 is exact
        return block.attn_proj(out.transpose(1, 2).reshape(rows * steps, -1))

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed (R, T) new tokens; return the next-token logits (R, V) in float32."""
        start = self.length
        rows, steps = input_ids.shape
        if steps > 1 and start > 0:
            raise ValueError("only the first step may feed several tokens")
        # the rows' T positions as one (R * T, C) matrix, so each linear layer is one matrix product
        hidden = (self.wte(input_ids) + self.wpe(self.positions[start : start + steps])).view(rows * steps, -1)
        for layer, block in enumerate(self.blocks):
            hidden = hidden + self._self_attention(block, layer, block.ln_1(hidden), rows, steps, start)
            hidden = hidden + self._cross_attention(block, layer, block.ln_cross(hidden), rows, steps)
            hidden = hidden + block.mlp(block.ln_2(hidden))
        self.length = start + steps
        hidden = self.ln_f(hidden.view(rows, steps, -1)[:, -1])
        return self.lm_head(hidden).float()

    def _gathered(self, rows: torch.Tensor) -> torch.Tensor:
        """A new cache whose row r holds the history of row `rows[r]`, with room for the whole preallocated length
        but only the positions written so far copied."""
        shape = list(self.cache.shape)
        shape[2] = len(rows)
        cache = self.cache.new_empty(shape)
        cache[:, :, :, :, : self.length] = self.cache[:, :, :, :, : self.length].index_select(2, rows)
        return cache

    def expand(self, copies: int):
        """Give every row `copies` identical rows (after a prefill of one row per image, for beam search)."""
        rows = torch.arange(self.cache.shape[2], device=self.cache.device).repeat_interleave(copies)
        self.cache = self._gathered(rows)

    def reorder(self, rows: torch.Tensor):
        """Row r of the cache takes the history of row `rows[r]` (beam reordering)."""
        history = self.cache[:, :, :, :, : self.length]
        history.copy_(history.index_select(2, rows))

    def keep(self, rows: torch.Tensor, images: torch.Tensor):
        """Drop finished rows: keep `rows` of the self-attention cache and `images` of the cross cache."""
        self.cache = self._gathered(rows)
        self.cross = [(k[images], v[images]) for k, v in self.cross]


# roberta-style decoders number their positions from just past the padding index
PADDING_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")


def decoder_positions(config) -> int | None:
    """How many tokens (the start token included) a decoder's config has positions for; None when it names no
    limit (sinusoidal positions)."""
    if getattr(config, "n_positions", None):
        return config.n_positions
    if not getattr(config, "max_position_embeddings", None):
        return None
    if getattr(config, "use_learned_position_embeddings", True) is False:  # TrOCR's sinusoidal option
        return None
    if config.model_type in PADDING_OFFSET_MODELS:
        return config.max_position_embeddings - (config.pad_token_id or 0) - 1
    return config.max_position_embeddings


def is_gpt2(model) -> bool:
    """Whether the VisionEncoderDecoder `model` has a GPT-2 decoder, which `CachedDecoder` runs."""
    return type(model.decoder).__name__ == "GPT2LMHeadModel"


def decoder_for(model, encoder_states: torch.Tensor, max_length: int):
    """`CachedDecoder` for a GPT-2 decoder, else `ModelDecoder`."""
    if is_gpt2(model):
        return CachedDecoder(model, encoder_states, max_length)
    return ModelDecoder(model, encoder_states, max_length)


class ModelDecoder:
    """Any decoder of a VisionEncoderDecoder, stepped by its own forward with transformers' cache (its
    `EncoderDecoderCache` holds the self-attention history and the cross-attention keys and values of every row).
    Rows are the decoder's batch: each holds its image's encoder states, so dropping and reordering rows is
    selecting them."""

    def __init__(self, model, encoder_states: torch.Tensor, max_length: int):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        positions = decoder_positions(model.decoder.config)
        if positions is not None and max_length > positions:
            raise ValueError(f"decoding needs {max_length} positions but the decoder has only {positions}")
        self.decoder = model.decoder
        self.states = encoder_states
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed (R, T) new tokens; return the next-token logits (R, V) in float32."""
        out = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=self.states,
            cache=self.cache,
            use_cache=True,
            return_dict=True,
        )
        self.cache = out.cache
        return out.logits[:, -1].float()

    def expand(self, copies: int):
        self.cache.batch_repeat_interleave(copies)
        self.states = self.states.repeat_interleave(copies, dim=0)

    def reorder(self, rows: torch.Tensor):
        self.cache.reorder_cache(rows)  # rows move within their image, whose encoder states they share

    def keep(self, rows: torch.Tensor, images: torch.Tensor):
        self.cache.batch_select_indices(rows)
        self.states = self.states[rows]


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run the vision encoder once: (B, 3, H, W) -> (B, N, C_decoder)."""
    states = model.encoder(pixel_values=pixel_values).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    return states
