"""Dynamic int8 quantization of linear layers, for CPU inference.

Every `nn.Linear` of a module (and every GPT-2 `Conv1D`, first turned into the `nn.Linear` it equals) is replaced
by torch's dynamically quantized linear layer: weights stored as int8 with one scale per tensor, activations
quantized per batch as they come, the matrix products run by the CPU's int8 kernels (fbgemm / x86). It pays where
the matrices are large (GPT-2's width and vocabulary) and costs where they are tiny. torch marks this eager-mode
API as superseded by torchao's; genvl uses torch's own so that quantizing needs no other package.
"""

import warnings

import torch

MODES = ("int8",)


def linear_of_conv1d(conv) -> torch.nn.Linear:
    """The `nn.Linear` that computes what a GPT-2 `Conv1D` does (its weight is stored transposed)."""
    inputs, outputs = conv.weight.shape
    linear = torch.nn.Linear(inputs, outputs, device=conv.weight.device, dtype=conv.weight.dtype)
    linear.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
    linear.bias = torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return linear


def quantize_linear_layers(module: torch.nn.Module, mode: str = "int8", parts=None) -> torch.nn.Module:
    """Quantize the linear layers of `module` (or of its submodules named in `parts`, e.g. CLIP's "text_model" and
    "text_projection") in place, as the module doc says, and return it. It must be on the CPU in float32 and
    carry no adapters: the quantized layers cannot be trained, moved or wrapped."""
    from transformers.pytorch_utils import Conv1D

    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; expected one of {list(MODES)}")
    parameter = next(module.parameters(), None)
    if parameter is not None and (parameter.device.type != "cpu" or parameter.dtype != torch.float32):
        raise ValueError(
            f"int8 quantization runs on the CPU in float32; the model is on {parameter.device} in {parameter.dtype}"
        )
    if any(type(sub).__module__.startswith("peft") for sub in module.modules()):
        raise ValueError("quantize a model without adapters: quantized layers cannot carry them")
    roots = [module] if parts is None else [module.get_submodule(name) for name in parts]
    for root in roots:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is Conv1D:
                    setattr(parent, name, linear_of_conv1d(child))
    spec = {torch.nn.Linear} if parts is None else dict.fromkeys(parts, torch.ao.quantization.default_dynamic_qconfig)
    with warnings.catch_warnings():  # torch's notice that torchao succeeds this API
        warnings.simplefilter("ignore")
        linear_only = {torch.nn.Linear: torch.ao.nn.quantized.dynamic.Linear}
        torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, mapping=linear_only, inplace=True)
    return module.eval()
