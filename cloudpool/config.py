"""Configuration: where every setting comes from, validated in one place.

Precedence, highest first: keyword arguments (and the ``config=`` mapping) >
``CLOUDPOOL_*`` environment variables > the YAML file (``$CLOUDPOOL_CONFIG`` or
``~/.cloudpool/config.yaml``) > defaults. With no configuration at all, work runs on
local processes with a local-disk "bucket".

The file and the ``config=`` mapping share one shape: global keys at the top level,
and one section per backend or storage scheme for its own options::

    backend: aws_lambda
    storage: s3://my-bucket/cloudpool
    timeout: 300
    aws_lambda: {memory_mb: 2048}
    s3: {region: eu-west-1}

Environment variables: ``CLOUDPOOL_TIMEOUT=300`` for a global key and
``CLOUDPOOL_S3__REGION=eu-west-1`` (double underscore) for a section key. Unknown keys,
unknown sections, options a backend or storage does not declare, and values of the wrong
type raise ``ConfigError`` (a ``ValueError``) when the configuration is loaded, naming
the key, where it came from (the file and line, the environment variable, or "keyword
argument") and the closest valid name. A section's valid options are the ones its
backend or storage class declares (``Registry.declared``), read without importing the
cloud SDK behind it.

Every entry point resolves storage options here: ``CloudPoolExecutor`` (and the Pool and
Lithops facades built on it) through ``load_config``, ``Storage()``, ``objects()`` and the
CLI through ``storage_options()`` / ``open_storage()``; a value a backend or storage
refuses when built is reported with where it was set (``with_origins``). Options travel
to workers inside payloads, ``Storage`` objects and ``ObjectPart``s without the ones
declared as credentials.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from .errors import ConfigError

ENV_PREFIX = "CLOUDPOOL_"
#: Environment variables with the prefix that are not settings (read where they are used).
_ENV_NOT_SETTINGS = {"CLOUDPOOL_CONFIG", "CLOUDPOOL_REDIS_URL", "CLOUDPOOL_RUNTIME_TOKEN",
                     "CLOUDPOOL_KNATIVE_TOKEN"}
#: Sections that belong to neither a backend nor a storage scheme, with their options.
#: 'redis': cloudpool.multiprocessing's shared state, ``{url: redis://host:port/db}``.
_EXTRA_SECTIONS: Dict[str, frozenset] = {"redis": frozenset({"url"})}


def _default_storage() -> str:
    user = os.environ.get("USER") or str(os.getuid())
    return "file://" + os.path.join(tempfile.gettempdir(), f"cloudpool-{user}")


def _opt_positive_float(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds or null, not {value!r}")
    return float(value)


def _positive_float(name: str, value: Any) -> float:
    if value is None:
        raise ConfigError(f"{name} must be a positive number, not null")
    return _opt_positive_float(name, value)  # type: ignore[return-value]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
    return value


def _opt_positive_int(name: str, value: Any) -> Optional[int]:
    return None if value is None else _positive_int(name, value)


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, not {value!r}")
    return value


def _opt_str(name: str, value: Any) -> Optional[str]:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    return value


def _progress(name: str, value: Any) -> Any:
    if value not in (True, False, "auto"):
        raise ConfigError(f"{name} must be true, false or 'auto', not {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    default: Any
    check: Callable[[str, Any], Any]
    help: str


#: Every global setting, its default, its check and what it does.
SETTINGS: Dict[str, Setting] = {
    "backend": Setting("local", _opt_str, "compute backend name (local, aws_lambda, kubernetes, knative, ...)"),
    "storage": Setting(None, _opt_str, "storage URL for payloads, results and status (default: a local temp dir)"),
    "runtime": Setting(None, _opt_str, "runtime (container image / deployed function) the backend runs"),
    "max_workers": Setting(None, _opt_positive_int, "concurrency; default: the backend's (CPU count locally)"),
    "timeout": Setting(None, _opt_positive_float, "per-call time limit in seconds, enforced on the worker and checked by the client"),
    "max_batch_size": Setting(1000, _positive_int, "most calls grouped into one invocation"),
    "inline_limit": Setting(64 * 1024, _non_negative_int, "argument batches up to this many bytes travel inside the invocation event"),
    "poll_interval": Setting(0.05, _positive_float, "shortest interval between status polls (seconds)"),
    "poll_interval_max": Setting(2.0, _positive_float, "longest interval between status polls when nothing changes"),
    "flush_interval": Setting(0.25, _positive_float, "a worker writes finished calls' results at least this often (seconds)"),
    "retries": Setting(2, _non_negative_int, "extra attempts for a call whose invocation failed (see cloudpool.retry)"),
    "storage_timeout": Setting(120.0, _positive_float, "seconds the client keeps retrying unreachable storage before failing the calls that wait on it"),
    "keep_data": Setting(False, _bool, "keep job payloads/results in storage after the executor shuts down"),
    "progress": Setting("auto", _progress, "tqdm progress bars: true, false, or 'auto' (only on a terminal)"),
}


def _parse_env_value(raw: str) -> Any:
    """Env values are YAML scalars: ``10`` -> 10, ``true`` -> True, ``null`` -> None."""
    import yaml  # here, not at the top: most processes never need it (import cost ~15 ms)

    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _closest(name: str, candidates: Iterable[str]) -> str:
    # Short names (s3, gs, az) differ by one character in a third of their length,
    # below difflib's usual 0.6 cutoff: be more lenient for them.
    cutoff = 0.6 if len(name) > 4 else 0.4
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_options_error(what: str, unknown: Iterable[str], accepted: Iterable[str],
                          where: str = "") -> ConfigError:
    """The error for options ``what`` (``"s3:// storage"``, ``"the 'local' backend"``) lacks.

    Names each unknown option, the closest accepted one, and ``where`` it came from.
    """
    unknown = sorted(unknown, key=str)
    accepted = sorted(accepted)
    hints = []
    for name in unknown:
        match = difflib.get_close_matches(str(name), accepted, n=1, cutoff=0.5)
        if match:
            hints.append(f"{match[0]!r}" + (f" for {name!r}" if len(unknown) > 1 else ""))
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    at = f", from {where}" if where else ""
    return ConfigError(f"unknown option(s) {unknown} for {what}{at}{hint}; "
                       f"accepted: {accepted or 'none'}")


def _section_kind(section: str) -> Tuple[str, Optional[frozenset]]:
    """How to name ``section`` in messages, and the options it declares (None: unknown)."""
    from .compute import backends
    from .storage import storages

    if section in _EXTRA_SECTIONS:
        extra = _EXTRA_SECTIONS[section]
        if section in storages:  # 'redis' is a storage too: both sets of options
            declared = storages.declared(section)
            extra = extra | (declared.options if declared is not None else frozenset())
        return f"the {section!r} section", extra

    if section in backends:
        declared = backends.declared(section)
        return f"the {section!r} backend", None if declared is None else declared.options
    declared = storages.declared(section)
    return f"{section}:// storage", None if declared is None else declared.options


def check_options(section: str, options: Iterable[str], where: str = "") -> None:
    """Raise ``ConfigError`` for any of ``options`` that ``section`` does not declare."""
    kind, accepted = _section_kind(section)
    if accepted is None:
        return  # a third-party class whose SDK is missing: it checks them itself when built
    unknown = [o for o in options if o not in accepted]
    if unknown:
        raise unknown_options_error(kind, unknown, accepted, where)


def _yaml_line(path: str, keys: Tuple[Any, ...]) -> Optional[int]:
    """The 1-based line of the key path ``keys`` in the YAML file, for error messages only."""
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as f:
            node = yaml.compose(f, Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def config_file_path() -> str:
    return os.environ.get("CLOUDPOOL_CONFIG") or os.path.join(os.path.expanduser("~"), ".cloudpool", "config.yaml")


def _load_file(path: str, explicit: bool) -> Dict[str, Any]:
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"CLOUDPOOL_CONFIG names {path!r}, which does not exist")
        return {}
    import yaml

    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


class Config:
    """The effective configuration, with the source of every value (for ``cloudpool config``)."""

    def __init__(self, values: Dict[str, Any], sections: Dict[str, Dict[str, Any]],
                 sources: Dict[str, str],
                 origins: Optional[Dict[str, Callable[[], str]]] = None) -> None:
        self._values = values
        self._sections = sections
        self.sources = sources
        # "s3.max_attempts" -> where exactly it was set (file and line, variable), on demand.
        self._origins = dict(origins or {})

    def origin(self, key: str) -> str:
        """Where ``key`` (``"timeout"``, ``"s3.max_attempts"``) was set, for error messages."""
        where = self._origins.get(key)
        return where() if where is not None else self.sources.get(key, "default")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def section(self, name: str) -> Dict[str, Any]:
        """Options for one backend or storage scheme (a copy)."""
        return dict(self._sections.get(name, {}))

    def sections(self) -> Dict[str, Dict[str, Any]]:
        return {k: dict(v) for k, v in self._sections.items()}

    def as_dict(self) -> Dict[str, Any]:
        out = dict(self._values)
        out.update(self.sections())
        return out


def known_sections() -> set:
    from .compute import backends
    from .storage import storages

    return set(backends.names()) | set(storages.names()) | set(_EXTRA_SECTIONS)


def load_config(overrides: Optional[Mapping[str, Any]] = None,
                environ: Optional[Mapping[str, str]] = None,
                origin: str = "keyword argument") -> Config:
    """Merge defaults, the YAML file, ``CLOUDPOOL_*`` variables and ``overrides`` (highest).

    ``origin`` names where ``overrides`` came from in error messages.
    """
    environ = os.environ if environ is None else environ
    # (source shown by `cloudpool config`, layer, where(key path) for error messages)
    layers: list[Tuple[str, Dict[str, Any], Callable[[Tuple[Any, ...]], str]]] = []

    path = environ.get("CLOUDPOOL_CONFIG") or config_file_path()

    def in_file(keys: Tuple[Any, ...]) -> str:
        line = _yaml_line(path, keys)
        return f"config file {path}" + (f", line {line}" if line else "")

    layers.append((f"file {path}", _load_file(path, explicit="CLOUDPOOL_CONFIG" in environ), in_file))

    env_layer: Dict[str, Any] = {}
    env_names: Dict[Tuple[Any, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if "__" in rest:
            section, _, key = rest.partition("__")
            env_layer.setdefault(section, {})[key] = _parse_env_value(raw)
            env_names.setdefault((section,), name)
            env_names[(section, key)] = name
        else:
            env_layer[rest] = _parse_env_value(raw)
            env_names[(rest,)] = name
    layers.append(("environment (CLOUDPOOL_*)", env_layer,
                   lambda keys: f"environment variable {env_names[keys]}"))

    if overrides:
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"config must be a mapping of settings, not {type(overrides).__name__}")
        layers.append(("keyword arguments", dict(overrides), lambda keys: origin))

    values = {k: s.default for k, s in SETTINGS.items()}
    sources = {k: "default" for k in SETTINGS}
    origins: Dict[str, Callable[[], str]] = {}
    sections: Dict[str, Dict[str, Any]] = {}
    section_names: Optional[set] = None
    for source, layer, where in layers:
        for key, value in layer.items():
            if key in SETTINGS:
                try:
                    values[key] = SETTINGS[key].check(key, value)
                except ConfigError as exc:
                    raise ConfigError(f"{exc} (from {where((key,))})") from None
                sources[key] = source
                origins[key] = functools.partial(where, (key,))
                continue
            if section_names is None:
                section_names = known_sections()
            if key in section_names:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"section {key!r} in {where((key,))} must be a mapping of options, "
                                      f"not {value!r}")
                kind, accepted = _section_kind(key)
                for opt in value:
                    if accepted is not None and opt not in accepted:
                        # where() only now: for the file it re-reads the YAML for the line.
                        raise unknown_options_error(kind, [opt], accepted, where((key, opt)))
                for opt, opt_value in value.items():
                    sections.setdefault(key, {})[opt] = opt_value
                    sources[f"{key}.{opt}"] = source
                    origins[f"{key}.{opt}"] = functools.partial(where, (key, opt))
                continue
            if source.startswith("environment"):
                label, at = env_names.get((key,), key), "the environment"
            else:
                label, at = key, where((key,))
            raise ConfigError(
                f"unknown setting {label!r} in {at}"
                f"{_closest(key, list(SETTINGS) + sorted(section_names or ()))}; "
                f"settings are {', '.join(SETTINGS)}, and sections are backend or storage names"
                + (f" ({', '.join(sorted(section_names))})" if section_names else "")
            )
    if values["storage"] is None:
        values["storage"] = _default_storage()
    if values["poll_interval_max"] < values["poll_interval"]:
        raise ConfigError(
            f"poll_interval_max ({values['poll_interval_max']}) must be >= poll_interval ({values['poll_interval']})"
        )
    return Config(values, sections, sources, origins)


def storage_options(scheme: str, overrides: Optional[Mapping[str, Any]] = None, *,
                    config: Optional[Config] = None,
                    origin: str = "keyword argument") -> Dict[str, Any]:
    """The options for one storage scheme: ``overrides`` over the configuration's section.

    ``config`` defaults to ``load_config()`` (environment and file); ``overrides`` are
    checked against the scheme's declared options, with ``origin`` in the message.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"storage options must be a mapping, not {type(overrides).__name__}")
    if overrides:
        check_options(scheme, overrides, origin)
    options = (config if config is not None else load_config()).section(scheme)
    options.update(overrides or {})
    return options


