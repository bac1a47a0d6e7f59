"""The one error type of every layer (store, ovs, netlink, ipam, cni), with its CNI code.

It lives at the ground floor so that lower layers never import from the CNI service above them.

A CniError carries the code the runtime sees. Codes below 100 are the CNI specification's own
(https://www.cni.dev/docs/spec/#error); 100 and up are ours and are listed in proto/ so the
plugin, the agent and the docs agree on them.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class Code(enum.IntEnum):
    INCOMPATIBLE_CNI_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_NETCONF = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    INTERNAL = 100
    OVS_FAILURE = 101
    STORE_FAILURE = 102
    NETLINK_FAILURE = 103
    IPAM_EXHAUSTED = 104
    NETWORK_CONFLICT = 105
    CHECK_FAILED = 106
    ALREADY_ATTACHED = 107
    REQUESTED_ADDRESS_UNAVAILABLE = 108
    DELEGATE_FAILED = 109


class CniError(Exception):
    """A failure the runtime must see as a CNI error object."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> bytes:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body).encode()
