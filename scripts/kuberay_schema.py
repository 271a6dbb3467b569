"""Extract the ``RayService`` OpenAPI v3 schema from KubeRay's CustomResourceDefinition.

The schema committed under ``configs/kuberay/schema/`` is what ``tests/unit/test_kuberay.py``
validates ``configs/kuberay/rayservice.yaml`` against. To move to another KubeRay release,
take the CRD from KubeRay's repository at that release's tag and run this script on it::

    git -C kuberay show v1.7.0:ray-operator/config/crd/bases/ray.io_rayservices.yaml \\
        > /tmp/ray.io_rayservices.yaml
    python scripts/kuberay_schema.py /tmp/ray.io_rayservices.yaml \\
        configs/kuberay/schema/rayservice-v1-kuberay-v1.7.0.json

then update the file name in the test and ``configs/kuberay/schema/README.md``. The schema is
kept whole (descriptions included), only re-serialised as sorted JSON so that a later
release's diff is readable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml


def extract(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version of the CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise SystemExit(f"the CRD has no version {version!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path, help="ray.io_rayservices.yaml from KubeRay")
    parser.add_argument("out", type=Path, help="where to write the JSON schema")
    parser.add_argument("--version", default="v1", help="apiVersion of ray.io (default v1)")
    args = parser.parse_args()
    crd = yaml.safe_load(args.crd.read_text(encoding="utf-8"))
    schema = extract(crd, args.version)
    args.out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
