"""A cached forward pass of a VisionEncoderDecoder's GPT-2 decoder, written for decoding.

The weights stay in the transformers modules (so LoRA layers wrapped around them keep working); this file
only re-plans the computation:

- cross-attention keys/values are computed once per image, and every beam of that image attends to the
  same tensors (queries of the K beams are stacked as K query rows of one image);
- self-attention keys/values live in a preallocated cache, written in place each step;
- images whose rows have all finished can be dropped (`keep`), and beams reordered (`reorder`).
"""

import torch
import torch.nn.functional as F

from ..attention import attend, attention_backend


class CachedDecoder:
    def __init__(self, model, encoder_states: torch.Tensor, max_length: int, rows_per_image: int = 1):
        """`encoder_states`: (B, N, C) encoder output; the decoder runs B * rows_per_image rows (image-major)
        of up to `max_length` tokens."""
        decoder = model.decoder
        self.transformer = decoder.transformer
        self.lm_head = decoder.lm_head
        config = decoder.config
        self.heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scales = [
            (self.head_dim**-0.5 if config.scale_attn_weights else 1.0)
            / (float(i + 1) if config.scale_attn_by_inverse_layer_idx else 1.0)
            for i in range(config.n_layer)
        ]
        # GPT-2's "gelu_new" is the tanh approximation; torch's fused kernel computes it in one op
        self.tanh_gelu = config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
        self.backend = attention_backend(model)  # the model's attention backend: sdpa, xformers or eager
        if max_length > config.n_positions:
            raise ValueError(
                f"decoding needs {max_length} positions but the decoder has only n_positions={config.n_positions}"
            )
        images = encoder_states.shape[0]
        # (B, H, N, D) per layer, shared by all beams of an image
        self.cross = [self._cross_kv(block, encoder_states) for block in self.transformer.h]
        rows = images * rows_per_image
        # one tensor (layer, key/value, row, head, position, D), so that reordering rows is one copy
        shape = (config.n_layer, 2, rows, self.heads, max_length, self.head_dim)
        self.cache = torch.empty(shape, dtype=encoder_states.dtype, device=encoder_states.device)
        self.length = 0

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (R, T, C) -> (R, H, T, D)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _cross_kv(self, block, encoder_states):
        key, value = block.crossattention.c_attn(encoder_states).split(block.crossattention.split_size, dim=2)
        return self._split_heads(key), self._split_heads(value)

    def _cross_attention(self, block, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        rows, steps, channels = hidden.shape
        query = block.crossattention.q_attn(hidden)  # (R, T, C)
        key, value = self.cross[layer]  # (B, H, N, D)
        images = key.shape[0]
        # stack the beams' queries as query rows of their image: (B, H, beams * T, D)
        query = query.view(images, rows // images * steps, self.heads, self.head_dim).transpose(1, 2)
        out = attend(query, key, value, self.backend, scale=self.scales[layer])
        out = out.transpose(1, 2).reshape(rows, steps, channels)
        return block.crossattention.c_proj(out)

    def _self_attention(self, block, layer: int, hidden: torch.Tensor, start: int) -> torch.Tensor:
        rows, steps, channels = hidden.shape
        query, key, value = block.attn.c_attn(hidden).split(block.attn.split_size, dim=2)
        end = start + steps
        keys, values = self.cache[layer]
        keys[:, :, start:end] = self._split_heads(key)
        values[:, :, start:end] = self._split_heads(value)
        query = self._split_heads(query)
        out = attend(query, keys[:, :, :end], values[:, :, :end], self.backend,
                     is_causal=steps > 1, scale=self.scales[layer])
        # a multi-token step only happens at the start (prefill), where causal masking from 0 is exact
        out = out.transpose(1, 2).reshape(rows, steps, channels)
        return block.attn.c_proj(out)

    def _mlp(self, mlp, hidden: torch.Tensor) -> torch.Tensor:
        if not self.tanh_gelu:
            return mlp(hidden)
        return mlp.c_proj(F.gelu(mlp.c_fc(hidden), approximate="tanh"))

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed (R, T) new tokens; return the next-token logits (R, V) in float32."""
        start = self.length
        if input_ids.shape[1] > 1 and start > 0:
            raise ValueError("only the first step may feed several tokens")
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        hidden = self.transformer.wte(input_ids) + self.transformer.wpe(positions)
        for layer, block in enumerate(self.transformer.h):
            hidden = hidden + self._self_attention(block, layer, block.ln_1(hidden), start)
            hidden = hidden + self._cross_attention(block, layer, block.ln_cross_attn(hidden))
            hidden = hidden + self._mlp(block.mlp, block.ln_2(hidden))
        self.length = start + input_ids.shape[1]
        hidden = self.transformer.ln_f(hidden[:, -1])
        return self.lm_head(hidden).float()

    def expand(self, copies: int):
        """Give every row `copies` identical rows (after a prefill of one row per image, for beam search)."""
        self.cache = self.cache.repeat_interleave(copies, dim=2)

    def reorder(self, rows: torch.Tensor):
        """Row r of the cache takes the history of row `rows[r]` (beam reordering)."""
        history = self.cache[:, :, :, :, : self.length]
        history.copy_(history.index_select(2, rows))

    def keep(self, rows: torch.Tensor, images: torch.Tensor):
        """Drop finished rows: keep `rows` of the self-attention cache and `images` of the cross cache."""
        self.cache = self.cache[:, :, rows]
        self.cross = [(k[images], v[images]) for k, v in self.cross]


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run the vision encoder once: (B, 3, H, W) -> (B, N, C_decoder)."""
    states = model.encoder(pixel_values=pixel_values).last_hidden_state
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)
    return states
