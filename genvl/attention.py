"""Attention backends for every genvl model: "sdpa" (PyTorch's scaled_dot_product_attention, the default),
"xformers" (its memory-efficient kernel, when xformers is installed) and "eager" (the plain matmul-softmax path).

transformers models (ViT, GPT-2, CLIP) switch through their attention-function registry, where genvl registers
an xformers function; diffusers models (prior, UNet, autoencoder) through their attention processors. Also
gradient checkpointing for both kinds.
"""

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers", "eager")
XFORMERS = "genvl_xformers"  # the name of genvl's xformers attention function in transformers' registry


def require_xformers():
    try:
        import xformers.ops
    except ImportError:
        raise ImportError("the xformers attention backend needs xformers: pip install 'genvl[xformers]'") from None
    return xformers.ops


def xformers_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function on xformers' memory-efficient kernel. Takes (B, H, T, D) tensors and
    the boolean mask transformers builds for SDPA (True: attend); returns (B, T, H, D)."""
    ops = require_xformers()
    bias = None
    if attention_mask is not None:
        mask = attention_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
        else:  # already additive
            bias = mask.to(query.dtype)
    elif kwargs.get("is_causal", getattr(module, "is_causal", False)) and query.shape[2] > 1:
        bias = ops.LowerTriangularMask()
    out = ops.memory_efficient_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_bias=bias,
        p=dropout if module.training else 0.0,
        scale=scaling,
    )
    return out, None


def attend(query, key, value, backend: str = "sdpa", is_causal: bool = False, scale: float | None = None):
    """Attention of (B, H, T, D) queries over (B, H, S, D) keys/values with `backend`; `is_causal` masks as
    a causal self-attention from position 0 (T == S)."""
    if backend == "eager":
        weights = (query @ key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scale is None else scale)
        if is_causal:
            future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).triu(1)
            weights = weights.masked_fill(future, float("-inf"))
        return weights.softmax(dim=-1) @ value
    if backend == "xformers":
        ops = require_xformers()
        out = ops.memory_efficient_attention(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_bias=ops.LowerTriangularMask() if is_causal else None,
            scale=scale,
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)


def _register_xformers():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(XFORMERS, xformers_attention)
    AttentionMaskInterface.register(XFORMERS, sdpa_mask)


def models_in(module: torch.nn.Module) -> list:
    """The outermost transformers or diffusers models in `module` (itself, if it is one)."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    found, seen = [], set()
    for name, child in module.named_modules():
        if any(name.startswith(prefix) for prefix in seen):
            continue
        if isinstance(child, (ModelMixin, PreTrainedModel)):
            found.append(child)
            seen.add(f"{name}." if name else "")
    return found


def set_attention_backend(module: torch.nn.Module, backend: str) -> None:
    """Switch every transformers / diffusers model in `module` to `backend` ("sdpa", "xformers" or "eager")."""
    from diffusers import ModelMixin
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {list(BACKENDS)}")
    if backend == "xformers":
        require_xformers()
        _register_xformers()
    for model in models_in(module):
        if isinstance(model, ModelMixin):
            if not getattr(model, "attn_processors", None):  # no attention layers (e.g. the conditioner)
                continue
            if backend == "xformers":
                model.enable_xformers_memory_efficient_attention()
            else:
                model.set_attn_processor(AttnProcessor2_0() if backend == "sdpa" else AttnProcessor())
        else:
            model.set_attn_implementation(XFORMERS if backend == "xformers" else backend)


def attention_backend(module: torch.nn.Module) -> str:
    """The backend of the first transformers model in `module` ("sdpa" when there is none)."""
    for model in [module] if hasattr(module, "config") else models_in(module):
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if implementation is not None:
            return "xformers" if implementation == XFORMERS else implementation
    return "sdpa"


def enable_gradient_checkpointing(module: torch.nn.Module) -> int:
    """Recompute activations in the backward pass, in every transformers / diffusers model in `module` that
    supports it; returns how many do."""
    from diffusers import ModelMixin

    enabled = 0
    for model in models_in(module):
        if isinstance(model, ModelMixin) and model._supports_gradient_checkpointing:
            model.enable_gradient_checkpointing()
        elif not isinstance(model, ModelMixin) and model.supports_gradient_checkpointing:
            # transformers 5 renamed it; the old name still works
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        else:
            continue
        enabled += 1
    return enabled


class AttentionBackendMixin:
    """`set_attention_backend` and the diffusers-style xformers switches for pipelines: every model component
    (transformers or diffusers) follows."""

    def set_attention_backend(self, backend: str):
        """ "sdpa" (default), "xformers" (needs xformers installed) or "eager"."""
        for component in self.components.values():
            if isinstance(component, torch.nn.Module):
                set_attention_backend(component, backend)
        return self

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        return self.set_attention_backend("xformers")

    def disable_xformers_memory_efficient_attention(self):
        return self.set_attention_backend("sdpa")
