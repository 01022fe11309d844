"""Checks on model folders: readable JSON, regular files, weights that are tensors and nothing else, and weights
that match the model built from the config in names, shapes, kinds and values.

transformers fills weights missing from a checkpoint with random values and drops unexpected ones with no more
than a log line, and casts integer weights to floats; genvl refuses these, naming the file. Weights come from
safetensors files or, for folders published before safetensors (`pytorch_model.bin`,
`diffusion_pytorch_model.bin`, sharded or not), from pickles that genvl itself unpickles with
`torch.load(weights_only=True)`, which builds tensors and plain values only and refuses any other object: a pickle
that would run code is refused before anything in it runs. Every other pickle in a folder is refused outright.
"""

import json
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path

from .paths import kind_of, path_status

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# the pickled weights files transformers and diffusers wrote before safetensors, whole or sharded
PICKLED_WEIGHTS = re.compile(r"(pytorch_model|diffusion_pytorch_model)(-\d{5}-of-\d{5})?\.bin")
# safetensors' names of the dtypes, for weights read from a pickle
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
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


def no_model_folder(path, name=None) -> OSError:
    """The error for `path` (named `name` in it), which is not a model folder: missing, or something else."""
    name = name or path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return FileNotFoundError(f"{name}: no such model folder")
    what = "a file" if stat.S_ISREG(mode) else kind_of(mode)
    return NotADirectoryError(f"{name}: is {what}, not a model folder")


def check_model_folder(path) -> Path:
    """Raise if `path` is not a folder, or if the files that loading reads (the folder's own, and those of the
    components model_index.json names) include pickles, JSON that does not parse, or anything but regular files
    (a FIFO would block the read forever). Component folders must be real folders inside `path`: a symlink could
    point anywhere. Other subfolders, such as a training run's accelerate checkpoints, are not looked at."""
    path = Path(path)
    if not path.is_dir():
        raise no_model_folder(path)
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
        if file.suffix in PICKLE_SUFFIXES and not PICKLED_WEIGHTS.fullmatch(file.name):
            raise ValueError(
                f"{file}: pickle files are refused; genvl loads safetensors weights, or pytorch_model.bin "
                "weights that hold tensors only"
            )
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


def stored_weights(folder) -> tuple[dict[str, tuple[tuple, str]], dict | None]:
    """The weights of a model folder: ({tensor name: (shape, dtype)}, None) from the headers of its safetensors
    files, or, in a folder with pickled weights only, (the same, the tensors) read by `read_pickled_weights`."""
    folder = Path(folder)
    pickles = sorted(f for f in folder.iterdir() if PICKLED_WEIGHTS.fullmatch(f.name))
    if not pickles or any(folder.glob("*.safetensors")):
        return safetensors_headers(folder), None
    state = read_pickled_weights(pickles)
    headers = {}
    for key, value in state.items():
        name = str(value.dtype).removeprefix("torch.")
        headers[key] = (tuple(value.shape), SAFETENSORS_DTYPES.get(name, name))
    return headers, state


def read_pickled_weights(files) -> dict:
    """The tensors of pickled weights files, unpickled by `torch.load(weights_only=True)`: tensors and plain
    values only, so that a pickle which would build any other object (and so could run code) is refused before it
    does. Zip-format files are memory-mapped rather than read into memory."""
    import pickle
    import warnings
    import zipfile

    import torch

    state = {}
    for file in files:
        try:
            with warnings.catch_warnings():  # torch warns of the format of older files it reads all the same
                warnings.simplefilter("ignore")
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except pickle.UnpicklingError as err:
            # torch's message names what the pickle would build on a line of its own
            why = next((line.strip() for line in str(err).splitlines() if "nsupported" in line), "not tensors")
            raise ValueError(
                f"{file}: pickle files are refused unless they hold tensors only, and this one holds more ({why})"
            ) from None
        except (RuntimeError, EOFError, ValueError, OSError) as err:
            raise ValueError(f"{file}: not a readable weights file ({first_line(err)})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: holds a {type(loaded).__name__}, not a dict of weights")
        for key, value in loaded.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise ValueError(f"{file}: holds {key!r}, which is not a named tensor")
            if key in state:
                raise ValueError(f"{file}: holds {key}, which another weights file of the folder holds too")
            state[key] = value
    return state


