"""A base for the named-size dataclasses kept as JSON in `configs/`."""

import json
from dataclasses import asdict, fields
from pathlib import Path


class JsonArchitecture:
    """Mixin for dataclasses: `from_json` (unknown keys rejected, lists read as tuples) and `to_dict`."""

    @classmethod
    def from_json(cls, path):
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown architecture keys {unknown}; expected some of {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return asdict(self)
