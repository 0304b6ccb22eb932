#!/usr/bin/env bash
# In-place encryption benchmark, everything in one invocation on the same random image:
#   dd over itself (the floor), cryptsetup's offline encrypt in each crash-safe mode (datashift
#   with the header at the start, checksum and journal with a detached one), and every diskseal
#   mode (the same). Prints seconds, the ratio to dd and to cryptsetup's fastest crash-safe mode,
#   and peak RSS. Usage: bench/engine.sh [SIZE_MIB=1024] [DIR...]  (default dirs: /dev/shm and
#   a directory on disk). Needs root only for nothing; needs cryptsetup and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
shift || true
DIRS=("$@")
[ ${#DIRS[@]} -gt 0 ] || DIRS=(/dev/shm "$PWD/build")
DS=${DISKSEAL:-$PWD/build/diskseal}  # DISKSEAL=path: another build, for before/after runs
[ -x "$DS" ] || scripts/build >/dev/null
FAST=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)

measure() {  # name cmd... -> "name seconds rss_kib"
  local name=$1; shift
  /usr/bin/time -o "$work/time" -f '%e %M' "$@" >/dev/null 2>&1 || { echo "$name failed" >&2; return 1; }
  echo "$name $(tail -1 "$work/time")"
}

for dir in "${DIRS[@]}"; do
  work=$(mktemp -d "$dir/diskseal-bench-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  printf 'k' > "$work/key"
  head -c "${SIZE}M" /dev/urandom > "$work/orig"
  results=()
  fresh() { cp "$work/orig" "$work/img"; rm -f "$work/hdr"; sync; }
  fresh; results+=("$(measure dd dd if="$work/img" of="$work/img" bs=16M conv=notrunc,fdatasync)")
  fresh; truncate -s +32M "$work/img"
  results+=("$(measure cs-datashift cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M -q --force-offline-reencrypt --key-file "$work/key" "${FAST[@]}" "$work/img")")
  for r in checksum journal; do
    fresh; results+=("$(measure cs-detached-$r cryptsetup reencrypt --encrypt --type luks2 --header "$work/hdr" --resilience $r -q --force-offline-reencrypt --key-file "$work/key" "${FAST[@]}" "$work/img")")
  done
  for r in checksum journal none; do
    fresh; results+=("$(measure diskseal-$r "$DS" encrypt "$work/img" --header "$work/hdr" --resilience $r -d "$work/key" "${FAST[@]}")")
  done
  # the header at the start: the same image grown by 32M, as for cryptsetup's datashift above
  fresh; truncate -s +32M "$work/img"
  results+=("$(measure diskseal-datashift "$DS" encrypt "$work/img" --reduce-device-size 32M -d "$work/key" "${FAST[@]}")")
  rm -rf "$work"
  trap - EXIT
  echo
  echo "== ${SIZE} MiB in $dir ($(nproc) cores)"
  dd_s=$(printf '%s\n' "${results[@]}" | awk '$1=="dd"{print $2}')
  best_cs=$(printf '%s\n' "${results[@]}" | awk '$1 ~ /^cs-/{print $2}' | sort -g | head -1)
  printf '%-22s %8s %9s %12s %10s\n' case seconds "x dd" "x best cs" "peak RSS"
  for line in "${results[@]}"; do
    set -- $line
    awk -v n="$1" -v s="$2" -v r="$3" -v d="$dd_s" -v c="$best_cs" \
      'BEGIN{printf "%-22s %8.2f %9.2f %12.2f %7.1f MiB\n", n, s, s/d, s/c, r/1024}'
  done
done
