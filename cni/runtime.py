"""Calling CNI plugins the way a container runtime does (libcni's semantics), so
that the lab, the tests and the benchmark drive tulle-cni exactly as podman,
containerd or CRI-O would.

Rules (libcni, spec 1.1 "Network configuration lists"):
- A network is a conflist: `name`, `cniVersion`, `plugins` (each with `type`).
  From a config dir, the first `*.conflist`/`*.conf`/`*.json` file in lexical
  order is used (or the one whose `name` is asked for).
- Each plugin receives its own object with the list's `name` and `cniVersion`
  injected, `prevResult` set to the previous plugin's result (ADD) or to the
  cached result of the ADD (DEL, CHECK), and `runtimeConfig` holding only the
  capability arguments the plugin declares in `capabilities`.
- ADD runs the plugins in order, DEL in reverse order; a DEL runs every plugin
  even when one fails and reports the first error. ADD's final result is cached
  per (network, container, interface) and deleted by a successful DEL.
- The runtime, not the plugin, cleans up after a failed ADD: callers call
  `delete` (the lab does).
- GC (1.1.0): attachments cached but not listed as valid are DELeted, then every
  plugin gets GC with `cni.dev/valid-attachments`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.errors import CniError, ErrorCode

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False

    @classmethod
    def from_json(cls, data: Any, source: str = "conflist") -> NetworkConfigList:
        if not isinstance(data, dict):
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{source}: expected a JSON object")
        if "plugins" not in data and "type" in data:
            # A single-plugin .conf file is a list of one.
            data = {"name": data.get("name"), "cniVersion": data.get("cniVersion"), "plugins": [data]}
        for key in ("name", "cniVersion"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{source}: {key}: missing; expected a string")
        plugins = data.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{source}: plugins: expected a non-empty list")
        for i, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
                raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"{source}: plugins[{i}].type: missing; expected a string")
        return cls(
            name=data["name"],
            cni_version=data["cniVersion"],
            plugins=tuple(plugins),
            disable_check=bool(data.get("disableCheck", False)),
            disable_gc=bool(data.get("disableGC", False)),
        )


def load_conflist(path: Path) -> NetworkConfigList:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"cannot read network config {path}: {exc}") from None
    return NetworkConfigList.from_json(data, str(path))


def load_from_dir(config_dir: Path, name: str | None = None) -> NetworkConfigList:
    """The network of a config dir: the named one, or the first file's."""
    files = sorted(p for p in config_dir.iterdir() if p.suffix in CONFIG_SUFFIXES) if config_dir.is_dir() else []
    for path in files:
        net = load_conflist(path)
        if name is None or net.name == name:
            return net
    wanted = f"network {name!r}" if name else "any network configuration"
    raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"no {wanted} in {config_dir}")


