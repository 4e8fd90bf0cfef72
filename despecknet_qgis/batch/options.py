"""The core's despeckling options as command-line flags and keyword arguments, derived from
the signature of `despeckle_raster`.

Every keyword argument of the core function that is not one of the batch's own concerns
(input, outputs, the loaded model, progress) becomes a flag named after it (`tile_size`
-> `--tile-size`), typed from its annotation. `--set NAME=VALUE` reaches any argument,
flag or not. Only arguments given on the command line are passed, so the core's own
defaults apply otherwise, the same defaults despecknet:despeckle starts from. A new
core option therefore needs no change in the batch code.
"""
from __future__ import annotations

import argparse
import inspect
import json
import re

from ..core.errors import InputError

# Arguments of despeckle_raster the batch sets itself, per scene and band.
HANDLED = ("input_path", "output_path", "despeckler", "noise_path", "progress", "bands", "algorithm")
# Options of the batch's own that a generated flag must not shadow (reachable through --set).
RESERVED = {"model", "device", "precision", "output_dir", "scheduler", "workers", "threads_per_worker", "ort_threads",
            "noise", "suffix", "checksum", "force", "input_list", "set", "split_rows", "split_min_mpixels", "band", "help",
            "no_progress"}


def core_function():
    """The core function each task runs (imported here so that tests and workers agree)."""
    from ..core.tiled_predict import despeckle_raster

    return despeckle_raster


def core_parameters(func=None) -> dict[str, inspect.Parameter]:
    """Keyword arguments of the core function that the batch passes through."""
    func = func or core_function()
    params = inspect.signature(func).parameters
    return {n: p for n, p in params.items() if n not in HANDLED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _base_type(annotation) -> str:
    """'int' for 'int | None', 'Optional[int]', int; '' when unknown."""
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").strip()
    m = re.fullmatch(r"Optional\[(.*)\]", text)
    if m:
        text = m.group(1)
    parts = [p.strip() for p in text.split("|") if p.strip() not in ("None", "NoneType")]
    return parts[0] if len(parts) == 1 else ""


def _scalar(kind: str):
    return {"int": int, "float": float, "str": str}.get(kind)


def converter(param: inspect.Parameter):
    """A function turning a command-line string into the value `param` takes."""
    kind = _base_type(param.annotation)
    if not kind and param.default is not inspect.Parameter.empty and param.default is not None:
        kind = type(param.default).__name__
    if kind == "bool":
        return parse_bool
    scalar = _scalar(kind)
    if scalar is not None:
        return scalar
    m = re.fullmatch(r"(?:list|tuple|List|Tuple|Sequence)\[(\w+)(?:\s*,.*)?\]", kind)
    if m and _scalar(m.group(1)) is not None:
        item = _scalar(m.group(1))
        return lambda text: [item(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    return parse_any


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_any(text: str):
    """JSON where it parses (numbers, lists, null, true), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_core_flags(parser: argparse.ArgumentParser, func=None) -> list[str]:
    """One flag per passed-through core argument; returns their argument names."""
    group = parser.add_argument_group("despeckling options (the core's own arguments; default: the core's default)")
    names = []
    for name, param in core_parameters(func).items():
        if name in RESERVED:
            continue
        default = "" if param.default is inspect.Parameter.empty else f" (core default: {param.default!r})"
        convert = converter(param)
        if convert is parse_bool:
            group.add_argument(flag(name), dest=f"core_{name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"`{name}`{default}")
        else:
            group.add_argument(flag(name), dest=f"core_{name}", default=None, metavar="VALUE",
                               type=_named(convert, name), help=f"`{name}`{default}")
        names.append(name)
    return names


def _named(convert, name):
    def parse(text):
        try:
            return convert(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{flag(name)} {text!r}: {exc}") from exc

    parse.__name__ = name
    return parse


def options_from_args(args: argparse.Namespace, names: list[str], settings: list[str] | None = None, func=None) -> dict:
    """The core keyword arguments given on the command line (flags, then --set NAME=VALUE)."""
    options = {n: getattr(args, f"core_{n}") for n in names if getattr(args, f"core_{n}", None) is not None}
    options.update(parse_settings(settings or [], func))
    return check_options(options, func)


def parse_settings(settings: list[str], func=None) -> dict:
    """NAME=VALUE pairs (the value converted as its flag would be)."""
    params = core_parameters(func)
    options = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise InputError(f"--set {item!r}: write NAME=VALUE, e.g. --set tile_size=512.")
        if name not in params:
            raise InputError(_unknown(name, params))
        try:
            options[name] = converter(params[name])(text)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--set {item!r}: {exc}.") from exc
    return options


def check_options(options: dict, func=None) -> dict:
    """`options` bound against the core function's signature; InputError names what is unknown."""
    func = func or core_function()
    params = core_parameters(func)
    for name in options:
        if name not in params:
            raise InputError(_unknown(name, params))
    try:
        inspect.signature(func).bind_partial(**options)
    except TypeError as exc:
        raise InputError(f"The despeckling options {sorted(options)} do not fit the core function: {exc}.") from exc
    return dict(options)


def _unknown(name: str, params: dict) -> str:
    return (f"`{name}` is not an option of the core's despeckle_raster: use one of "
            f"{', '.join(sorted(params))}.")
