"""PEFT adapters (LoRA, and IA³) on genvl's networks: default target modules, and adding, saving, loading,
weighting, fusing and removing adapters on any of the models in place.

Adapters are kept in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`, keys under
`base_model.model.`), so a folder written here loads with `peft.PeftModel.from_pretrained` and the other way
round. The models stay the transformers / diffusers modules they were: PEFT wraps the targeted layers, and
everything that calls those layers (genvl's decoding engine included) sees the adapters.
"""

from __future__ import annotations  # torch.nn.Module in signatures: the CLI checks --lora without importing torch

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
ADAPTER_PARAMETERS = ("lora_", "ia3_l")  # how PEFT names the weights of LoRA and IA³ layers

# attention projections of each network; GPT-2's `c_attn` is a Conv1D (weights stored transposed), which PEFT
# handles with fan_in_fan_out=True
LORA_TARGETS = {
    # ViT self-attention (`query`/`value` before transformers 5); GPT-2 self- and cross-attention
    "captioner": ["q_proj", "v_proj", "c_attn"],
    "clip": ["q_proj", "v_proj"],
    "prior": ["to_q", "to_k", "to_v", "to_out.0"],
    "decoder": ["to_q", "to_k", "to_v", "to_out.0"],
}

# IA³ rescales keys, values and the feed-forward layers' inputs: (target modules, the feed-forward ones)
IA3_TARGETS = {
    "captioner": (["k_proj", "v_proj", "fc2", "c_attn", "mlp.c_proj"], ["fc2", "mlp.c_proj"]),
    "clip": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "prior": (["to_k", "to_v", "ff.net.2"], ["ff.net.2"]),
    "decoder": (["to_k", "to_v", "ff.net.2"], ["ff.net.2"]),
}
ADAPTER_METHODS = ("lora", "ia3")
# an adapter's weight (its scale) is refused beyond this: past a few times its trained scale an adapter only
# breaks the model (inf, nan and -1e30 made empty captions and black images)
MAX_ADAPTER_WEIGHT = 10.0
# the most an adapter's own config may scale it (lora_alpha / r); trained adapters use 1 to a few
MAX_CONFIG_SCALE = 64.0


def check_adapter_weight(weight, name: str = "adapter weight") -> float:
    """`weight` as a float if it is a finite number in [-MAX_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT]."""
    import math

    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or abs(weight) > MAX_ADAPTER_WEIGHT
    ):
        raise ValueError(
            f"{name} must be a number in [-{MAX_ADAPTER_WEIGHT:g}, {MAX_ADAPTER_WEIGHT:g}], got {weight!r}"
        )
    return float(weight)


def lora_config(
    network: str, rank: int = 8, lora_alpha: float | None = None, target_modules=None, dropout: float = 0.0
):
    """A `peft.LoraConfig` with `network`'s default target modules (see `LORA_TARGETS`); alpha defaults to rank."""
    from peft import LoraConfig

    if network not in LORA_TARGETS:
        raise ValueError(f"unknown network {network!r}; expected one of {sorted(LORA_TARGETS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=lora_alpha or rank,
        target_modules=target_modules or LORA_TARGETS[network],
        lora_dropout=dropout,
        fan_in_fan_out=network == "captioner",
    )


def ia3_config(network: str, extra_targets=()):
    """A `peft.IA3Config` with `network`'s default target and feed-forward modules (see `IA3_TARGETS`), and
    `extra_targets` (module names, rescaled like keys and values)."""
    from peft import IA3Config

    if network not in IA3_TARGETS:
        raise ValueError(f"unknown network {network!r}; expected one of {sorted(IA3_TARGETS)}")
    targets, feedforward = IA3_TARGETS[network]
    return IA3Config(
        target_modules=[*targets, *extra_targets],
        feedforward_modules=feedforward,
        fan_in_fan_out=network == "captioner",
    )


