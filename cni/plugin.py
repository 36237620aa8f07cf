"""Entry point of `tulle-cni`, the CNI plugin executable.

A thin client: it answers VERSION itself and hands every other verb — the
`CNI_*` environment and the configuration on stdin, untouched — to tulle-agent
over its unix socket (`agentSocket` in the configuration, else
/run/tulle/agent.sock), then prints the agent's answer and exits with its
status. The agent validates, allocates and programs the kernel; this process
only pays for an interpreter start, so it imports nothing beyond the standard
library and `cni.wire`.

When the agent cannot be reached: ADD, DEL, CHECK and GC fail with code 11 (try
again later: the runtime retries), STATUS with code 50 (plugin not available).
"""

from __future__ import annotations

import json
import os
import sys

from cni.wire import CURRENT_VERSION, DEFAULT_AGENT_SOCKET, SUPPORTED_VERSIONS, call

# Values of cni.errors.ErrorCode, repeated here to keep this module import-light.
_TRY_AGAIN_LATER = 11
_DECODE_FAILURE = 6
_NOT_AVAILABLE = 50
_IO_FAILURE = 5


def _error(version: str, code: int, msg: str) -> int:
    sys.stdout.write(json.dumps({"cniVersion": version, "code": code, "msg": msg}))
    return 1


def handle() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    stdin = sys.stdin.buffer.read()
    if command == "VERSION":
        sys.stdout.write(json.dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}))
        return 0
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        return _error(CURRENT_VERSION, _DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {exc}")
    if not isinstance(config, dict):
        config = {}
    version = config.get("cniVersion")
    version = version if version in SUPPORTED_VERSIONS else CURRENT_VERSION
    path = config.get("agentSocket") or DEFAULT_AGENT_SOCKET
    env = {key: value for key, value in os.environ.items() if key.startswith("CNI_")}
    try:
        reply = call(str(path), {"op": "cni", "env": env, "stdin": stdin.decode("utf-8", "replace")})
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        code = _NOT_AVAILABLE if command == "STATUS" else _TRY_AGAIN_LATER
        return _error(version, code, f"tulle-agent is not reachable at {path}: {why}")
    try:
        stdout, status = str(reply["stdout"]), int(reply["exit"])
    except (KeyError, TypeError, ValueError):
        return _error(version, _IO_FAILURE, f"tulle-agent at {path} sent an unexpected reply: {str(reply)[:200]}")
    sys.stdout.write(stdout)
    return status


def main() -> None:
    """Runs the plugin and exits without the interpreter's teardown: a few ms per
    call that buy nothing, as the process holds nothing needing a clean close."""
    status = handle()
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
