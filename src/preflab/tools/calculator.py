"""`Calculator`: arithmetic expressions, parsed with `ast` and evaluated node by node (never `eval`).

Allowed: numbers, + - * / // % ** (exponent at most 64 in size, no integer over MAX_INT_BITS bits), unary +/-,
parentheses, and the functions
abs, round, min, max, sqrt. Anything else (names, attributes, calls to other functions, huge powers) raises, which
`ToolBox` turns into the fixed error observation. Integers print as integers; floats with up to 10 significant
digits after rounding away binary noise (0.1 + 0.2 -> 0.3).
"""
from __future__ import annotations

import ast
import math
import operator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt}
MAX_EXPONENT = 64
MAX_LENGTH = 200
MAX_INT_BITS = 10_000  # no integer (operand or result) beyond this: nested powers ((10**64)**64)**64... would hang


def evaluate_expression(expression: str) -> int | float:
    """The value of an arithmetic expression (ValueError for anything that is not plain arithmetic)."""
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"expression longer than {MAX_LENGTH} characters")
    tree = ast.parse(expression.strip(), mode="eval")
    return _eval(tree.body)


def _eval(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if (isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int)
                and left.bit_length() * abs(right) > MAX_INT_BITS):
            raise ValueError(f"the power has more than {MAX_INT_BITS} bits")
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand)))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*[_eval(a) for a in node.args])
    raise ValueError(f"not allowed in an arithmetic expression: {ast.dump(node)[:80]}")


def _bounded(value):
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"an intermediate result has more than {MAX_INT_BITS} bits")
    return value


def format_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


class Calculator:
    name = "Calculator"
    description = "Evaluates an arithmetic expression (+ - * / // % **, parentheses, abs round min max sqrt)."
    parameters = {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
                  "additionalProperties": False}

    def call(self, arguments: dict) -> str:
        return format_number(evaluate_expression(arguments["expression"]))