def convolutional_encoder_targets(model: torch.nn.Module, network: str) -> list[str]:
    """The full names of a captioner's encoder convolutions when its encoder has none of the default targets (genvl's
    grid encoder, a judge's convolutional body, has no attention projections): without them an adapter on such a
    captioner would reach its decoder only. Dilated convolutions are left out: PEFT's LoRA layer for a convolution
    does not carry its dilation, so its output would not fit the layer's. Empty for every other model."""
    import torch

    encoder = getattr(model, "encoder", None)
    if network != "captioner" or encoder is None:
        return []
    names = {*LORA_TARGETS[network], *IA3_TARGETS[network][0]}
    if any(name.rsplit(".", 1)[-1] in names for name, _ in encoder.named_modules()):
        return []
    return [
        f"encoder.{name}"
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Conv2d) and module.dilation == (1, 1)
    ]


def adapter_config(
    method: str,
    network: str,
    rank: int | None = None,
    lora_alpha: float | None = None,
    target_modules=None,
    model: torch.nn.Module | None = None,
):
    """The config of a fresh `method` ("lora" or "ia3") adapter for `network`; given the `model`, the default
    targets also take in a convolutional encoder's layers (`convolutional_encoder_targets`)."""
    extra = convolutional_encoder_targets(model, network) if model is not None and not target_modules else []
    if method == "lora":
        targets = target_modules or ([*LORA_TARGETS[network], *extra] if extra else None)
        return lora_config(network, rank or 8, lora_alpha, targets)
    if method == "ia3":
        return ia3_config(network, extra)
    raise ValueError(f"unknown adapter method {method!r}; expected one of {list(ADAPTER_METHODS)}")


def add_adapter(model: torch.nn.Module, config, adapter_name: str = "default") -> torch.nn.Module:
    """Wrap `model`'s target layers with a fresh adapter, in place; only adapter weights stay trainable."""
    from peft import inject_adapter_in_model

    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}")
    before = dict(getattr(model, "peft_config", {}))
    with warnings.catch_warnings():
        # one config covers ViT Linear and GPT-2 Conv1D layers: PEFT picks fan_in_fan_out per layer and says so
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to")
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name)
    model.peft_config = {**before, **model.peft_config}  # PEFT keeps only the newest adapter's config
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_adapter_weight(name, adapter_name))
    return model


def is_adapter_weight(name: str, adapter_name: str) -> bool:
    named = name.endswith(f".{adapter_name}") or f".{adapter_name}." in name
    return named and any(marker in name for marker in ADAPTER_PARAMETERS)


def adapter_layers(model: torch.nn.Module):
    """The layers PEFT wrapped (LoRA or IA³)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def adapter_names_of(model: torch.nn.Module) -> list[str]:
    return list(getattr(model, "peft_config", {}))


def save_adapter(model: torch.nn.Module, save_directory, adapter_name: str = "default") -> Path:
    """Write one adapter in PEFT's format."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .io.outputs import weights_readable_as_umask

    if adapter_name not in adapter_names_of(model):
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {adapter_names_of(model)}")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    state = {PEFT_PREFIX + key: value.detach().contiguous().cpu() for key, value in state.items()}
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    model.peft_config[adapter_name].save_pretrained(out)
    with weights_readable_as_umask(out):
        save_file(state, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return out


def load_adapter(model: torch.nn.Module, path, adapter_name: str = "default") -> torch.nn.Module:
    """Add the PEFT adapter saved in folder `path` to `model` under `adapter_name`, in place."""
    import torch
    from peft import PeftConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    from .io.folders import check_model_folder, loading_errors, safetensors_headers

    path = check_model_folder(path)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    safetensors_headers(path)  # readable, before anything is read from it
    check_adapter_config(path / ADAPTER_CONFIG)  # before PEFT reads it
    with loading_errors(path):
        config = PeftConfig.from_pretrained(path)
        state = {key.removeprefix(PEFT_PREFIX): value for key, value in load_file(path / ADAPTER_WEIGHTS).items()}
    config.inference_mode = True
    for key, value in state.items():
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path / ADAPTER_WEIGHTS}: weight {key} is not finite floating-point numbers")
    check_lora_config(path / ADAPTER_CONFIG, config, state)
    try:
        add_adapter(model, config, adapter_name)
    except ValueError as err:  # PEFT says which target modules it could not find
        raise ValueError(f"{path}: the adapter does not fit this model: {err}") from None
    try:
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as err:  # e.g. a rank that is not the weights' own
        delete_adapter(model, adapter_name)
        raise ValueError(
            f"{path}: the adapter's weights do not fit its config or this model ({' '.join(str(err).split())[:200]})"
        ) from None
    unexpected = [key for key in result.unexpected_keys if any(m in key for m in ADAPTER_PARAMETERS)]
    missing = [key for key in result.missing_keys if is_adapter_weight(key, adapter_name)]
    if unexpected or missing:
        delete_adapter(model, adapter_name)
        raise ValueError(
            f"{path}: the adapter does not fit this model ({len(missing)} adapter weights missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[0]})"
        )
    model.requires_grad_(False)
    return model


