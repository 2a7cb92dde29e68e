"""The tool interface and `ToolBox`: argument checking, a deterministic cache, errors as a fixed observation.

A tool is any object with
    name: str                      how the model calls it ("Calculator")
    description: str               one line for the model's prompt
    parameters: dict               JSON schema of its arguments ({"type": "object", "properties": ..., "required": ...})
    call(arguments: dict) -> str   the observation (raise on failure; a value that is not a str is a failure too,
                                   counted as `not_text`, never turned into text such as "None")

`ToolBox.call(name, arguments)` checks the arguments against the schema, answers from the cache when the same
(tool, canonical arguments) was seen before (so a rerun, or a resumed run, is byte-identical and never re-queries a
drifting tool), and turns any failure into the fixed observation `TOOL_ERROR_OBSERVATION` — counted in `stats`, never
a crash (Themis, arXiv:2310.01045, inserts a fixed "error, no result" observation the same way). The cache is a JSON
file written atomically; nothing is pickled.

Time limit (`ToolBox(..., timeout_s=...)`, default None: no limit, the tool is called inline as before): each
`tool.call` must return within timeout_s seconds (preflab.loops.time_limit.call_within, the machinery of the online
judge_timeout_s). A call that does not is a tool failure like an exception: the model gets TOOL_ERROR_OBSERVATION,
counted in `stats["errors"]` and `stats["timeouts"]`, its `error` names the tool, the arguments and the limit, and it
is cached like any failure (a rerun from the cache sees the same observation; delete the cache to query it again).
The stuck call is abandoned in a background thread (Python cannot stop a thread); the rollout goes on. TRL's tool
loop (GRPOTrainer._generate) likewise feeds a raising tool's error back as its result instead of stopping the run.
A call that returns in time gives exactly what it gives inline.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from preflab.atomic_file import write_atomically
from preflab.errors import ConfigError, DataError
from preflab.loops.time_limit import call_within, checked_limit

TOOL_ERROR_OBSERVATION = "An error occurred when calling the tool; no result."


class ToolTimeoutError(Exception):
    """A tool's call() did not return within the ToolBox's timeout_s (turned into TOOL_ERROR_OBSERVATION, counted)."""

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
               "array": list}


@runtime_checkable
class Tool(Protocol):
    name: str
    description: str
    parameters: dict

    def call(self, arguments: dict) -> str: ...


@dataclass(frozen=True)
class ToolCall:
    tool: str
    arguments: dict
    observation: str
    ok: bool                 # False: the tool failed (or the call was invalid) and `observation` is the fixed text
    cached: bool
    error: str = ""          # why it failed, for logs (never shown to the model)


def validate_arguments(schema: dict, arguments: Any) -> str:
    """'' when `arguments` fit the (object) schema's properties/required/types, else the first problem found."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    props = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in arguments:
            return f"missing required argument {key!r}"
    for key, value in arguments.items():
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                return f"unknown argument {key!r} (known: {sorted(props)})"
            continue
        kind = props[key].get("type")
        expected = _JSON_TYPES.get(kind)
        if expected is not None and (not isinstance(value, expected) or (kind != "boolean"
                                                                          and isinstance(value, bool))):
            return f"argument {key!r} must be {kind}, got {type(value).__name__}"
        if "enum" in props[key] and value not in props[key]["enum"]:
            return f"argument {key!r} must be one of {props[key]['enum']}, got {value!r}"
    return ""


def _read_cache(path: Path) -> dict[str, dict]:
    """The cache file written by `ToolBox.save`; anything else is an error naming the file (never half-used)."""
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: the tool cache is not valid JSON ({err}); delete it to query the tools again.")
    bad = None if isinstance(cache, dict) else "the file is not a JSON object"
    for key, entry in cache.items() if bad is None else ():
        if not (isinstance(entry, dict) and isinstance(entry.get("observation"), str)
                and isinstance(entry.get("ok"), bool)):
            bad = f"entry {key[:80]!r} needs a text 'observation' and a true/false 'ok'"
            break
    if bad:
        raise DataError(f"{path}: not a tool cache written by ToolBox.save ({bad}); delete it to query the tools "
                        "again.")
    return cache


