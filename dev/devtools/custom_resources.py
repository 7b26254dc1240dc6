"""Validates custom resources (a ``PrometheusRule``) against their CustomResourceDefinitions.

Kubernetes' own schemas know no custom kinds, so ``testbed/deploy_check.sh`` hands each rendered
file to this first: the documents of a kind one of the given CRDs defines are checked against
that CRD's OpenAPI schema, strictly (a field the schema does not name is an error, as with
``kubectl apply --validate=strict``); the other documents are written to ``rest`` for the
Kubernetes schemas.

Usage: ``python -m devtools.custom_resources RENDERED REST CRD.yaml [CRD.yaml ...]``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists the known ones."""
    out = {key: value for key, value in schema.items() if not key.startswith("x-kubernetes")}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def schemas(crds: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of that version, for every CRD given."""
    found = {}
    for path in crds:
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = _METADATA
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            api_version = f"{spec['group']}/{version['name']}"
            found[api_version, spec["names"]["kind"]] = schema
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write(f"{__doc__}\n")
        return 2
    rendered, rest, *crds = map(Path, argv)
    known = schemas(crds)
    others: list[Any] = []
    failures = 0
    for document in yaml.safe_load_all(rendered.read_text()):
        if not document:
            continue
        key = (str(document.get("apiVersion")), str(document.get("kind")))
        schema = known.get(key)
        if schema is None:
            others.append(document)
            continue
        name = f"{key[1]} {document.get('metadata', {}).get('name')}"
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: e.json_path
        )
        for error in errors:
            sys.stderr.write(f"{name}: {error.json_path}: {error.message}\n")
        if errors:
            failures += 1
        else:
            sys.stdout.write(
                f"ok   {name}: valid against its CustomResourceDefinition ({key[0]})\n"
            )
    rest.write_text(yaml.safe_dump_all(others, sort_keys=False) if others else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
