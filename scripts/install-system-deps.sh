#!/usr/bin/env bash
# Install the Debian packages a purpose needs (tests or bench), if missing.
# Without root, print what is missing and carry on: the tests that need them skip.
set -euo pipefail
purpose=${1:-tests}
case "$purpose" in
  # systemd: for systemd-analyze verify of docs/deploy.md's units (works without systemd running)
  tests) packages=(procps util-linux slurm-wlm munge systemd) ;;
  bench) packages=(nginx-light wrk procps) ;;
  *) echo "usage: $0 tests|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install ${missing[*]}; tests needing them will skip" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
