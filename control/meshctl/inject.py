"""`meshctl inject -f FILE|-`: adds the tulle-proxy sidecar to the pods in manifests
(`control.inject`, as `istioctl kube-inject` does) and writes the result as YAML to
standard output. Documents keep their order; those without a pod pass through as they
are; running it on its own output changes nothing. It reads and writes files only: the
control plane is not contacted.
"""

from __future__ import annotations

import click
import yaml

from control.inject import InjectionConfig, InjectionError, inject
from control.meshctl.manifests import ManifestError, read_manifests


@click.command("inject")
@click.option("-f", "--filename", "sources", multiple=True, required=True,
              help="Manifest file or directory ('-' for standard input); repeatable.")
@click.option("--image", default=InjectionConfig().image, show_default=True, help="The sidecar's image.")
@click.option("--agent-socket-dir", default=InjectionConfig().agent_socket_dir, show_default=True,
              help="The node agent's socket directory (mounted into the sidecar).")
def inject_command(sources: tuple[str, ...], image: str, agent_socket_dir: str) -> None:
    """Add the tulle-proxy sidecar to Pods and workload templates (YAML to stdout)."""
    try:
        documents = read_manifests(sources)
        injected = inject(documents, InjectionConfig(image=image, agent_socket_dir=agent_socket_dir))
    except (ManifestError, InjectionError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(yaml.safe_dump_all(injected, sort_keys=False, default_flow_style=False), nl=False)
