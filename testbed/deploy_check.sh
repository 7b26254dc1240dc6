#!/usr/bin/env bash
# Checks the deployment files without a cluster or a container engine:
#   1. renders every kustomization under k8s/ with a pinned kustomize (installed into
#      <repo>/.local/bin with `go install` when missing or of another version);
#   2. validates every rendered document, and every raw manifest a kustomization lists as a
#      resource, against pinned Kubernetes API schemas, strictly (unknown fields are errors, and
#      so is a kind without a schema);
#      custom resources (the PrometheusRule) are validated, as strictly, against their
#      CustomResourceDefinitions from the pinned prometheus-operator release (a Go module);
#   3. lints the Dockerfile with hadolint, failing on any finding and on missing OCI labels;
#   4. checks the alert rules with promtool (check and unit tests, monitoring/alerts_test.yml),
#      and that the generated PrometheusRule and dashboard are up to date.
# Exits non-zero if any check fails. Usage: testbed/deploy_check.sh
set -euo pipefail

# v5.8.3 and later need Go >= 1.27.
KUSTOMIZE_VERSION=v5.8.2
# The oldest release where everything the Job uses (podFailurePolicy, podReplacementPolicy) is
# generally available, and the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.31.0 1.37.0)
# The CustomResourceDefinitions of the monitoring.coreos.com resources.
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0
HADOLINT_FLAGS=(
	--no-color --failure-threshold style --strict-labels
	--require-label org.opencontainers.image.title:text
	--require-label org.opencontainers.image.description:text
	--require-label org.opencontainers.image.source:text
	--require-label org.opencontainers.image.licenses:text
	--require-label org.opencontainers.image.version:text
)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.local/bin"
venv="$root/.venv/bin"
kustomize="$bin/kustomize"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
	echo "FAIL: $*" >&2
	failures=$((failures + 1))
}

indent() {
	sed 's/^/    /' >&2
}

for tool in "$venv/python" "$venv/kubernetes-validate" "$venv/hadolint" "$(command -v promtool || echo promtool)"; do
	if [[ ! -x "$tool" ]]; then
		echo "deploy_check: $tool is missing; run 'make venv tools' first" >&2
		exit 2
	fi
done

if [[ ! -x "$kustomize" || "$("$kustomize" version 2>/dev/null)" != "$KUSTOMIZE_VERSION" ]]; then
	echo "== installing kustomize $KUSTOMIZE_VERSION into $bin"
	mkdir -p "$bin" "$work/gobin"
	GOBIN="$work/gobin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
	mv -f "$work/gobin/kustomize" "$kustomize"
fi
echo "== kustomize $("$kustomize" version)"

operator="$(go mod download -json "$PROMETHEUS_OPERATOR" | "$venv/python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
crds=("$operator/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml")
echo "== custom resource definitions from $PROMETHEUS_OPERATOR"

# validate LABEL FILE: every custom resource of FILE against its CRD, every other document
# against every pinned Kubernetes version.
validate() {
	local label="$1" file="$2" version output status passed core="$work/core.yaml"
	if ! output="$(cd "$root" && "$venv/python" -m devtools.custom_resources "$file" "$core" "${crds[@]}" 2>&1)"; then
		fail "$label against its CustomResourceDefinitions:"
		indent <<<"$output"
		return
	fi
	[[ -z "$output" ]] || sed "s|^ok   |ok   $label: |" <<<"$output"
	[[ -s "$core" ]] || return 0
	file="$core"
	for version in "${KUBERNETES_VERSIONS[@]}"; do
		status=0
		output="$("$venv/kubernetes-validate" --strict --kubernetes-version "$version" "$file" 2>&1)" ||
			status=$?
		passed="$(grep -c ' passed for resource ' <<<"$output" || true)"
		if ((status != 0)) || grep -qE '^(WARN|ERROR)' <<<"$output" || ((passed == 0)); then
			fail "$label against Kubernetes $version:"
			indent <<<"$output"
		else
			echo "ok   $label: $passed resource(s) valid against Kubernetes $version"
		fi
	done
}

cd "$root"
mapfile -t kustomizations < <(find k8s -name kustomization.yaml -printf '%h\n' | sort)
if ((${#kustomizations[@]} == 0)); then
	fail "no kustomization found under k8s/"
fi

echo "== rendered kustomizations (strict schemas: ${KUBERNETES_VERSIONS[*]})"
for dir in "${kustomizations[@]}"; do
	rendered="$work/$(tr / _ <<<"$dir").yaml"
	if "$kustomize" build "$dir" >"$rendered" 2>"$work/kustomize.err"; then
		validate "kustomize build $dir" "$rendered"
	else
		fail "kustomize build $dir:"
		indent <"$work/kustomize.err"
	fi
done

echo "== raw manifests listed as resources"
mapfile -t manifests < <(
	"$venv/python" - "${kustomizations[@]}" <<-'EOF'
		import sys
		from pathlib import Path

		import yaml

		for directory in map(Path, sys.argv[1:]):
		    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
		    for entry in kustomization.get("resources", []):
		        path = directory / entry
		        if path.is_file():
		            print(path)
	EOF
)
if ((${#manifests[@]} == 0)); then
	fail "no raw manifest listed by the kustomizations"
fi
for manifest in "${manifests[@]}"; do
	validate "$manifest" "$manifest"
done

echo "== Dockerfile"
if output="$("$venv/hadolint" "${HADOLINT_FLAGS[@]}" Dockerfile 2>&1)"; then
	echo "ok   hadolint $("$venv/hadolint" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+'): no findings"
else
	fail "hadolint Dockerfile:"
	indent <<<"$output"
fi

echo "== alert rules and dashboard"
for check in "check rules monitoring/alerts.yml" "test rules monitoring/alerts_test.yml"; do
	# shellcheck disable=SC2086 # the words of $check are promtool's arguments
	if output="$(promtool $check 2>&1)"; then
		echo "ok   promtool $check"
	else
		fail "promtool $check:"
		indent <<<"$output"
	fi
done
if output="$("$venv/python" -m devtools.monitoring --check 2>&1)"; then
	echo "ok   k8s/monitoring/prometheusrule.yaml and monitoring/dashboard.json are up to date"
else
	fail "$output"
fi

if ((failures > 0)); then
	echo "deploy_check: $failures check(s) failed" >&2
	exit 1
fi
echo "deploy_check: all checks passed"
