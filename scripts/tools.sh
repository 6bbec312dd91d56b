#!/usr/bin/env bash
# Debian packages the tests use as real tools, installed if they are missing (as root):
# voms-clients (voms-proxy-fake makes VOMS proxies the way grid tools do), nginx (the
# dashboard's TLS front) and chromium (the browser the dashboard tests drive). Without root, says
# what is missing and carries on (those tests are then skipped, or fail under CI=true).
set -u
wanted=()
command -v voms-proxy-fake >/dev/null 2>&1 || wanted+=(voms-clients)
command -v openssl >/dev/null 2>&1 || wanted+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || wanted+=(nginx-light)
command -v chromium >/dev/null 2>&1 || wanted+=(chromium)
[ ${#wanted[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tools: missing ${wanted[*]} (apt-get install ${wanted[*]} as root); their tests are skipped"
  exit 0
fi
echo "tools: installing ${wanted[*]} (Debian packages)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${wanted[@]}" >/dev/null 2>&1 \
  || echo "tools: apt-get install ${wanted[*]} failed; their tests are skipped"
