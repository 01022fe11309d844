"""Checks on model folders: safetensors only, readable JSON, regular files, and weights that match the model built
from the config in names, shapes, kinds and values.

transformers fills weights missing from a checkpoint with random values and drops unexpected ones with no more
than a log line, casts integer weights to floats, and loads pickled `pytorch_model.bin` files; genvl refuses all
of these, naming the file.
"""

import json
import re
import stat
from contextlib import contextmanager
from pathlib import Path

from .paths import kind_of, path_status

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # as safetensors headers name them

# Sizes a config sets that no weight bounds, checked before anything is built from it (weight-bound sizes such as
# positions, vocabularies and widths need no limit: a model is compared with its weights before it is built).
# Layer counts: the model is first built on the meta device layer by layer. A decoder draws latents of
# sample_size x sample_size (the largest published unCLIP decoder stage, Karlo's super-resolution UNet, draws at
# 256); an autoencoder's sample_size is only a tiling hint.
MODEL_LIMITS = {
    "n_layer": 1024,
    "num_hidden_layers": 1024,
    "num_layers": 1024,
    "layers_per_block": 1024,
    "sample_size": 4096,
}
UNET_SAMPLE_SIZE_LIMIT = 256
SCHEDULER_LIMITS = {"num_train_timesteps": 100_000}  # the length of the schedule's tables
# the side an image processor resizes or crops to: every image of a batch becomes that many floats squared (the
# largest public ViT and CLIP inputs are about 1,000)
PROCESSOR_LIMITS = dict.fromkeys(("size", "crop_size", "shortest_edge", "longest_edge", "height", "width"), 2048)
# attention implementations transformers has built in; any other name in a config is a kernel repository on the
# hub that transformers would download and import
ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_model_folder(path) -> Path:
    """Raise if `path` is not a folder, or if the files that loading reads (the folder's own, and those of the
    components model_index.json names) include pickles, JSON that does not parse, or anything but regular files
    (a FIFO would block the read forever). Component folders must be real folders inside `path`: a symlink could
    point anywhere. Other subfolders, such as a training run's accelerate checkpoints, are not looked at."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    check_files(path)
    folders = []
    if (path / "model_index.json").exists():
        index = read_json(path / "model_index.json")
        if not isinstance(index, dict):
            raise ValueError(f"{path / 'model_index.json'}: expected a JSON object")
        for name in index:
            folder = path / name
            if name.startswith("_") or not folder.exists() and not folder.is_symlink():
                continue
            if "/" in name or name in (".", "..") or folder.is_symlink() or not folder.is_dir():
                raise ValueError(
                    f"{folder}: model_index.json names it as a component, which must be a folder "
                    "inside the model folder (not a symlink or a file)"
                )
            folders.append(folder)
    for folder in folders:
        check_files(folder)
    return path


def check_files(folder: Path) -> None:
    """Refuse, in `folder` (not its subfolders), anything but regular files and folders, pickles, and JSON that
    does not parse."""
    for file in sorted(folder.iterdir()):
        mode = path_status(file).st_mode  # follows symlinks (the hub's cache links files to blobs), not loops
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise ValueError(f"{file}: is {kind_of(mode)}, not a regular file")
        if file.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"{file}: pickle files are refused; genvl loads safetensors weights only")
        if file.suffix == ".json":
            data = read_json(file)
            if file.name.endswith(".index.json"):
                check_shard_index(file, data)


def check_shard_index(file: Path, index) -> None:
    """A sharded checkpoint's index may only name regular files of its own folder: transformers would follow a
    name into a subfolder, past the checks above (onto a FIFO, say)."""
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{file}: expected a weight_map object")
    for name in sorted(set(map(str, weight_map.values()))):
        if Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{file}: names the weights file {name!r}, which is not a file of this folder")
        mode = path_status(file.parent / name).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{file.parent / name}: is {kind_of(mode)}, not a regular file")


def read_json(file: Path):
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None


def safetensors_headers(folder) -> dict[str, tuple[tuple, str]]:
    """{tensor name: (shape, dtype)} over every .safetensors file in `folder`, read from their headers only."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    headers = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_slice(key)
                    headers[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
        except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
    return headers


def check_config(file, config, limits: dict) -> None:
    """Refuse, anywhere in a config (sub-configs and nested size dicts included), a value of a key in `limits`
    that is not an integer in [1, limit], and an attention implementation transformers would fetch from the hub."""
    if isinstance(config, list):
        for item in config:
            check_config(file, item, limits)
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        if "attn_implementation" in key and value not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"{file}: {key} {value!r} is not one of transformers' own attention implementations")
        if key in limits and not isinstance(value, dict):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item is not None and (
                    isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= limits[key]
                ):
                    raise ValueError(f"{file}: {key} must be an integer in [1, {limits[key]}], got {item!r}")
        check_config(file, value, limits)


def model_limits(model_class) -> dict:
    return {**MODEL_LIMITS, "sample_size": UNET_SAMPLE_SIZE_LIMIT} if "UNet" in model_class.__name__ else MODEL_LIMITS


