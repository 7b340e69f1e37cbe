"""The two request bodies, checked field by field: a RequestError (answered 400) names the field and what it takes.

- `POST /translate` (LibreTranslate): {"q": str | [str], "source": code, "target": code, "format": "text"}; other
  LibreTranslate fields (api_key, alternatives) are accepted and ignored; "split_long": true is our extension.
- `POST /v1/translate`: {"texts": [str], "source": code, "target": code | [code per text], "num_beams": n,
  "max_new_tokens": n, "sampling": {"temperature", "top_k", "top_p", "seed"}, "split_long": bool}.
"""

from __future__ import annotations

from dataclasses import dataclass

from nllb_neuronx.engine_api import SamplingParams
from nllb_neuronx.serve.service import RequestError, TranslationOptions

V1_FIELDS = ("texts", "source", "target", "num_beams", "max_new_tokens", "sampling", "split_long")
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed")


@dataclass(frozen=True)
class TranslateCall:
    texts: list[str]
    source: str
    target: str | list[str]
    options: TranslationOptions
    single: bool = False          # LibreTranslate's q was one string: answer one string


def parse_libretranslate(body) -> TranslateCall:
    body = _object(body, "the request body")
    q = _required(body, "q")
    if isinstance(q, str):
        texts, single = [q], True
    else:
        texts, single = _strings(q, "q"), False
    source, target = _code(body, "source"), _code(body, "target")
    if source == "auto":
        raise RequestError("source \"auto\" (language detection) is not supported: give the source language code")
    fmt = body.get("format", "text")
    if fmt != "text":
        raise RequestError(f"format {fmt!r} is not supported: only \"text\"")
    return TranslateCall(texts, source, target, TranslationOptions(split_long=_bool(body, "split_long")), single)


def parse_v1(body) -> TranslateCall:
    body = _object(body, "the request body")
    unknown = sorted(set(body) - set(V1_FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(V1_FIELDS)}")
    texts = _strings(_required(body, "texts"), "texts")
    target = _required(body, "target")
    if not isinstance(target, str):
        target = _strings(target, "target")
    options = TranslationOptions(num_beams=_int(body, "num_beams", 1), max_new_tokens=_int(body, "max_new_tokens"),
                                 sampling=_sampling(body.get("sampling")), split_long=_bool(body, "split_long"))
    return TranslateCall(texts, _code(body, "source"), target, options)


def _sampling(value) -> SamplingParams | None:
    if value is None:
        return None
    value = _object(value, "sampling")
    unknown = sorted(set(value) - set(SAMPLING_FIELDS))
    if unknown:
        raise RequestError(f"unknown sampling field(s) {', '.join(map(repr, unknown))}; known: "
                           f"{', '.join(SAMPLING_FIELDS)}")
    try:
        params = SamplingParams(temperature=_number(value, "temperature", 1.0, "sampling."),
                                top_k=_int(value, "top_k", 0, "sampling."),
                                top_p=_number(value, "top_p", 1.0, "sampling."),
                                seed=_int(value, "seed", None, "sampling."))
    except ValueError as e:  # SamplingParams checks its ranges
        raise RequestError(f"sampling.{e}") from None
    return params


def _object(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(f"{name} must be a JSON object, got {_kind(value)}")
    return value


def _required(body: dict, name: str):
    if body.get(name) is None:
        raise RequestError(f"missing field {name!r}")
    return body[name]


def _strings(value, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"{name} must be a list of strings, got {_kind(value)}")
    return value


def _code(body: dict, name: str) -> str:
    value = _required(body, name)
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a language code string, got {_kind(value)}")
    return value


def _int(body: dict, name: str, default=None, prefix: str = ""):
    value = body.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"{prefix}{name} must be an integer, got {_kind(value)}")
    return value


def _number(body: dict, name: str, default: float, prefix: str = "") -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{prefix}{name} must be a number, got {_kind(value)}")
    return float(value)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {_kind(value)}")
    return value


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
