"""A base for the named-size dataclasses kept as JSON in `configs/`."""

import json
from dataclasses import asdict, fields
from pathlib import Path


class JsonArchitecture:
    """Mixin for dataclasses: `from_json` and `from_dict` (unknown keys rejected, lists read as tuples) and
    `to_dict`."""

    @classmethod
    def from_json(cls, path):
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
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
