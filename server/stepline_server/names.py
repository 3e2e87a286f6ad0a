"""How a function is named: `<app_id>:<function_id>`, its full name.

An app declares its functions by ids of its own (FunctionConfig.id), unique within the app. The
server keys functions by full name: the store's function_id columns, the engine, the client
services, the CLI and the dashboard all speak full names, so two apps may use the same id without
touching each other's functions. Only an app's own worker stream speaks its bare ids (Hello,
Dispatch, Ops: dispatch/convert.py translates), and step.invoke takes either. App ids hold no
':' (limits.APP_ID_PATTERN), so the first ':' of a full name ends its app id.
"""

from __future__ import annotations

from stepline_server.errors import InvalidArgument
from stepline_server.limits import MAX_ID_LENGTH, check_app_id, check_function_id

SEPARATOR = ":"
MAX_FULL_NAME_LENGTH = 2 * MAX_ID_LENGTH + 1


def full_name(app_id: str, function_id: str) -> str:
    return f"{app_id}{SEPARATOR}{function_id}"


def split(name: str) -> tuple[str, str]:
    """A full name's app id and function id."""
    app_id, _, function_id = name.partition(SEPARATOR)
    return app_id, function_id


def local_id(name: str) -> str:
    """A full name's function id, as its app declared it."""
    return split(name)[1]


def is_full(name: str) -> bool:
    return SEPARATOR in name


def invoked(reference: str, field: str, *, app_id: str) -> str:
    """The full name of the function a step of app `app_id` invokes: "fn" is one of the caller's
    own app, "other-app:fn" one of any app."""
    if not is_full(reference):
        check_function_id(reference, field)
        return full_name(app_id, reference)
    other_app, function_id = split(reference)
    check_app_id(other_app, field)
    check_function_id(function_id, field)
    return reference


def check_full_name(name: str, field: str) -> None:
    """A full name a client gives to find a function (a filter, a URL). Its parts are not held
    to the id rules: a name stored before they tightened still finds its function."""
    app_id, function_id = split(name)
    if not app_id or not function_id or len(name) > MAX_FULL_NAME_LENGTH:
        raise InvalidArgument(field, f"{name[:80]!r} is not a function's full name "
                                     f"<app_id>{SEPARATOR}<function_id> (at most "
                                     f"{MAX_FULL_NAME_LENGTH} characters)")


def bare_id_error(function_id: str, field: str, matches: list[str]) -> InvalidArgument:
    """A function named by its bare id where a full name is needed: say which names have it."""
    found = (f"functions with that id: {', '.join(matches)}" if matches
             else "no registered function has that id")
    return InvalidArgument(field, f"{function_id[:80]!r} is not a function's full name: name a "
                                  f"function <app_id>{SEPARATOR}<function_id>; {found}")
