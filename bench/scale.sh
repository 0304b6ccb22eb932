#!/usr/bin/env bash
# Does diskseal's time grow linearly with the size, and does its memory stay flat? Encrypts
# random images of several sizes in place (datashift with the header at the start, and checksum
# with a detached header) and prints seconds, MiB/s and peak RSS for each, with dd over the same
# image for scale. Usage: bench/scale.sh [DIR=build] [SIZES_MIB="256 1024 4096 8192"]
# (needs about twice the largest size free in DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$PWD/build}
SIZES=${2:-256 1024 4096 8192}
DS=${DISKSEAL:-$PWD/build/diskseal}
[ -x "$DS" ] || scripts/build >/dev/null
FAST=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
work=$(mktemp -d "$DIR/diskseal-scale-XXXXXX")
trap 'rm -rf "$work"' EXIT
printf 'k' > "$work/key"
printf '%-10s %-10s %8s %9s %10s\n' MiB case seconds "MiB/s" "peak RSS"
for size in $SIZES; do
  head -c "${size}M" /dev/urandom > "$work/orig"
  run() {  # name cmd...
    local name=$1; shift
    /usr/bin/time -o "$work/time" -f '%e %M' "$@" >/dev/null 2>&1 || { echo "$name failed" >&2; exit 1; }
    read -r s rss < "$work/time"
    awk -v z="$size" -v n="$name" -v s="$s" -v r="$rss" \
      'BEGIN{printf "%-10d %-10s %8.2f %9.0f %7.1f MiB\n", z, n, s, z/s, r/1024}'
  }
  cp "$work/orig" "$work/img"; sync
  run dd dd if="$work/img" of="$work/img" bs=16M conv=notrunc,fdatasync
  cp "$work/orig" "$work/img"; truncate -s +32M "$work/img"; sync
  run datashift "$DS" encrypt "$work/img" --reduce-device-size 32M -d "$work/key" "${FAST[@]}"
  cp "$work/orig" "$work/img"; rm -f "$work/hdr"; sync
  run checksum "$DS" encrypt "$work/img" --header "$work/hdr" -d "$work/key" "${FAST[@]}"
  rm -f "$work/img" "$work/hdr"
done
