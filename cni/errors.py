"""CNI errors as values: a code from the spec's table (or a plugin-specific one,
>= 100) and a message that names what failed and on which object.

Inside the agent an error travels as `CniError`; at the boundary it becomes the
spec's JSON error object and a non-zero exit status.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    # Well-known codes of the CNI spec (1 to 99 are reserved by it).
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    # tulle-cni's own codes.
    DATAPATH_FAILURE = 100  # a netlink step failed (veth, bridge, address, route)
    INTERFACE_EXISTS = 101  # the interface name is already taken
    RANGE_EXHAUSTED = 102  # no free address left in the pool
    ADDRESS_UNAVAILABLE = 103  # a requested address is taken or outside the pool
    CHECK_FAILED = 104  # CHECK found the attachment missing or changed
    STATE_FAILURE = 105  # the agent's allocation store failed


class CniError(Exception):
    """An error with its CNI code; `msg` says what failed and on which object."""

    def __init__(self, code: ErrorCode, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CniError({self.code.name}, {self.msg!r})"
