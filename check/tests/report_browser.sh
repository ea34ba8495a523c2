#!/usr/bin/env bash
# Renders a chaos report.html in headless Chromium and checks that it works offline:
#   - no console messages at all (the page logs nothing, so any message is an error);
#   - its script ran after load (body data-ready="1") and the page fetched no resources;
#   - the timeline is laid out with a real size and operation markers;
#   - a screenshot is produced (and is not a near-empty image).
# Usage: report_browser.sh REPORT.html [SCREENSHOT.png]
# Exit status: 0 ok, 1 a check failed, 2 usage error or chromium missing.
set -euo pipefail

if [[ $# -lt 1 || ! -f $1 ]]; then
    echo "usage: $0 REPORT.html [SCREENSHOT.png]" >&2
    exit 2
fi
html=$(realpath "$1")
png=${2:-${html%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "chromium is not installed (Debian: apt-get install chromium)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
    "--user-data-dir=$work/profile" --enable-logging=stderr --v=0 --window-size=1280,2000)

fail() {
    echo "report_browser: $*" >&2
    exit 1
}

timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$html" >"$work/dom.html" 2>"$work/dom.log" ||
    fail "chromium --dump-dom failed (status $?): $(tail -3 "$work/dom.log")"
timeout 120 "$browser" "${flags[@]}" "--screenshot=$png" "file://$html" >/dev/null 2>"$work/shot.log" ||
    fail "chromium --screenshot failed (status $?): $(tail -3 "$work/shot.log")"

if grep -h ':CONSOLE' "$work/dom.log" "$work/shot.log" >"$work/console.txt"; then
    fail "console messages while loading $html:"$'\n'"$(cat "$work/console.txt")"
fi

body=$(grep -o '<body[^>]*>' "$work/dom.html" | head -1) || fail "no <body> in the rendered DOM"
attr() { sed -n "s/.* $1=\"\\([^\"]*\\)\".*/\\1/p" <<<"$body"; }
[[ $(attr data-ready) == 1 ]] || fail "the page's script did not run to completion (body: $body)"
[[ $(attr data-resources) == 0 ]] || fail "the page fetched $(attr data-resources) resources; it must be self-contained"
width=$(attr data-timeline-width)
height=$(attr data-timeline-height)
drawn=$(attr data-ops-drawn)
((width >= 500 && height >= 200)) || fail "the timeline is ${width}x${height} px; expected at least 500x200"
((drawn > 0)) || fail "the timeline drew no operation markers"

[[ -s $png ]] || fail "no screenshot at $png"
size=$(stat -c %s "$png")
((size > 20000)) || fail "the screenshot $png is only $size bytes; the page looks blank"
echo "report_browser: ok: timeline ${width}x${height} px with $drawn operation markers and $(attr data-marks) note marks, no console messages, \
no fetched resources; screenshot $png ($size bytes)"