def check_processor_config(folder) -> None:
    """`check_config` of the image processor config in `folder`, if it has one."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (Path(folder) / name).is_file():
            check_config(Path(folder) / name, read_json(Path(folder) / name), PROCESSOR_LIMITS)


def check_size(folder, model, stored: dict) -> None:
    """Refuse a model, built on the meta device, that holds far more numbers than its weights could fill: the
    config describes something else, and building it for real could take any amount of memory. The margin (twice,
    plus a million) leaves room for what a checkpoint may rightly leave out: tied, renamed or pooling weights."""
    import math

    wanted = sum(p.numel() for p in {id(p): p for p in model.state_dict(keep_vars=True).values()}.values())
    held = sum(math.prod(shape) for shape, _ in stored.values())
    if wanted > 2 * held + 1_000_000:
        raise ValueError(f"{folder}: config.json describes {wanted:,} weights but the safetensors hold only {held:,}")


def check_weight_values(folder, model, stored: dict) -> None:
    """Refuse weights stored as integers or booleans where the model has floats (loading would cast them
    silently), and floating weights that hold NaN or infinities."""
    import torch

    for key, value in model.state_dict().items():
        if key in stored and value.is_floating_point() and stored[key][1] not in FLOAT_DTYPES:
            raise ValueError(f"{folder}: weight {key} is stored as {stored[key][1]}; the model needs floats")
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{folder}: weight {key} holds NaN or infinite values")


def _ignored_patterns(module, attribute: str) -> list[str]:
    patterns = []
    for sub in module.modules():
        patterns.extend(getattr(sub, attribute, None) or [])
    return patterns


def raise_for_weights(folder, missing, unexpected, mismatched) -> None:
    """One-line error for the first problem found: mismatched (key, stored shape, expected shape), missing or
    unexpected tensor names."""
    if mismatched:
        key, found, expected = mismatched[0]
        raise ValueError(
            f"{folder}: weight {key} has shape {list(found)} but config.json gives {list(expected)} "
            f"({len(mismatched)} such)"
        )
    if missing:
        raise ValueError(
            f"{folder}: the weights lack {missing[0]} ({len(missing)} missing), which config.json describes"
        )
    if unexpected:
        raise ValueError(
            f"{folder}: the weights hold {unexpected[0]} ({len(unexpected)} such), which config.json does not describe"
        )


def check_diffusers_weights(model_class, folder) -> dict:
    """Raise unless the safetensors in `folder` hold every tensor of the diffusers model its config.json
    describes, each with its shape, and nothing else; returns their headers. The model is built on the meta
    device: names and shapes only, no memory spent on values."""
    import torch

    stored = safetensors_headers(folder)
    try:
        config = model_class.load_config(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: could not read its config.json ({first_line(err)})") from None
    check_config(Path(folder) / "config.json", config, model_limits(model_class))
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{folder}: config.json does not describe a {model_class.__name__} ({first_line(err)})"
        ) from None
    check_size(folder, model, stored)
    state = model.state_dict(keep_vars=True)
    saved = {id(state[k]) for k in stored if k in state}  # a tied tensor may be stored under one of its names
    ignore_missing = _ignored_patterns(model, "_keys_to_ignore_on_load_missing")
    ignore_unexpected = _ignored_patterns(model, "_keys_to_ignore_on_load_unexpected")
    raise_for_weights(
        folder,
        missing=[
            k
            for k, v in state.items()
            if k not in stored and id(v) not in saved and not any(re.search(p, k) for p in ignore_missing)
        ],
        unexpected=[k for k in stored if k not in state and not any(re.search(p, k) for p in ignore_unexpected)],
        mismatched=[(k, stored[k][0], v.shape) for k, v in state.items() if k in stored and stored[k][0] != v.shape],
    )
    return stored


def load_diffusers_model(model_class, folder, dtype=None):
    """`model_class.from_pretrained(folder)` for a diffusers model, after `check_diffusers_weights`, and with its
    weights' kinds and values checked."""
    stored = check_diffusers_weights(model_class, folder)
    with loading_errors(folder):
        model = model_class.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
    check_weight_values(folder, model, stored)
    return model


def load_transformers_model(model_class, folder, dtype=None):
    """`model_class.from_pretrained(folder)`, refusing weights that are missing, unexpected, misshaped, of the
    wrong kind or not finite (transformers itself would fill, drop or cast them with a log line), and a config
    that describes a model larger than its weights before anything is allocated. Key renames of older layouts
    still apply."""
    import torch

    stored = safetensors_headers(folder)  # safetensors present and readable
    check_config(Path(folder) / "config.json", read_json(Path(folder) / "config.json"), model_limits(model_class))
    with loading_errors(folder):
        with torch.device("meta"):
            model = model_class(model_class.config_class.from_pretrained(folder))
    check_size(folder, model, stored)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with loading_errors(folder):
        model, info = model_class.from_pretrained(
            folder,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            use_safetensors=True,
            local_files_only=True,
            **kwargs,
        )
    raise_for_weights(
        folder, sorted(info["missing_keys"]), sorted(info["unexpected_keys"]), sorted(info["mismatched_keys"])
    )
    check_weight_values(folder, model, stored)
    return model


@contextmanager
def loading_errors(path):
    """Turn a loading library's error, often many lines long, into a one-line ValueError naming `path`."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: could not load the model ({first_line(err)})") from err


def first_line(err: Exception) -> str:
    """The first non-empty line of an error's message (libraries' messages can run to many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