def open_storage(scheme: str, bucket: str, overrides: Optional[Mapping[str, Any]] = None, *,
                 config: Optional[Config] = None,
                 origin: str = "keyword argument") -> Tuple[Any, Dict[str, Any]]:
    """``(backend, options)``: the (cached) storage backend for one bucket, and its options
    resolved by ``storage_options``.

    A value the storage refuses (``max_attempts: two``) is reported with where that
    option was set -- the keyword argument, or the file and line / the variable.
    """
    from .storage import get_storage

    config = config if config is not None else load_config()
    options = storage_options(scheme, overrides, config=config, origin=origin)
    try:
        return get_storage(scheme, bucket, options), options
    except ConfigError:
        raise
    except ValueError as exc:
        better = with_origins(exc, scheme, options, config, overrides, origin)
        if better is None:
            raise
        raise better from None


def with_origins(exc: ValueError, section: str, options: Mapping[str, Any], config: Config,
                 overrides: Optional[Mapping[str, Any]] = None,
                 origin: str = "keyword argument") -> Optional[ConfigError]:
    """``exc``, raised by a backend or storage refusing one of ``options``, with where each
    option it names was set; None if it names none. Classes name the option they refuse
    (``option 'max_attempts' must be ...``, ``start_method 'x' is not available``)."""
    if type(exc) is not ValueError:  # subclasses (ConfigError, ...) keep their type and text
        return None
    text = str(exc)
    wheres = [f"{section}.{o} from " + (origin if overrides and o in overrides
                                        else config.origin(f"{section}.{o}"))
              for o in options if re.search(rf"(?<![\w.]){re.escape(o)}(?!\w)", text)]
    return ConfigError(f"{text} ({'; '.join(wheres)})") if wheres else None
