"""Loading a pipeline folder's components from an allow-list of classes, never by importing what the folder names.

diffusers' `DiffusionPipeline.from_pretrained` imports whatever module `model_index.json` names (even for the
components passed in ready-made, to check their class), and runs a `<library>.py` it finds in a component
folder: a downloaded folder could so run code. genvl reads `model_index.json` itself. Each entry must name a
public class of transformers or diffusers, or one of genvl's own components, of a kind genvl knows how to load
(a model, a tokenizer, an image processor, a scheduler); the class is looked up by name in the library's
namespace, and no module the folder chooses is imported.
"""

import inspect
from pathlib import Path

from .folders import (
    SCHEDULER_LIMITS,
    check_config,
    check_files,
    check_model_folder,
    check_processor_config,
    first_line,
    load_diffusers_model,
    load_transformers_model,
    loading_errors,
    no_model_folder,
    read_json,
)

LIBRARIES = ("transformers", "diffusers")
# components named outside a library's public namespace, as model_index.json names them: (module, class) -> where
# the class is defined. genvl's own, and Karlo's text projection, which its published folder names as diffusers'
# `unclip` module named it before the pipeline was moved among the deprecated ones
NAMED_COMPONENTS = {
    ("genvl.models.unclip", "UnclipConditioner"): "genvl.models.unclip",
    ("genvl.models.safety", "SafetyChecker"): "genvl.models.safety",
    ("genvl.models.matching", "MatchingHead"): "genvl.models.matching",
    ("unclip", "UnCLIPTextProjModel"): "diffusers.pipelines.deprecated.unclip.text_proj",
}


def component_kinds() -> dict:
    """{kind: {base class: how to load a subclass from a folder, given (class, folder, dtype)}}."""
    import diffusers
    import transformers
    from transformers.feature_extraction_utils import FeatureExtractionMixin
    from transformers.image_processing_base import ImageProcessingMixin

    def plain(component_class, folder, dtype):
        with loading_errors(folder):
            return component_class.from_pretrained(folder, local_files_only=True)

    def processor(component_class, folder, dtype):
        check_processor_config(folder)
        return plain(component_class, folder, dtype)

    def tokenizer(component_class, folder, dtype):
        loaded = plain(component_class, folder, dtype)
        check_tokenizer(folder, loaded)
        return loaded

    def scheduler(component_class, folder, dtype):
        with loading_errors(folder):
            config = component_class.load_config(folder)
        check_config(Path(folder) / "scheduler_config.json", config, SCHEDULER_LIMITS)
        loaded = plain(component_class, folder, dtype)
        check_schedule(Path(folder) / "scheduler_config.json", loaded)
        return loaded

    return {
        "model": {transformers.PreTrainedModel: load_transformers_model, diffusers.ModelMixin: load_diffusers_model},
        "tokenizer": {transformers.PreTrainedTokenizerBase: tokenizer},
        "image processor": {ImageProcessingMixin: processor, FeatureExtractionMixin: processor},
        "scheduler": {diffusers.SchedulerMixin: scheduler},
    }


def as_torch_dtype(dtype):
    """A pipeline's `dtype` argument as a torch dtype: a torch dtype, or its name as transformers and diffusers
    take it ("float16", "torch.bfloat16"); None or "auto" for the weights' default. Anything else is refused."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return None
        found = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
    raise ValueError(f"dtype must be a floating-point torch dtype or its name (e.g. 'float16'), got {dtype!r}")


def check_schedule(file, scheduler) -> None:
    """Refuse a scheduler whose noise schedule is not one: betas (from `trained_betas` or a `beta_schedule` and
    its ends) that are not finite numbers in [0, 1), which make every image NaN, or a `steps_offset` that puts
    timesteps past the schedule's end."""
    import torch

    betas = getattr(scheduler, "betas", None)
    if betas is not None and not bool((torch.isfinite(betas) & (betas >= 0) & (betas < 1)).all()):
        raise ValueError(f"{file}: the noise schedule's betas must be finite numbers in [0, 1)")
    offset, steps = scheduler.config.get("steps_offset", 0), scheduler.config.get("num_train_timesteps", 1)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < steps:
        raise ValueError(f"{file}: steps_offset must be an integer in [0, num_train_timesteps), got {offset!r}")


def slot_kind(name: str) -> str:
    """The kind of component a pipeline's argument `name` takes, from its name (`decoder_tokenizer`, say)."""
    for kind, word in (("tokenizer", "tokenizer"), ("scheduler", "scheduler"), ("image processor", "processor")):
        if word in name:
            return kind
    return "model"


def check_tokenizer(folder, tokenizer, vocab_size: int | None = None) -> None:
    """Refuse a tokenizer with no vocabulary beyond its special tokens (transformers builds one when the vocabulary
    files are missing, and every caption then decodes to nothing), or, given the model's `vocab_size`, one whose
    ids the model cannot embed."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(f"{folder}: the tokenizer has no vocabulary (are its vocabulary files missing?)")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size}")


def load_pretrained(component_class, folder, dtype=None):
    """`component_class.from_pretrained(folder)` with every check a pipeline folder's component gets, for a class
    of a kind `component_kinds` holds, from a local folder only (the training scripts load their starting points
    this way)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise no_model_folder(folder)
    check_files(folder)
    for kind, bases in component_kinds().items():
        if issubclass(component_class, tuple(bases)):
            return load_component(component_class, folder, kind, dtype)
    raise TypeError(f"{component_class.__name__} is not a model, tokenizer, image processor or scheduler")


def load_tokenizer(folder, vocab_size: int | None = None):
    """The tokenizer of a flat model folder, by transformers' own classes only (no custom code), checked with
    `check_tokenizer`."""
    from transformers import AutoTokenizer

    with loading_errors(folder):
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    check_tokenizer(folder, tokenizer, vocab_size)
    return tokenizer