# what an adapter_config.json may set freely, per adapter type; any other setting must be PEFT's default. The others
# change what loading does: start processes or compile (BOFT), import a module (megatron_core), decompose or rewrite
# the base weights (init_lora_weights "pissa", "olora", "loftq", ...), copy or grow the model (modules_to_save,
# layer_replication), train biases of the base model (bias), or add parameters of other kinds (DoRA, tokens)
FREE_SETTINGS = {
    "LORA": {"r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", "use_rslora"},
    "IA3": {"feedforward_modules", "init_ia3_weights"},
}
FREE_SETTINGS_OF_ALL = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path"}
FREE_SETTINGS_OF_ALL |= {"revision", "inference_mode", "target_modules", "exclude_modules", "fan_in_fan_out"}
FREE_SETTINGS_OF_ALL |= {"layers_to_transform", "layers_pattern"}
LORA_INITS = ("gaussian",)  # besides true and false: initialisations that leave the base weights as they are


def check_adapter_config(file: Path) -> None:
    """Refuse, in one line naming `file`, an adapter config genvl does not load: an adapter type other than LoRA
    or IA³, or a setting outside `FREE_SETTINGS` that is not PEFT's default (see there), or, for one this PEFT
    does not know, not off (null, false, empty)."""
    import dataclasses
    import json

    from peft import IA3Config, LoraConfig

    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{file}: not a readable adapter config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: not a readable adapter config (a JSON object expected)")
    kind = config.get("peft_type")
    if kind not in FREE_SETTINGS:
        raise ValueError(f"{file}: peft_type {kind!r} is not an adapter genvl loads (LORA or IA3)")
    fields = {field.name: field for field in dataclasses.fields({"LORA": LoraConfig, "IA3": IA3Config}[kind])}
    for key, value in config.items():
        if key in FREE_SETTINGS[kind] or key in FREE_SETTINGS_OF_ALL:
            continue
        if key == "init_lora_weights" and kind == "LORA" and (isinstance(value, bool) or value in LORA_INITS):
            continue
        if key in fields and value == _default_setting(fields[key]):
            continue
        if key not in fields and (value is None or value is False or value in ({}, [])):
            continue  # a later PEFT's setting, off
        raise ValueError(f"{file}: {key} {json.dumps(value)[:80]} is not a setting genvl loads for a {kind} adapter")


def _default_setting(field):
    """A PEFT config field's default, as its JSON holds it (a dataclass as its dict)."""
    import dataclasses

    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def check_lora_config(file: Path, config, state: dict) -> None:
    """Refuse a LoRA config whose ranks its weights do not bound (PEFT allocates each layer at the config's rank
    before the weights are compared) or whose own scale, alpha / rank, is not finite or beyond
    MAX_CONFIG_SCALE (a huge alpha made every output infinite)."""
    import math

    if not hasattr(config, "lora_alpha"):
        return
    stored = max((value.shape[0] for key, value in state.items() if "lora_A" in key and value.ndim >= 1), default=0)
    ranks = [config.r, *(getattr(config, "rank_pattern", None) or {}).values()]
    alphas = [config.lora_alpha, *(getattr(config, "alpha_pattern", None) or {}).values()]
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= max(stored, 1):
            raise ValueError(f"{file}: rank {rank!r} must be an integer in [1, {stored}], the rank of the weights")
    for alpha in alphas:
        if (
            not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
            or abs(alpha) > MAX_CONFIG_SCALE * min(ranks)
        ):
            raise ValueError(
                f"{file}: lora_alpha {alpha!r} must be finite and at most {MAX_CONFIG_SCALE:g} times the rank"
            )


