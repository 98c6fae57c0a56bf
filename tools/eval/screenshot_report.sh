#!/usr/bin/env bash
# Renders a run's report.html in headless Chromium (Debian package `chromium`) to a PNG, to check
# that the page displays. Usage: tools/eval/screenshot_report.sh RUN_DIR [OUT.png]
set -euo pipefail
RUN=$(cd "$1" && pwd)
OUT=${2:-$RUN/report-screenshot.png}
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1280,3000 --screenshot="$OUT" "file://$RUN/report.html" 2>/dev/null
echo "$OUT"
