"""Checks for the names users give: model names, versions, tags, device ids."""

from __future__ import annotations

import re

from controller.errors import InvalidRequestError
from firmware_bundles.errors import WireError
from firmware_bundles.wire import check_device_id

# The same rule the manifest applies to bundle names and versions.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise InvalidRequestError(
            f"invalid {what} {value[:140]!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_device(value: str) -> str:
    try:
        return check_device_id(value)
    except WireError as exc:
        raise InvalidRequestError(str(exc)) from None
