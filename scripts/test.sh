#!/usr/bin/env bash
# Install everything the tests need, system packages included, then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k training`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser test drives Debian's chromium; Playwright's own browser download is never used.
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends chromium
fi

python -m pip install --quiet -r requirements-dev.txt
python -m pytest "$@"