def load_image_processor(folder):
    """The image processor of a flat model folder, by transformers' own classes only, its sizes checked."""
    from transformers import AutoImageProcessor

    check_processor_config(folder)
    with loading_errors(folder):
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=False, local_files_only=True)


def resolve_component(library, class_name, where: str, kind: str) -> type:
    """The class `[library, class_name]` names, if the allow-list holds it and it is a component of `kind` (see
    `component_kinds`); else a ValueError naming `where`."""
    import importlib

    refused = ValueError(
        f"{where} names {library}.{class_name}, which genvl does not load: components must be "
        "models, tokenizers, image processors or schedulers of transformers or diffusers, or "
        "genvl's own"
    )
    if not (isinstance(library, str) and isinstance(class_name, str)):
        raise refused
    if library in LIBRARIES and class_name.isidentifier() and not class_name.startswith("_"):
        try:  # the library's own public names (a lazy module imports the library's submodule defining it)
            found = getattr(importlib.import_module(library), class_name, None)
        except ImportError:  # a class of a backend that is not installed
            raise refused from None
    elif (library, class_name) in NAMED_COMPONENTS:
        found = getattr(importlib.import_module(NAMED_COMPONENTS[library, class_name]), class_name)
    else:
        raise refused
    if not (isinstance(found, type) and issubclass(found, tuple(component_kinds()[kind]))):
        raise ValueError(
            f"{where} names {library}.{class_name}, which is not a {kind} of transformers or diffusers "
            "(or genvl's own): genvl does not load it there"
        )
    return found


def load_component(component_class, folder: Path, kind: str, dtype=None):
    """An instance of `component_class` (from `resolve_component` for `kind`) loaded from `folder`."""
    for base, load in component_kinds()[kind].items():
        if issubclass(component_class, base):
            return load(component_class, folder, dtype)
    raise AssertionError(f"{component_class} passed resolve_component")


def load_pipeline_components(path, pipeline_class, dtype=None, class_names=(), given=None) -> dict:
    """The components of the pipeline folder `path`, loaded, by `pipeline_class.__init__`'s argument names.

    model_index.json must say it is a `pipeline_class` folder (or one of `class_names`, other names the same
    layout is published under), name every required component and nothing the pipeline does not take; an
    optional one may be absent or `[null, null]`. A component in `given` ({name: component or None}) is taken
    from there, and its folder is not read; None only for an optional one. The names in the class's
    `config_values` are settings, not components: taken from model_index.json as they are (the class's default
    where absent), for its `__init__` to check."""
    path = check_model_folder(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{path}: not a pipeline folder (no model_index.json)")
    index = read_json(index_file)
    found = index.get("_class_name")
    if found != pipeline_class.__name__ and found not in class_names:
        raise ValueError(
            f"{path}: a {found} folder, not a {pipeline_class.__name__} one (model_index.json's _class_name)"
        )
    parameters = inspect.signature(pipeline_class.__init__).parameters
    names = [name for name in parameters if name != "self"]
    unknown = sorted(name for name in index if not name.startswith("_") and name not in names)
    if unknown:
        raise ValueError(f"{index_file}: names {unknown[0]}, which a {pipeline_class.__name__} does not take")
    given = dict(given or {})
    for name in given:
        if name not in names:
            raise TypeError(f"{pipeline_class.__name__} takes no component {name!r}")
        if given[name] is None and parameters[name].default is not None:
            raise ValueError(f"{name} is required: it cannot be None")
    components = {}
    for name in names:
        if name in given:
            components[name] = given[name]
            continue
        if name in getattr(pipeline_class, "config_values", ()):
            components[name] = index.get(name, parameters[name].default)
            continue
        spec = index.get(name)
        optional = parameters[name].default is None
        if spec is None or spec == [None, None]:
            if not optional:
                raise ValueError(f"{index_file}: lacks the component {name}")
            components[name] = None
            continue
        if not (isinstance(spec, list) and len(spec) == 2):
            raise ValueError(f"{index_file}: {name} must be [library, class], got {spec!r}")
        kind = slot_kind(name)
        component_class = resolve_component(*spec, where=f"{index_file}: {name}", kind=kind)
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path / name}: no such folder, which model_index.json names")
        components[name] = load_component(component_class, path / name, kind, dtype)
    return components


def local_folder(name, local_files_only: bool = True) -> Path:
    """The folder `name` names: a local folder, or a hub id (`owner/name`) already in the Hugging Face cache
    (downloaded only when `local_files_only` is False)."""
    path = Path(name)
    if path.is_dir():
        return path
    if not path.exists() and str(name).count("/") == 1 and not str(name).startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(name), local_files_only=local_files_only))
        except Exception as err:  # noqa: BLE001  (the hub's errors are many and many lines long)
            raise FileNotFoundError(
                f"{name}: no such model folder, nor a model in the Hugging Face cache ({first_line(err)})"
            ) from None
    raise no_model_folder(path, name)


def pipeline_from_folder(pipeline_class, name, dtype=None, local_files_only: bool = True, given=None):
    """A `pipeline_class` built from the components of the pipeline folder `name` (see `local_folder`), those in
    `given` taken from there (see `load_pipeline_components`)."""
    path = local_folder(name, local_files_only)
    components = load_pipeline_components(path, pipeline_class, dtype, given=given)
    try:
        pipeline = pipeline_class(**components)
    except ValueError as err:  # components or settings that do not go together
        raise ValueError(f"{path / 'model_index.json'}: {err}") from None
    pipeline.register_to_config(_name_or_path=str(name))
    return pipeline
