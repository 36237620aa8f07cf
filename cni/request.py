"""One CNI invocation as the agent receives it: the `CNI_*` environment and the
network configuration from stdin, validated into a `CniRequest`.

Rules (spec 1.1, "Parameters"):
- stdin that is not JSON fails with code 6; a bad configuration with 1, 2 or 7
  (see `cni.netconf`); a missing or malformed environment variable with 4.
- ADD and CHECK need CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME; DEL needs the
  container ID and interface name, and tolerates an empty CNI_NETNS (containerd's
  second DEL); GC and STATUS need neither.
- CNI_ARGS is `K=V;K=V`. tulle-cni reads IP (a requested address, as host-local
  does) and K8S_POD_NAMESPACE/K8S_POD_NAME (the pod's identity); other keys are
  ignored, as every runtime sends its own.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cni.errors import CniError, ErrorCode
from cni.netconf import NAME_RE, NetConf, load_netconf, parse_requested_ip, valid_ifname
from cni.wire import CURRENT_VERSION, SUPPORTED_VERSIONS

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")


@dataclass(frozen=True)
class CniRequest:
    command: str
    config: NetConf
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] | None = None
    requested_ips: tuple[ipaddress.IPv4Address, ...] = ()

    @property
    def pod_namespace(self) -> str:
        return (self.args or {}).get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return (self.args or {}).get("K8S_POD_NAME", "")


def decode_config(stdin: str | bytes) -> Any:
    try:
        return json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ErrorCode.DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {exc}") from None


def reply_version(decoded: Any) -> str:
    """The version an error or result should be written in: the caller's if usable."""
    if isinstance(decoded, dict) and decoded.get("cniVersion") in SUPPORTED_VERSIONS:
        return str(decoded["cniVersion"])
    return CURRENT_VERSION


def parse_request(env: Mapping[str, str], decoded: Any) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise _env("CNI_COMMAND", f"{command!r} is not one of " + ", ".join(COMMANDS))
    if command == "VERSION":
        raise CniError(ErrorCode.INVALID_ENVIRONMENT, "VERSION is answered by the plugin, not the agent")
    config = load_netconf(decoded)
    if command in ("GC", "STATUS"):
        return CniRequest(command=command, config=config)
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id:
        raise _env("CNI_CONTAINERID", "missing")
    if not NAME_RE.match(container_id):
        raise _env("CNI_CONTAINERID", f"{container_id!r} must start with a letter or digit and hold only letters, digits, '_', '.', '-'")
    ifname = env.get("CNI_IFNAME", "")
    if not valid_ifname(ifname):
        raise _env("CNI_IFNAME", f"{ifname!r} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise _env("CNI_NETNS", "missing")
    if command == "CHECK" and config.prev_result is None:
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, "prevResult: CHECK needs the result of the ADD")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    requested = list(config.runtime_ips)
    if "IP" in args:
        for i, raw in enumerate(args["IP"].split(",")):
            requested.append(parse_requested_ip(raw.strip(), f"CNI_ARGS IP[{i}]"))
    return CniRequest(
        command=command,
        config=config,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=args,
        requested_ips=tuple(dict.fromkeys(requested)),
    )


def parse_cni_args(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise _env("CNI_ARGS", f"{part!r} is not KEY=VALUE")
        out[key] = value
    return out


def _env(name: str, why: str) -> CniError:
    return CniError(ErrorCode.INVALID_ENVIRONMENT, f"{name}: {why}")
