"""Checks on model folders: safetensors only, readable JSON, and weights that match the model built from the config.

transformers fills weights missing from a checkpoint with random values and drops unexpected ones with no more
than a log line, and loads pickled `pytorch_model.bin` files; genvl refuses all three, naming the file.
"""

import json
import re
from contextlib import contextmanager
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_folder(path) -> Path:
    """Raise if `path` is not a folder, or if the files that loading reads (the folder's own, and those of the
    components model_index.json names) include pickles or JSON that does not parse. Other subfolders, such as a
    training run's accelerate checkpoints, are not looked at."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    folders = [path]
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        folders += [path / name for name in index if not name.startswith("_") and (path / name).is_dir()]
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.suffix in PICKLE_SUFFIXES:
                raise ValueError(f"{file}: pickle files are refused; genvl loads safetensors weights only")
            if file.suffix == ".json" and file.is_file():
                _read_json(file)
    return path


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None


def safetensors_shapes(folder) -> dict[str, tuple]:
    """{tensor name: shape} over every .safetensors file in `folder`, read from their headers only."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from None
    return shapes


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
        raise ValueError(f"{folder}: weight {key} has shape {list(found)} but config.json gives {list(expected)} "
                         f"({len(mismatched)} such)")
    if missing:
        raise ValueError(f"{folder}: the weights lack {missing[0]} ({len(missing)} missing), which config.json "
                         "describes")
    if unexpected:
        raise ValueError(f"{folder}: the weights hold {unexpected[0]} ({len(unexpected)} such), which config.json "
                         "does not describe")


def check_diffusers_weights(model_class, folder) -> None:
    """Raise unless the safetensors in `folder` hold every tensor of the diffusers model its config.json
    describes, each with its shape, and nothing else. The model is built on the meta device: names and shapes
    only, no memory spent on values."""
    import torch

    stored = safetensors_shapes(folder)
    try:
        with torch.device("meta"):
            model = model_class.from_config(model_class.load_config(folder))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{folder}: config.json does not describe a {model_class.__name__} ({err})") from None
    state = model.state_dict(keep_vars=True)
    saved = {id(state[k]) for k in stored if k in state}  # a tied tensor may be stored under one of its names
    ignore_missing = _ignored_patterns(model, "_keys_to_ignore_on_load_missing")
    ignore_unexpected = _ignored_patterns(model, "_keys_to_ignore_on_load_unexpected")
    raise_for_weights(
        folder,
        missing=[k for k, v in state.items()
                 if k not in stored and id(v) not in saved and not any(re.search(p, k) for p in ignore_missing)],
        unexpected=[k for k in stored if k not in state and not any(re.search(p, k) for p in ignore_unexpected)],
        mismatched=[(k, stored[k], v.shape) for k, v in state.items() if k in stored and stored[k] != v.shape],
    )


def load_transformers_model(model_class, folder, dtype=None):
    """`model_class.from_pretrained(folder)`, refusing weights that are missing, unexpected or misshaped
    (transformers itself would fill or drop them with a log line). Key renames of older layouts still apply."""
    safetensors_shapes(folder)  # safetensors present and readable
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with loading_errors(folder):
        model, info = model_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **kwargs)
    raise_for_weights(folder, sorted(info["missing_keys"]), sorted(info["unexpected_keys"]),
                      sorted(info["mismatched_keys"]))
    return model


def check_pipeline_folder(path, dtype=None) -> dict:
    """Check a pipeline folder before `DiffusionPipeline.from_pretrained`: `check_model_folder`, then every model
    named in model_index.json; transformers models are loaded here (the only way to see their loading report)
    and returned by name, to be passed to `from_pretrained` as ready components."""
    import importlib

    import torch
    import transformers

    path = check_model_folder(path)
    index = _read_json(path / "model_index.json")
    loaded = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or None in spec:
            continue
        try:
            component_class = getattr(importlib.import_module(spec[0]), spec[1])
        except (ImportError, AttributeError):
            raise ValueError(f"{path / 'model_index.json'}: {name} names an unknown class {'.'.join(spec)}") from None
        if not (isinstance(component_class, type) and issubclass(component_class, torch.nn.Module)):
            continue
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path / name}: no such folder, which model_index.json names")
        if issubclass(component_class, transformers.PreTrainedModel):
            loaded[name] = load_transformers_model(component_class, path / name, dtype)
        else:
            check_diffusers_weights(component_class, path / name)
    return loaded


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
