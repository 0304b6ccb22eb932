#!/usr/bin/env bash
# How long `diskseal doctor` takes on a big machine: builds a captured tree with 500 data-disk
# mounts and 3000 processes (each with a few open files, every tenth one holding a file on a data
# disk), then times `diskseal doctor --root TREE` (GNU time: seconds and peak RSS), and the same
# against this machine (--root /). Usage: bench/doctor_bench.sh [MOUNTS=500] [PROCS=3000]
set -euo pipefail
cd "$(dirname "$0")/.."
MOUNTS=${1:-500}
PROCS=${2:-3000}
DS=$PWD/build/diskseal
[ -x "$DS" ] || scripts/build >/dev/null
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/proc/self "$tree"/sys/class/block "$tree"/etc "$tree"/var/lib/diskseal "$tree"/dev/mapper
printf ' 58 fuse\n236 device-mapper\n' > "$tree/proc/misc"
printf 'MemTotal: 8000000 kB\nMemAvailable: 7000000 kB\n' > "$tree/proc/meminfo"
: > "$tree/dev/mapper/control"
{
  echo "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"
  for i in $(seq 0 $((MOUNTS - 1))); do
    echo "$((100 + i)) 21 252:$i / /srv/d$i rw,relatime shared:$((100 + i)) - ext4 /dev/vd$i rw"
  done
} > "$tree/proc/self/mountinfo"
for i in $(seq 0 $((MOUNTS - 1))); do
  d=$tree/sys/class/block/vd$i
  mkdir -p "$d/holders" "$d/slaves"
  echo "252:$i" > "$d/dev"
  echo 2097152 > "$d/size"
done
for p in $(seq 2000 $((2000 + PROCS - 1))); do
  d=$tree/proc/$p
  mkdir -p "$d/fd"
  echo worker > "$d/comm"
  printf 'worker\0-x\0' > "$d/cmdline"
  ln -s / "$d/cwd"
  ln -s /dev/null "$d/fd/0"
  ln -s /var/log/w.log "$d/fd/1"
  ln -s 'socket:[1234]' "$d/fd/2"
  if [ $((p % 10)) -eq 0 ]; then ln -s "/srv/d$((p % MOUNTS))/f" "$d/fd/3"; fi
done
sync
measure() {  # label args...
  local label=$1; shift
  /usr/bin/time -o "$tree.time" -f '%e %M' "$DS" doctor "$@" >/dev/null 2>&1 || true
  read -r secs rss < <(tail -1 "$tree.time")
  rm -f "$tree.time"
  printf '%-40s %6s s  %7s KiB peak RSS\n' "$label" "$secs" "$rss"
}
measure "captured: $MOUNTS mounts, $PROCS processes" --root "$tree" --json
measure "captured, warm cache" --root "$tree" --json
measure "this machine (--root /, --volume-type All)" --root / --volume-type All