def cache_key(tool: str, arguments: dict) -> str:
    return json.dumps([tool, arguments], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class ToolBox:
    """Named tools + the (tool, arguments) -> observation cache; `stats` counts calls, cache hits and errors."""

    def __init__(self, tools, cache_path: str | Path | None = None, timeout_s: float | None = None):
        self.timeout_s = checked_limit(timeout_s, "ToolBox timeout_s", "None")
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if not isinstance(tool, Tool):
                raise ConfigError(f"{tool!r} is not a tool: it needs name, description, parameters and call().")
            if tool.name in self.tools:
                raise ConfigError(f"two tools are named {tool.name!r}.")
            self.tools[tool.name] = tool
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, dict] = {}
        if self.cache_path and self.cache_path.exists():
            self.cache = _read_cache(self.cache_path)
        self.stats = {"calls": 0, "cache_hits": 0, "errors": 0, "unknown_tool": 0, "bad_arguments": 0, "not_text": 0,
                      "timeouts": 0}

    def describe(self) -> str:
        """One line per tool for a prompt: name, description, argument schema."""
        return "\n".join(f"{t.name}: {t.description} Arguments: {json.dumps(t.parameters, sort_keys=True)}"
                         for t in self.tools.values())

    def call(self, name: str, arguments: Any) -> ToolCall:
        self.stats["calls"] += 1
        args = arguments if isinstance(arguments, dict) else {"_raw": arguments}
        tool = self.tools.get(name)
        if tool is None:
            self.stats["unknown_tool"] += 1
            self.stats["errors"] += 1
            return ToolCall(name, args, TOOL_ERROR_OBSERVATION, False, False, f"no tool named {name!r}")
        problem = validate_arguments(tool.parameters, arguments)
        if problem:
            self.stats["bad_arguments"] += 1
            self.stats["errors"] += 1
            return ToolCall(name, args, TOOL_ERROR_OBSERVATION, False, False, problem)
        key = cache_key(name, arguments)
        if key in self.cache:
            self.stats["cache_hits"] += 1
            hit = self.cache[key]
            if not hit["ok"]:
                self.stats["errors"] += 1
            return ToolCall(name, arguments, hit["observation"], hit["ok"], True, hit.get("error", ""))
        try:
            observation = call_within(lambda: tool.call(arguments), self.timeout_s,
                                      lambda: self._timeout_error(name, arguments), "preflab-tool-call")
            ok, error = True, ""
        except Exception as err:  # a tool failure is an observation, not a crash (counted)
            observation, ok, error = TOOL_ERROR_OBSERVATION, False, f"{type(err).__name__}: {err}"
            self.stats["errors"] += 1
            self.stats["timeouts"] += isinstance(err, ToolTimeoutError)
        if ok and not isinstance(observation, str):  # e.g. None from a call() that forgot `return`: never "None"
            error = (f"tool {name!r} returned {type(observation).__name__}, not str: call() must return the "
                     "observation as text")
            observation, ok = TOOL_ERROR_OBSERVATION, False
            self.stats["errors"] += 1
            self.stats["not_text"] += 1
        self.cache[key] = {"observation": observation, "ok": ok, "error": error}
        return ToolCall(name, arguments, observation, ok, False, error)

    def _timeout_error(self, name: str, arguments: dict) -> ToolTimeoutError:
        shown = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
        return ToolTimeoutError(f"tool {name!r} did not return within timeout_s = {self.timeout_s:g} s (arguments "
                                f"{shown[:200]}); the model gets the fixed error "
                                "observation (the call is abandoned in a background thread: Python cannot stop it)")

    def save(self) -> None:
        """Write the cache atomically (temp file + rename)."""
        if not self.cache_path:
            return
        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(self.cache, f, sort_keys=True, ensure_ascii=False)
        write_atomically(self.cache_path, write)
