"""`PythonInterpreter`: runs model-written Python in `preflab.sandbox` (time, memory, process and output limits,
no network, a fresh unprivileged uid where the caller is root) and returns what it printed.

A run that does not finish cleanly (error, timeout, memory, killed) raises, so `ToolBox` answers with the fixed error
observation and counts it; the code never runs in the calling process.
"""
from __future__ import annotations


class PythonInterpreter:
    name = "PythonInterpreter"
    description = "Runs a Python program (no network, no files outside its folder) and returns what it printed."
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"],
                  "additionalProperties": False}

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 256, max_output_bytes: int = 10_000):
        self.timeout_s, self.memory_mb, self.max_output_bytes = timeout_s, memory_mb, max_output_bytes

    def call(self, arguments: dict) -> str:
        from preflab.sandbox import run_python

        result = run_python(arguments["code"], timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                            max_output_bytes=self.max_output_bytes)
        if result.status != "ok":
            raise RuntimeError(f"sandboxed run ended with status {result.status}: {result.stderr[-300:]}")
        return result.stdout.rstrip("\n")
