"""A base for the named-size dataclasses kept as JSON in `configs/`."""

import json
from dataclasses import asdict, fields
from pathlib import Path


class JsonArchitecture:
    """Mixin for dataclasses: `from_json` and `from_dict` (unknown keys rejected, lists read as tuples) and
    `to_dict`."""

    @classmethod
    def from_json(cls, path):
        """The architecture of JSON file `path`; a relative `configs/NAME` that is not there is the shipped
        `configs/NAME` (the training scripts' defaults, in a checkout or an installed wheel)."""
        given = path = Path(path)
        if not path.exists() and not path.is_absolute() and path.parts[:1] == ("configs",) and len(path.parts) == 2:
            from ..io.shipped import shipped

            path = shipped("configs", path.name)
        if not path.is_file():
            raise FileNotFoundError(f"--architecture {given}: no such architecture file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of architecture settings")
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: dict, source="the architecture"):
        """The architecture `data` (what `to_dict` gave, or a JSON file's content) describes; `source` names it in
        errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown architecture keys {unknown}; expected some of {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return asdict(self)
