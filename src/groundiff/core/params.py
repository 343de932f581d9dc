"""params.yaml: the loader, the table of its sections, and typed access that records what is read.

`Params()` reads the file and validates *every* section against its schema (`groundiff.core.schema`)
at once: an unknown key, a wrong type or an out-of-range value anywhere is one `ParamsError` naming
the key, before any stage does any work. The library takes the typed dataclasses, never raw dicts.

A stage opens its params with `Params.for_stage(name, declared)`, where `declared` is what dvc.yaml
lists for it: reading a key the stage does not declare is an error, so dvc.yaml cannot silently
miss a dependency. Keys that change how a run is carried out but not its result (`RUN_ONLY`) need
no declaration, and are left out of dvc.yaml so that changing them reruns nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from groundiff.core import schema

T = TypeVar("T")


from groundiff.core.dvcfile import typed_key
from groundiff.core.errors import ParamsError


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml; a missing or malformed file is a ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found. Run from the project root (where dvc.yaml is).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, where)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ParamsError(f"{where}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParamsError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {
            _check_type(k, kt, f"{where} key"): _check_type(v, vt, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_params(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ParamsError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config type {tp!r} at {where} is not supported")


def from_params(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from a params mapping, checking keys and types.

    Missing keys take the dataclass defaults; the dataclass's own __post_init__ checks ranges
    and its ValueErrors are re-raised as ParamsError naming the section.
    """
    section = section or {}
    if not isinstance(section, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping, got {section!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"{where} takes: {', '.join(sorted(names))}"
        )
    kwargs = {k: _check_type(v, hints[k], f"params.yaml: {where}.{k}") for k, v in section.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ParamsError(f"params.yaml: {where}: {err}") from err




#: Every top-level section of params.yaml and its schema.
SECTIONS: dict[str, type] = {
    "world": schema.WorldParams,
    "shapes": schema.ShapesParams,
    "voc": schema.PaperWorldParams,
    "coco": schema.PaperWorldParams,
    "world_data": schema.WorldDataConfig,
    "world_detector": schema.DetectorConfig,
    "world_diffusion": schema.WorldDiffusionParams,
    "world_fidelity": schema.WorldFidelityParams,
    "world_binding": schema.BindingConfig,
    "prompts": schema.PromptConfig,
    "synthesize": schema.SynthesisConfig,
    "distributed": schema.DistributedConfig,
    "pseudo_label": schema.PseudoLabelConfig,
    "synth_dataset": schema.SynthDatasetConfig,
    "train_grounding": schema.TrainConfig,
    "eval_grounding": schema.EvalConfig,
    "train_segmenter": schema.TrainSegmenterParams,
    "eval_zs3": schema.EvalZS3Params,
    "tracking": schema.TrackingParams,
}

#: Keys that decide how a run is carried out, not what it produces: read freely, never declared
#: in dvc.yaml (changing them must rerun nothing). A key here covers everything below it.
RUN_ONLY: frozenset[str] = frozenset({
    "distributed",  # where shards are generated: the same bytes serially or on any cluster
    "world_diffusion.run",
    "train_grounding.checkpoint_every",
    "train_grounding.log_every",
    "train_segmenter.segmenter.checkpoint_every",
    "train_segmenter.segmenter.log_every",
    "tracking",  # MLflow grouping and tags of the stage runs (set by `groundiff study`)
})


def covered(key: str, declared: typing.Iterable[str]) -> bool:
    """Whether dvc.yaml's `declared` params keys include `key` (itself, or a section above it)."""
    return any(key == d or key.startswith(d + ".") for d in declared)


def run_only(key: str) -> bool:
    return covered(key, RUN_ONLY)


def result_keys(key: str, value: Any) -> list[str]:
    """The keys below `key` that decide a result: `key` itself, or a dataclass's non-run-only fields."""
    if run_only(key):
        return []
    if dataclasses.is_dataclass(value) and any(r.startswith(key + ".") for r in RUN_ONLY):
        return [k for f in dataclasses.fields(value)
                for k in result_keys(f"{key}.{f.name}", getattr(value, f.name))]
    return [key]


class UndeclaredParam(ParamsError):
    """A stage read a params key its dvc.yaml entry does not list."""


class _TrackedView:
    """A read-only view of a small params dataclass (`world`) that records each field read."""

    def __init__(self, obj: Any, prefix: str, params: "Params") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_params", params)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if not name.startswith("_"):
            self._params._read(f"{self._prefix}.{name}", value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"params are read-only ({self._prefix}.{name})")

    def unwrap(self) -> Any:
        """The dataclass itself; counts as reading all of it."""
        self._params._read(self._prefix, self._obj)
        return self._obj


class Params:
    """params.yaml, every section validated on load, with typed access that records what is read.

        params = Params()                              # the whole file, validated
        params.section("train_grounding")              # schema.TrainConfig
        params.get("synthesize.capture_t")             # one key, typed
        params.world.name                              # the world section, field by field
    """

    def __init__(self, path: str | Path = "params.yaml", *, stage: str | None = None,
                 declared: typing.Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.raw = load_params(self.path)
        unknown = sorted(set(self.raw) - set(SECTIONS))
        if unknown:
            raise ParamsError(f"{self.path}: unknown section(s) {', '.join(unknown)}; "
                              f"params.yaml has: {', '.join(SECTIONS)}")
        self._sections = {name: from_params(cls, self.raw.get(name), name) for name, cls in SECTIONS.items()}
        self.stage = stage
        self.declared = None if declared is None else tuple(declared)
        self._values: dict[str, Any] = {}  # every key read, as asked for, and its value

    @classmethod
    def for_stage(cls, stage: str, declared: typing.Iterable[str], path: str | Path = "params.yaml") -> "Params":
        """The params of DVC stage `stage`, which may read only the `declared` keys (and RUN_ONLY ones)."""
        return cls(path, stage=stage, declared=declared)

    @property
    def world(self) -> schema.WorldParams:
        return _TrackedView(self._sections["world"], "world", self)  # type: ignore[return-value]

    def section(self, name: str) -> Any:
        """A whole section, typed; reads every key of it that decides a result."""
        if name not in SECTIONS:
            raise ParamsError(f"params.yaml has no section {name!r}; it has: {', '.join(SECTIONS)}")
        value = self._sections[name]
        self._read(name, value)
        return value

    def written(self, name: str) -> dict[str, Any]:
        """A section exactly as params.yaml writes it (no defaults filled in): for showing it to people.
        Reads the whole section."""
        self.section(name)
        return copy.deepcopy(self.raw.get(name) or {})

    def get(self, key: str) -> Any:
        """One key (dotted: `train_segmenter.variants.A`), typed as its schema says."""
        value = self.peek(key)
        self._read(key, value)
        return value

    def peek(self, key: str) -> Any:
        """One key's typed value without counting it as the stage's read: for whole-file checks."""
        name, *rest = key.split(".")
        value = self._sections.get(name)
        if value is None:
            raise ParamsError(f"params.yaml has no section {name!r}; it has: {', '.join(SECTIONS)}")
        for i, part in enumerate(rest):
            if dataclasses.is_dataclass(value) and part in {f.name for f in dataclasses.fields(value)}:
                value = getattr(value, part)
            elif isinstance(value, dict) and typed_key(value, part) in value:
                value = value[typed_key(value, part)]
            else:
                where = ".".join([name, *rest[:i]])
                keys = ([f.name for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value)
                        else list(value) if isinstance(value, dict) else [])
                raise ParamsError(f"params.yaml: {where} has no key {part!r}"
                                  + (f"; it has: {', '.join(map(str, keys))}" if keys else ""))
        return value

    def logged(self) -> dict[str, Any]:
        """Everything read so far as a nested dict of plain values: what a tracking run records."""
        out: dict[str, Any] = {}
        for key, value in sorted(self._values.items()):
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):  # a section read whole already holds this key
                    break
            else:
                if not isinstance(node.get(last), dict):
                    node[last] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def _read(self, key: str, value: Any) -> None:
        self._values[key] = value
        if self.declared is None:
            return
        missing = [k for k in result_keys(key, value) if not covered(k, self.declared)]
        if missing:
            raise UndeclaredParam(
                f"stage {self.stage} reads params.yaml key(s) {', '.join(missing)}, which dvc.yaml does not "
                f"list in its params (it lists: {', '.join(self.declared) or 'none'}); declare them there so "
                "that changing them reruns the stage"
            )


def to_dict(obj: Any) -> dict[str, Any]:
    """A params dataclass (or a tracked view of one) as a dict for logging."""
    if isinstance(obj, _TrackedView):
        obj = obj.unwrap()
    return dataclasses.asdict(obj)