@dataclass(frozen=True)
class RuntimeConf:
    """Per-attachment arguments: what a runtime knows about the container."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)


class PluginError(CniError):
    """A plugin's error answer, with the plugin's type."""

    def __init__(self, plugin: str, code: int, msg: str, details: str = "") -> None:
        try:
            error_code = ErrorCode(code)
        except ValueError:
            error_code = ErrorCode.DATAPATH_FAILURE
        super().__init__(error_code, f"{plugin}: {msg}", details)
        self.plugin = plugin
        self.raw_code = code


class CniRuntime:
    def __init__(
        self,
        plugin_dirs: Sequence[str],
        cache_dir: Path,
        netns: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        """`netns`: the node namespace (a path) plugins run in, as a kubelet runs
        them on its node; plugins such as portmap change the namespace they run in."""
        self.plugin_dirs = list(plugin_dirs)
        self.cache_dir = cache_dir
        self.netns = netns
        self.timeout = timeout

    # -- verbs ---------------------------------------------------------------

    def add(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in net.plugins:
            prev = self._exec("ADD", net, plugin, rt, prev)
        assert prev is not None
        self._cache_write(net, rt, prev)
        return prev

    def delete(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        cached = self.cached_result(net, rt)
        first_error: CniError | None = None
        for plugin in reversed(net.plugins):
            try:
                self._exec("DEL", net, plugin, rt, cached)
            except CniError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        self._cache_path(net, rt).unlink(missing_ok=True)

    def check(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        if net.disable_check:
            return
        cached = self.cached_result(net, rt)
        if cached is None:
            raise CniError(ErrorCode.UNKNOWN_CONTAINER, f"no cached ADD result for {rt.container_id}/{rt.ifname} on {net.name}")
        for plugin in net.plugins:
            self._exec("CHECK", net, plugin, rt, cached)

    def gc(self, net: NetworkConfigList, valid: Iterable[tuple[str, str]]) -> None:
        keep = set(valid)
        for rt in self.cached_attachments(net):
            if (rt.container_id, rt.ifname) not in keep:
                self.delete(net, rt)
        if net.disable_gc:
            return
        attachments = [{"containerID": c, "ifname": i} for c, i in sorted(keep)]
        for plugin in net.plugins:
            conf = {**plugin, "name": net.name, "cniVersion": net.cni_version,
                    "cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}
            self._run(str(plugin["type"]), {"CNI_COMMAND": "GC", "CNI_PATH": self._cni_path()}, conf)

    def status(self, net: NetworkConfigList) -> None:
        for plugin in net.plugins:
            conf = {**plugin, "name": net.name, "cniVersion": net.cni_version}
            self._run(str(plugin["type"]), {"CNI_COMMAND": "STATUS", "CNI_PATH": self._cni_path()}, conf)

    def version(self, plugin_type: str) -> dict[str, Any]:
        out = self._run(plugin_type, {"CNI_COMMAND": "VERSION", "CNI_PATH": self._cni_path()}, {"cniVersion": "1.1.0"})
        assert out is not None
        return out

    # -- result cache ----------------------------------------------------------

    def cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._cache_path(net, rt).read_text())
        except FileNotFoundError:
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None

    def cached_attachments(self, net: NetworkConfigList) -> list[RuntimeConf]:
        """Every attachment of `net` with a cached ADD result, with the arguments
        its ADD was given (a stale attachment is DELeted with them, as libcni does)."""
        out = []
        if self.cache_dir.is_dir():
            for path in sorted(self.cache_dir.glob(f"{net.name}-*")):
                try:
                    entry = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if entry.get("networkName") == net.name:
                    out.append(
                        RuntimeConf(
                            container_id=entry["containerId"],
                            netns=entry.get("netns", ""),
                            ifname=entry["ifName"],
                            args=tuple((str(k), str(v)) for k, v in entry.get("cniArgs", [])),
                            capability_args=dict(entry.get("capabilityArgs", {})),
                        )
                    )
        return out

    def _cache_path(self, net: NetworkConfigList, rt: RuntimeConf) -> Path:
        return self.cache_dir / f"{net.name}-{rt.container_id}-{rt.ifname}"

    def _cache_write(self, net: NetworkConfigList, rt: RuntimeConf, result: dict[str, Any]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "ifName": rt.ifname,
            "networkName": net.name,
            "netns": rt.netns,
            "cniArgs": [list(a) for a in rt.args],
            "capabilityArgs": dict(rt.capability_args),
            "result": result,
        }
        path = self._cache_path(net, rt)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(entry, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    # -- executing plugins -------------------------------------------------------

    def _exec(
        self,
        command: str,
        net: NetworkConfigList,
        plugin: Mapping[str, Any],
        rt: RuntimeConf,
        prev: dict[str, Any] | None,
    ) -> dict[str, Any]:
        conf: dict[str, Any] = {**plugin, "name": net.name, "cniVersion": net.cni_version}
        if prev is not None:
            conf["prevResult"] = prev
        capabilities = plugin.get("capabilities") or {}
        runtime_config = {k: v for k, v in rt.capability_args.items() if capabilities.get(k)}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": rt.container_id,
            "CNI_NETNS": rt.netns,
            "CNI_IFNAME": rt.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in rt.args),
            "CNI_PATH": self._cni_path(),
        }
        out = self._run(str(plugin["type"]), env, conf)
        if command == "ADD":
            if out is None:
                raise PluginError(str(plugin["type"]), int(ErrorCode.DECODE_FAILURE), "ADD returned no result")
            return out
        return prev or {}

    def _run(self, plugin_type: str, env: Mapping[str, str], conf: Mapping[str, Any]) -> dict[str, Any] | None:
        path = self._find(plugin_type)
        argv = ["nsenter", f"--net={self.netns}", "--", path] if self.netns else [path]
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
        try:
            done = subprocess.run(
                argv, input=json.dumps(conf).encode(), env=full_env, capture_output=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            raise PluginError(plugin_type, int(ErrorCode.TRY_AGAIN_LATER), f"{env['CNI_COMMAND']} timed out after {self.timeout}s") from None
        stdout = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0:
            try:
                err = json.loads(stdout)
                raise PluginError(plugin_type, int(err.get("code", 999)), str(err.get("msg", "")), str(err.get("details", "")))
            except (ValueError, AttributeError):
                raise PluginError(
                    plugin_type, 999, f"{env['CNI_COMMAND']} exited {done.returncode}: {stdout or done.stderr.decode(errors='replace').strip()}"
                ) from None
        if not stdout:
            return None
        try:
            out = json.loads(stdout)
        except ValueError:
            raise PluginError(plugin_type, int(ErrorCode.DECODE_FAILURE), f"output is not JSON: {stdout[:200]!r}") from None
        return out if isinstance(out, dict) else None

    def _find(self, plugin_type: str) -> str:
        for directory in self.plugin_dirs:
            candidate = os.path.join(directory, plugin_type)
            if os.access(candidate, os.X_OK):
                return candidate
        raise CniError(ErrorCode.INVALID_NETWORK_CONFIG, f"plugin {plugin_type!r} not found in {os.pathsep.join(self.plugin_dirs)}")

    def _cni_path(self) -> str:
        return os.pathsep.join(self.plugin_dirs)
