"""``podnet patch KIND NAME -p JSON|YAML``: a JSON merge patch, like ``kubectl patch --type merge``.

The seed article's IPIP tuning, on an existing pool:
``podnet patch ippool default-ipv4-ippool -p '{"spec": {"ipipMode": "CrossSubnet", "natOutgoing": true}}'``
"""

from __future__ import annotations

import argparse

from podnet.errors import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind")
    parser.add_argument("name")
    parser.add_argument("-p", "--patch", required=True, help="merge patch as JSON or YAML")
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("--type", choices=["merge"], default="merge")


def parse_patch(text: str) -> dict:
    import yaml

    try:
        patch = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ValidationError([("patch", f"not valid JSON or YAML: {exc}")]) from None
    except RecursionError:  # PyYAML recurses per nesting level
        raise ValidationError([("patch", "not valid JSON or YAML: nested too deeply")]) from None
    if not isinstance(patch, dict):
        raise ValidationError([("patch", "must be an object, e.g. '{\"spec\": {...}}'")])
    return patch


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import resource_store
    from podnet.model import lookup

    rtype = lookup(args.kind)
    resource = resource_store(args).patch(rtype, args.name, parse_patch(args.patch), args.namespace)
    print(f"{rtype.plural}/{resource.metadata.name} patched")
    return 0
