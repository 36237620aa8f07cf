"""Which pods get transparent capture, and installing it in their network namespace
(istio-cni's job, done by the agent during CNI ADD; the rules are `cni.capture`'s).

Rules:
- A pod is meshed when its annotation `sidecar.tulle.io/inject` is "true", or its
  namespace carries the label `tulle-injection: enabled` and the pod does not opt out
  (`sidecar.tulle.io/inject: "false"`), as Istio's `istio-injection` label works.
- Its `traffic.tulle.io/*` annotations shape the capture (`cni.capture.CaptureConfig`).
  They are validated before anything is installed: a malformed one fails the ADD with
  an error naming it, and nothing is left behind.
- The capture table is installed in the pod's namespace before ADD returns, so the
  pod's first packet is already captured: the app can never talk past its sidecar.
  A pod's namespace dies with the pod, and its table with it: DEL removes nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cni.capture import CaptureConfig, capture_ruleset
from netpolicy.applier import NftApplier

INJECT_ANNOTATION: Final = "sidecar.tulle.io/inject"
INJECTION_LABEL: Final = "tulle-injection"
# The Pod annotations the control plane forwards to agents (control.xds.mesh has the same).
MESH_ANNOTATION_PREFIXES: Final = ("sidecar.tulle.io/", "traffic.tulle.io/")


def capture_config(annotations: Mapping[str, str], namespace_labels: Mapping[str, str]) -> CaptureConfig | None:
    """The pod's capture, None when it is not meshed; raises `cni.capture.CaptureConfigError`
    naming a malformed annotation."""
    inject = annotations.get(INJECT_ANNOTATION, "").strip().lower()
    if inject == "false":
        return None
    if inject != "true" and namespace_labels.get(INJECTION_LABEL) != "enabled":
        return None
    return CaptureConfig.from_annotations(annotations)


def install_capture(netns: str, config: CaptureConfig) -> None:
    """Installs (or replaces) the capture table in `netns` (a path or a /run/netns name), atomically."""
    NftApplier(netns).apply(capture_ruleset(config))
