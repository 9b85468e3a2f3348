#!/usr/bin/env bash
# tests/tracer/report_screenshot.sh: `glake-trace report` pages render in a real browser.
#
# Makes the reports of the shipped demo trace and of a PyTorch snapshot import, opens each in headless
# Chromium, waits for the page's script to mark <body data-ready="1"> (the inline JS ran without an
# error), and takes a screenshot (OUT_DIR/report-*.png, default the current directory, which is the
# build folder under meson) for a person to look at. Exit 77 (skipped) without Chromium (Debian
# package `chromium`). Usage: report_screenshot.sh GLAKE_TRACE_BIN [OUT_DIR]
set -euo pipefail
bin=${1:?usage: report_screenshot.sh GLAKE_TRACE_BIN [OUT_DIR]}
out=${2:-$PWD}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser=$(command -v "$b"); break; fi
done
if [ -z "$browser" ]; then
  echo "report_screenshot: no chromium found (apt-get install chromium): skipped"
  exit 77
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pages=()
"$bin" report "$root/tests/data/demo-trace.json.gz" -o "$out/report-demo.html"
pages+=(demo)
if command -v python3 >/dev/null 2>&1; then
  python3 "$here/make_torch_snapshot.py" "$work/snap.pickle" >/dev/null
  GLAKE_SCRIPTS="$root/scripts" "$bin" import --torch "$work/snap.pickle" -o "$work/torch.json.gz" >/dev/null
  "$bin" report "$work/torch.json.gz" -o "$out/report-torch.html"
  pages+=(torch)
fi

flags=(--headless=new --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
       --user-data-dir="$work/profile" --virtual-time-budget=5000)
status=0
for p in "${pages[@]}"; do
  html="$out/report-$p.html"
  png="$out/report-$p.png"
  dom=$(timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$html" 2>/dev/null || true)
  if ! grep -q 'data-ready="1"' <<<"$dom"; then
    echo "report_screenshot: $html: the page's script did not finish (no data-ready on <body>)"
    status=1
  fi
  rm -f "$png"
  timeout 120 "$browser" "${flags[@]}" --window-size=1200,2400 --screenshot="$png" "file://$html" >/dev/null 2>&1 || true
  size=$(stat -c %s "$png" 2>/dev/null || echo 0)
  if [ "$size" -lt 20000 ]; then
    echo "report_screenshot: $png: missing or nearly empty ($size bytes)"
    status=1
  else
    echo "report_screenshot: $png ($size bytes)"
  fi
done
exit $status
