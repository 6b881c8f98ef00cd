"""
Tox results: the JSON report C{tox --result-json} writes and C{devpi test}
posts for a release file (tox 3's C{ResultLog} and tox 4's C{Journal}).

Only the shape is checked: an object with an object of test environments,
and the fields tox writes of the types it writes them (unknown fields are
kept, plugins add their own).  The document is stored as it was sent.
"""

from __future__ import annotations

from .errors import InvalidInput, TooLarge
from .values import json_type

#: The largest tox result stored, whatever the body's Content-Type (the
#: site's cap on JSON bodies is usually the smaller one).
MAX_SIZE = 10 * 1024 * 1024

#: Top-level fields and the types tox writes them with.
_TOP = {
    "reportversion": (str,),
    "toxversion": (str,),
    "platform": (str,),
    "host": (str,),
    "installpkg": (dict,),  # tox 3
    "commands": (list,),  # tox 3
}
#: Fields of one test environment.
_ENV = {
    "name": (str,),
    "python": (dict,),
    "installpkg": (dict,),
    "installed_packages": (list,),
    "result": (dict,),  # tox 4
    "test": (list,),
    "setup": (list,),
}
#: Fields of one command run (C{test} and C{setup} entries): tox 3 writes
#: the exit code as a string, tox 4 as a number.
_STEP = {
    "command": (list,),
    "output": (str,),
    "err": (str,),
    "retcode": (int, str),
}
_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number"}


def _label(name: str) -> str:
    """
    A name from the document as a message shows it: quoted, on one line,
    not too long.
    """
    shown = repr(name)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _check_fields(where: str, value: dict, types: dict) -> None:
    for key, allowed in types.items():
        if key not in value:
            continue
        field = value[key]
        if isinstance(field, bool) or not isinstance(field, allowed):
            wanted = " or ".join(_NAMES[t] for t in allowed)
            path = f"{where}[{key!r}]" if where else repr(key)
            raise InvalidInput(f"tox result: {path} must be {wanted}, got {json_type(field)}")


def check_size(size: int, limit: int = MAX_SIZE) -> None:
    """
    @raise TooLarge: a tox result of C{size} bytes is more than C{limit}.
    """
    if size > limit:
        raise TooLarge(f"tox result too large: {size} bytes, the limit is {limit} bytes")


def check_toxresult(data: object) -> None:
    """
    Check that C{data} (parsed JSON) is shaped like a tox result.

    @raise InvalidInput: naming the first thing that is not.
    """
    if not isinstance(data, dict):
        raise InvalidInput(f"tox result must be a JSON object, got {json_type(data)}")
    if "testenvs" not in data:
        raise InvalidInput("tox result has no 'testenvs'")
    _check_fields("", data, {**_TOP, "testenvs": (dict,)})
    for name, env in data["testenvs"].items():
        where = f"testenvs[{_label(name)}]"
        if not isinstance(env, dict):
            raise InvalidInput(f"tox result: {where} must be an object, got {json_type(env)}")
        _check_fields(where, env, _ENV)
        for kind in ("setup", "test"):
            for number, step in enumerate(env.get(kind, ())):
                step_where = f"{where}[{kind!r}][{number}]"
                if not isinstance(step, dict):
                    raise InvalidInput(f"tox result: {step_where} must be an object, got {json_type(step)}")
                _check_fields(step_where, step, _STEP)
