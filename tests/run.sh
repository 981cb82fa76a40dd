#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: installs what the tests need (system
# packages included), then runs lint (ruff), type checks (mypy strict, code and tests) and pytest.
# Tests that need the real tools (OpenSSH, mender-artifact, mender, mender-cli) never skip: if a tool
# is missing they fail loudly. Usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  python3-venv openssh-server openssh-client mender-client mender-artifact mender-cli
  jq mtools dosfstools fusefat iproute2 util-linux chromium
)
if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing system packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# mypy cannot follow setuptools' editable mapping finder, so give it the package as a tree of links.
rm -rf .typecheck && mkdir -p .typecheck/gapferry
for d in common connected isolated fixtures; do ln -s "../../$d" ".typecheck/gapferry/$d"; done

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (strict)"
.venv/bin/mypy -p gapferry
.venv/bin/mypy tests bench
echo "== pytest"
.venv/bin/pytest "$@"
