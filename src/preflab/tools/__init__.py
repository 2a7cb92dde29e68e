"""Tools a model can call, behind one small interface, with a deterministic cache.

    from preflab.tools import ToolBox, Calculator, DateCalculator, PythonInterpreter
    box = ToolBox([Calculator(), DateCalculator()], cache_path="runs/x/tool_cache.json")
    box.call("Calculator", {"expression": "3 + 4 * 2"})          # ToolCall(observation="11", ok=True, ...)

Shipped tools work offline: `Calculator` (arithmetic, parsed, never eval'd), `DateCalculator` (calendar and date
arithmetic), `PythonInterpreter` (code run in `preflab.sandbox` with time and memory limits). Network tools are
opt-in plug-ins: any object with `name`, `description`, `parameters` (a JSON schema of its arguments) and
`call(arguments) -> str` can be added to a `ToolBox`. Adding a tool: see `base.Tool`.
"""
from preflab.tools.base import TOOL_ERROR_OBSERVATION, Tool, ToolBox, ToolCall, ToolTimeoutError, validate_arguments
from preflab.tools.calculator import Calculator, evaluate_expression
from preflab.tools.dates import DateCalculator
from preflab.tools.python_tool import PythonInterpreter

__all__ = ["Tool", "ToolBox", "ToolCall", "ToolTimeoutError", "TOOL_ERROR_OBSERVATION", "validate_arguments",
           "Calculator", "evaluate_expression", "DateCalculator", "PythonInterpreter"]