def safetensors_headers(folder) -> dict[str, tuple[tuple, str]]:
    """{tensor name: (shape, dtype)} over every .safetensors file in `folder`, read from their headers only."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (.safetensors files, or pytorch_model.bin)")
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
    """`check_config` of the image processor config in `folder`, if it has one, and its normalisation: an
    `image_std` of 0 or a mean, std or `rescale_factor` that is not a finite number made every caption's score
    NaN."""
    import math

    for name in ("preprocessor_config.json", "processor_config.json"):
        if (Path(folder) / name).is_file():
            config = read_json(Path(folder) / name)
            check_config(Path(folder) / name, config, PROCESSOR_LIMITS)
            if not isinstance(config, dict):
                continue
            for key in ("image_mean", "image_std", "rescale_factor"):
                value = config.get(key)
                values = value if isinstance(value, list) else [value]
                if value is None or not values:
                    continue
                if not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
                ):
                    raise ValueError(f"{Path(folder) / name}: {key} must be finite numbers, got {value!r}")
                if key != "image_mean" and not all(v > 0 for v in values):
                    raise ValueError(f"{Path(folder) / name}: {key} must be above 0, got {value!r}")


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


def check_diffusers_weights(model_class, folder, stored: dict | None = None) -> dict:
    """Raise unless the weights in `folder` (`stored`: their names, shapes and dtypes, by default read from the
    safetensors headers) hold every tensor of the diffusers model its config.json describes, each with its shape,
    and nothing else; returns `stored`. The model is built on the meta device: names and shapes only, no memory
    spent on values."""
    import torch

    stored = safetensors_headers(folder) if stored is None else stored
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
    weights' kinds and values checked. Pickled weights (`stored_weights`) are loaded into the model built from
    its config."""
    stored, tensors = stored_weights(folder)
    check_diffusers_weights(model_class, folder, stored)
    with loading_errors(folder):
        if tensors is None:
            model = model_class.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
        else:
            model = model_class.from_config(model_class.load_config(folder))
            model.load_state_dict(tensors, strict=False)  # complete but for tied names: checked above
            model = model.to(dtype).eval() if dtype is not None else model.eval()
    check_weight_values(folder, model, stored)
    return model


def load_transformers_model(model_class, folder, dtype=None):
    """`model_class.from_pretrained(folder)`, refusing weights that are missing, unexpected, misshaped, of the
    wrong kind or not finite (transformers itself would fill, drop or cast them with a log line), and a config
    that describes a model larger than its weights before anything is allocated. Key renames of older layouts
    still apply. Pickled weights (`stored_weights`) are handed to transformers as a state dict."""
    import torch
    from transformers import GenerationConfig

    stored, tensors = stored_weights(folder)
    check_config(Path(folder) / "config.json", read_json(Path(folder) / "config.json"), model_limits(model_class))
    with loading_errors(folder):
        with torch.device("meta"):
            model = model_class(model_class.config_class.from_pretrained(folder))
    check_size(folder, model, stored)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if tensors is None:
        kwargs.update(use_safetensors=True, local_files_only=True)
    else:  # transformers takes a state dict only in place of a folder
        kwargs.update(config=model.config, state_dict=tensors)
    with loading_errors(folder):
        model, info = model_class.from_pretrained(
            folder if tensors is None else None, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        if tensors is not None and model.can_generate() and (Path(folder) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
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


def is_panic(err: BaseException) -> bool:
    """Whether `err` is a panic of a Rust library (tokenizers, safetensors), which PyO3 raises as a BaseException,
    out of reach of `except Exception` (a hostile tokenizer regex that exhausts the regex engine's retries)."""
    return type(err).__name__ == "PanicException"


def native_failure(err: BaseException) -> str:
    """One line on a Rust library's panic."""
    return f"a native library failed (a tokenizer or weights file it read?): {first_line(err)}"


def first_line(err: Exception) -> str:
    """The first non-empty line of an error's message (libraries' messages can run to many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
