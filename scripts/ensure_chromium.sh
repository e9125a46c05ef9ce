#!/usr/bin/env bash
# The browser test drives Debian's Chromium; install it when missing and we are allowed to.
# Without it, that test skips and says why.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/ensure_chromium.log 2>&1 \
    || echo "could not install chromium (see /tmp/ensure_chromium.log); the browser test will skip"
else
  echo "chromium not found and not root: the browser test will skip"
fi
exit 0
