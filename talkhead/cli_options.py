"""Typer parameters generated from an options dataclass (:mod:`talkhead.options`): declared once.

``@with_options(AnimateOptions)`` appends one ``--flag`` per dataclass field (its help, default and
choices from the field's metadata; the choices as the metavar, no second default where the help
states one) to a command's own parameters, and calls the command with
``options=AnimateOptions(...)`` built from them. ``exclude`` leaves fields out (they keep their
dataclass default); ``defaults`` overrides a default for one command (e.g. preprocess's device).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Iterable, Mapping, Optional

import typer
from rich.markup import escape


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _numeric(annotation: Any) -> type | None:
    """``int`` or ``float`` for an ``int``/``float``/``Optional[...]`` annotation, else ``None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def _convert(cls: type, values: dict) -> dict:
    """CLI strings of numeric fields -> numbers (``auto`` -> ``None`` where the field allows it), or
    :class:`InputError` quoting the flag and the value."""
    from .errors import InputError

    hints = typing.get_type_hints(cls)
    autos = {f.name for f in dataclasses.fields(cls) if f.metadata.get("auto")}
    out = dict(values)
    for name, value in values.items():
        kind = _numeric(hints.get(name))
        if kind is None or not isinstance(value, str):
            continue
        if name in autos and value.strip().lower() == "auto":
            out[name] = None
            continue
        try:
            out[name] = kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            what += " or auto" if name in autos else ""
            raise InputError(f"{_flag(name)} must be {what}, not {value!r}") from None
    return out


def option_parameters(cls: type, *, exclude: Iterable[str] = (),
                      defaults: Mapping[str, Any] | None = None) -> list[inspect.Parameter]:
    """Keyword-only ``inspect.Parameter`` objects with ``typer.Option`` defaults for ``cls``'s fields.

    Raises:
        TypeError: ``cls`` is not a dataclass.
    """
    hints = typing.get_type_hints(cls)
    exclude, defaults = set(exclude), dict(defaults or {})
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or not meta.get("cli", True):
            continue
        default = defaults.get(f.name, f.default)
        help_text = meta.get("help", "")
        if meta.get("choices") and not all(c in help_text for c in meta["choices"]):
            help_text = f"{help_text} [{' | '.join(meta['choices'])}]"
        flags = meta.get("flags") or (_flag(f.name),)
        kwargs = {"help": escape(help_text)}  # rich markup mode would eat "[default: ...]"
        if "[default:" in help_text:
            kwargs["show_default"] = False  # the help states it (with its meaning): not a second one
        if meta.get("choices"):
            kwargs["metavar"] = "|".join(meta["choices"])  # not <str>
        annotation = hints[f.name]
        if _numeric(annotation) is not None:
            # parsed by us (see _convert), so a bad number is the same one-line error as a bad range
            annotation, kwargs["metavar"] = Optional[str], _numeric(annotation).__name__.upper()
            if meta.get("auto"):
                kwargs["metavar"] += "|auto"
                default = "auto" if default is None else str(default)
            else:
                default = None if default is None else str(default)
        option = typer.Option(default, *flags, **kwargs)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))
    return params


def with_options(cls: type, *, exclude: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                 build: Callable[..., Any] | None = None) -> Callable:
    """Decorator: the command gets ``cls``'s fields as CLI options and receives ``options=cls(...)``.

    The command's own parameters come first (arguments, command-only options); it must accept an
    ``options`` keyword. ``build(**values)`` replaces ``cls(**values)`` where a command needs to adjust
    values first. Errors raised by ``cls`` (``InputError``) propagate to the caller's error handling:
    the decorated command is called inside ``talkhead.cli``'s error mapping by ``errors``.
    """
    extra = option_parameters(cls, exclude=exclude, defaults=defaults)
    names = {p.name for p in extra}

    def decorate(func: Callable) -> Callable:
        own_sig = inspect.signature(func, eval_str=True)
        own = [p for name, p in own_sig.parameters.items() if name != "options"]
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{func.__name__} declares {sorted(clash)} itself and in {cls.__name__}")

        @functools.wraps(func)
        def command(**values: Any) -> Any:
            opts = {n: values.pop(n) for n in list(values) if n in names}
            maker = build or cls
            return func(options=_Deferred(cls, maker, opts), **values)

        command.__signature__ = own_sig.replace(parameters=own + extra)
        command.__annotations__ = {p.name: p.annotation for p in own + extra}
        command.__annotations__["return"] = own_sig.return_annotation
        del command.__wrapped__  # typer must see the generated signature, not the function's
        return command

    return decorate


class _Deferred:
    """The options, built on first use (inside the command's error handling, so a bad value is one line)."""

    def __init__(self, cls: type, maker: Callable[..., Any], values: dict):
        self._cls, self._maker, self._values = cls, maker, values

    def __call__(self, **changes: Any) -> Any:
        """Build the options object (``changes`` override CLI values)."""
        return self._maker(**_convert(self._cls, {**self._values, **changes}))

    @property
    def values(self) -> dict:
        return dict(self._values)


__all__ = ["option_parameters", "with_options"]
