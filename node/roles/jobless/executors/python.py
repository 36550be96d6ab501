"""Python transformations, as Seamless 1.x runs them.

The code is one of:

* a single function definition: it is called with every pin as a keyword argument;
* a one-line lambda or expression: evaluated (a lambda is called with the pins);
* anything else (a block): executed with the pins as globals; it must assign the output
  name (``result``).

Pins arrive deserialized per their celltype (``node.celltypes``); deep pins (deepcell,
deepfolder) arrive as their dict of checksums, as in Seamless (as hex strings here).
"""

from __future__ import annotations

import ast
import traceback
from typing import Any

from ....celltypes import deserialize
from ..spec import JobSpec

FILENAME = "<transformer code>"
DEEP_CELLTYPES = ("deepcell", "deepfolder")


class PythonFailure(Exception):
    """The code failed; the message (with its traceback) is meant for the user."""


def code_mode(code: str) -> tuple[str, str | None]:
    """("function", name), ("lambda", None), ("expression", None) or ("block", None)."""
    tree = ast.parse(code, filename=FILENAME)
    if len(tree.body) == 1:
        node = tree.body[0]
        if isinstance(node, ast.FunctionDef):
            return "function", node.name
        if isinstance(node, ast.Expr):
            if len(code.splitlines()) != 1:
                raise SyntaxError(
                    "no multiline expressions or lambdas, they may give indentation syntax errors"
                )
            return ("lambda" if isinstance(node.value, ast.Lambda) else "expression"), None
    return "block", None


def pin_values(spec: JobSpec) -> dict[str, Any]:
    values = {}
    for pin in spec.pins:
        celltype = "plain" if pin.celltype in DEEP_CELLTYPES else (pin.celltype or "mixed")
        values[pin.name] = deserialize(pin.data, celltype)
    return values


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of the user's code on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)
    return "".join(lines)


def run_python(spec: JobSpec) -> Any:
    """Execute the code; return the output value."""
    try:
        mode, func_name = code_mode(spec.code)
        compiled = compile(spec.code, FILENAME, "exec" if mode in ("function", "block") else "eval")
    except SyntaxError as exc:
        raise PythonFailure(f"the transformation code is not valid Python: {exc}") from None
    values = pin_values(spec)
    kwargs = {name: values[name] for name in sorted(values) if not name.endswith("_SCHEMA")}
    namespace: dict[str, Any] = {"__name__": "transformer", "__package__": "transformer"}
    namespace.update(values)
    output = spec.output_name
    try:
        if mode == "function":
            exec(compiled, namespace)
            result = namespace[func_name](**kwargs)  # type: ignore[index]
        elif mode == "lambda":
            result = eval(compiled, namespace)(**kwargs)
        elif mode == "expression":
            result = eval(compiled, namespace)
        else:
            namespace.pop(output, None)
            exec(compiled, namespace)
            if output not in namespace:
                raise PythonFailure(f"Output variable name '{output}' undefined")
            result = namespace[output]
    except PythonFailure:
        raise
    except MemoryError:
        raise
    except BaseException as exc:  # noqa: B036 - SystemExit from user code is a failure too
        raise PythonFailure(_user_traceback(exc)) from None
    if result is None:
        raise PythonFailure("Result is empty")
    return result