def set_adapters(model: torch.nn.Module, names: list[str], weights: list[float], trainable: bool = False) -> None:
    """Make `names` the active adapters, each scaled by its weight (1.0: as trained). LoRA scales freely; an
    IA³ adapter is either on (1.0) or off (0.0)."""
    unknown = sorted(set(names) - set(adapter_names_of(model)))
    if unknown:
        raise ValueError(f"no adapter named {unknown[0]!r}; the model has {adapter_names_of(model)}")
    if len(weights) != len(names):
        raise ValueError(f"got {len(weights)} weights for {len(names)} adapters")
    for layer in adapter_layers(model):
        scalable = hasattr(layer, "set_scale")
        bad = [(n, w) for n, w in zip(names, weights) if not scalable and w not in (0.0, 1.0)]
        if bad:
            raise ValueError(
                f"adapter {bad[0][0]!r} is {model.peft_config[bad[0][0]].peft_type.value}, which "
                f"cannot be weighted {bad[0][1]}: use 0 or 1"
            )
        layer.set_adapter([n for n, w in zip(names, weights) if scalable or w == 1.0], inference_mode=not trainable)
        for name, weight in zip(names, weights):
            if scalable and name in layer.lora_A:
                layer.set_scale(name, weight)


def fuse(model: torch.nn.Module) -> None:
    """Add the active adapters' weights (at their current scales) into the base layers."""
    for layer in adapter_layers(model):
        layer.merge()


def unfuse(model: torch.nn.Module) -> None:
    for layer in adapter_layers(model):
        if layer.merged:
            layer.unmerge()


def delete_adapter(model: torch.nn.Module, adapter_name: str) -> None:
    """Remove one adapter; the base layers come back when it was the last."""
    for layer in adapter_layers(model):
        if adapter_name in layer._all_available_adapter_names():
            layer.delete_adapter(adapter_name)
    model.peft_config.pop(adapter_name, None)
    if not model.peft_config:
        remove_adapters(model)


def remove_adapters(model: torch.nn.Module) -> None:
    """Put the base layers back in place of the adapter-wrapped ones (fused weights stay fused)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def adapter_share(adapter_file, model) -> dict:
    """{"count": the weights the adapter file holds, "fraction": their share of `model`'s}, read from the file's
    header."""
    import math

    from safetensors import safe_open

    with safe_open(str(adapter_file), "pt") as f:
        count = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return {"count": count, "fraction": round(count / sum(p.numel() for p in model.parameters()), 4)}


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale); the scale defaults to 1, and must pass `check_adapter_weight`."""
    path, sep, scale = spec.rpartition(":")
    if not sep or not scale or "/" in scale or not path:
        return spec, 1.0
    try:
        value = float(scale)
    except ValueError:
        return spec, 1.0
    return path, check_adapter_weight(value, f"the scale of {path}")


class LoraMixin:
    """`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora` and `unload_lora_weights` for pipelines.

    `lora_components` names the components adapters can go to, the default first. An adapter folder holds
    either one PEFT adapter (for the default component) or one subfolder per component, named after it.
    """

    lora_components: tuple = ()

    def _adapter_weights(self) -> dict:
        if "_lora_weights" not in self.__dict__:
            self.__dict__["_lora_weights"] = {}
        return self.__dict__["_lora_weights"]

    def _lora_models(self) -> dict:
        return {name: getattr(self, name) for name in self.lora_components if getattr(self, name, None) is not None}

    def _adapters_changed(self, models) -> None:
        cache = getattr(self, "embedding_cache", None)
        if cache is not None:
            for model in models:
                cache.forget(model)

    def load_lora_weights(self, path, adapter_name: str | None = None, weight: float = 1.0):
        """Load a PEFT adapter folder (see the class doc) and make it active beside the ones loaded before."""
        self._refuse_when_fused("loading another adapter")
        path = Path(path)
        weights = self._adapter_weights()
        name = adapter_name or f"default_{len(weights)}"
        weight = check_adapter_weight(weight, "weight")
        if name in weights:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        if (path / ADAPTER_CONFIG).is_file():
            parts = {self.lora_components[0]: path}
        else:
            parts = {c: path / c for c in self.lora_components if (path / c / ADAPTER_CONFIG).is_file()}
            if not parts:
                raise FileNotFoundError(
                    f"{path}: no {ADAPTER_CONFIG} in it or in a subfolder named after one of "
                    f"{list(self.lora_components)}"
                )
        models = self._lora_models()
        loaded = []
        try:
            for component, folder in parts.items():
                load_adapter(models[component], folder, name)
                loaded.append(component)
        except Exception:
            for component in loaded:  # nothing half-loaded stays behind
                delete_adapter(models[component], name)
            raise
        weights[name] = weight
        try:
            self.set_adapters(list(weights), list(weights.values()))
        except ValueError:
            del weights[name]
            for component in loaded:
                delete_adapter(models[component], name)
            raise
        return self

    def _fused(self) -> bool:
        """Whether adapters are folded into the weights (`fuse_lora`)."""
        return any(getattr(layer, "merged", False) for m in self._lora_models().values() for layer in adapter_layers(m))

    def _refuse_when_fused(self, what: str) -> None:
        # a fused adapter's scale is in the weights: rescaling or fusing again would unfuse the wrong amount and
        # leave the base weights changed after unload_lora_weights
        if self._fused():
            raise ValueError(f"the adapters are fused into the weights: call unfuse_lora() before {what}")

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Activate `adapter_names` (a name or a list), with `adapter_weights` (one float or one per name). Not
        while the adapters are fused (`unfuse_lora` first)."""
        self._refuse_when_fused("set_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = self._adapter_weights()
        unknown = sorted(set(names) - set(weights))
        if unknown:
            raise ValueError(f"no adapter named {unknown[0]!r}; loaded: {list(weights)}")
        if adapter_weights is None:
            adapter_weights = [weights[n] for n in names]
        elif not isinstance(adapter_weights, (list, tuple)):
            adapter_weights = [adapter_weights] * len(names)
        adapter_weights = [check_adapter_weight(w, "adapter_weights") for w in adapter_weights]
        for model in self._lora_models().values():
            present = [(n, w) for n, w in zip(names, adapter_weights) if n in adapter_names_of(model)]
            if present or adapter_names_of(model):
                set_adapters(model, [n for n, _ in present], [w for _, w in present])
        weights.update(zip(names, adapter_weights))
        self._adapters_changed(self._lora_models().values())
        return self

    def fuse_lora(self, lora_scale: float = 1.0):
        """Fold the active adapters, scaled by `lora_scale`, into the weights (faster inference); once, until
        `unfuse_lora`."""
        check_adapter_weight(lora_scale, "lora_scale")
        layers = [layer for model in self._lora_models().values() for layer in adapter_layers(model)]
        if lora_scale != 1.0 and not all(hasattr(layer, "scale_layer") for layer in layers):
            raise ValueError("only LoRA adapters can be fused at a lora_scale other than 1")
        self._refuse_when_fused("fusing them again")
        for layer in layers if lora_scale != 1.0 else []:
            layer.scale_layer(lora_scale)
        for model in self._lora_models().values():
            fuse(model)
        self._adapters_changed(self._lora_models().values())
        return self

    def unfuse_lora(self):
        for model in self._lora_models().values():
            unfuse(model)
            for layer in filter(lambda layer: hasattr(layer, "set_scale"), adapter_layers(model)):
                for name in layer.active_adapters:
                    layer.set_scale(name, self._adapter_weights().get(name, 1.0))
        self._adapters_changed(self._lora_models().values())
        return self

    def unload_lora_weights(self):
        """Remove every adapter, restoring the base weights (fused adapters are unfused first)."""
        for model in self._lora_models().values():
            unfuse(model)
            remove_adapters(model)
        self._adapter_weights().clear()
        self._adapters_changed(self._lora_models().values())
        return self

    def check_no_adapters(self):
        loaded = [c for c, m in self._lora_models().items() if adapter_names_of(m)]
        if loaded:
            raise ValueError(
                f"{', '.join(loaded)} carry LoRA adapters; call unload_lora_weights() before "
                "save_pretrained (save adapters with genvl.lora.save_adapter)"
            )
