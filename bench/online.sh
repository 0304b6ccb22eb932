#!/usr/bin/env bash
# Online encryption benchmark, in one QEMU guest (real kernel, device-mapper) on the same disk:
#   dd over the disk (the floor), cryptsetup's online reencryption (--init-only, open,
#   --resume-only --active-name) and diskseal's (encrypt --init-only, open, resume), each on a
#   mounted ext4 without and with a concurrent workload (a writer of 64 KiB files with fsync).
# Each tool runs with its defaults (cryptsetup: checksum resilience with sha256; diskseal: md5) and
# with the other's checksum hash ("cryptsetup-md5", "diskseal-sha256"), for like-for-like ratios.
# Prints seconds and MiB/s of each, the ratio diskseal/cryptsetup, the workload's files/s and its
# p99 latency per file during each run against the same workload alone, and diskseal's peak RSS.
# diskseal's per-hotzone profile (DISKSEAL_ONLINE_TIMING) is printed as "timing ... sum" lines, and the
# phases around the steps (checks, memory lock, helpers, observation, steps, finish) as "phases".
# Usage: bench/online.sh [SIZE_MIB=256] [VCPUS=1]. Needs scripts/setup and a built build/diskseal.
# Both tools run in the same guest, so with VCPUS=2 both get the same two vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-256}
SMP=${2:-1}
[ -x build/diskseal ] || scripts/build >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
truncate -s "${SIZE}M" "$work/disk.img"
cat > "$work/guest.sh" <<EOF
set -e
SIZE=$SIZE
EOF
cat >> "$work/guest.sh" <<'EOF'
printf secret > /tmp/pw
FAST="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
now() { cut -d' ' -f1 /proc/uptime; }
# The workload: 64 KiB files with fsync, each file's latency in ms, until /tmp/stop.
wl() {
  mkdir -p /mnt/w; i=0; : > /tmp/lat
  while [ ! -e /tmp/stop ]; do
    i=$((i + 1)); a=$(now)
    dd if=/dev/zero of=/mnt/w/f$((i % 200)) bs=64k count=1 conv=fsync 2>/dev/null
    b=$(now); echo "$a $b" | awk '{printf "%d\n", ($2 - $1) * 1000}' >> /tmp/lat
  done
}
wl_start() { rm -f /tmp/stop; wl & WL=$!; T0=$(now); }
wl_stop() {
  touch /tmp/stop; wait $WL; T1=$(now)
  n=$(wc -l < /tmp/lat)
  p99=$(sort -n /tmp/lat | awk -v n=$n 'NR == int(n * 0.99) + 1 {print; exit}')
  max=$(sort -n /tmp/lat | tail -1)
  echo "$n $T0 $T1 ${p99:-0} ${max:-0}" | awk '{printf "files/s %.1f p99_ms %d max_ms %d", $1 / ($3 - $2), $4, $5}'
}
fresh() { mkfs.ext4 -q -F -b 4096 /dev/vda; }
# (a sample taken as the process exits is empty and must not replace the last one)
peak_rss() { while kill -0 $1 2>/dev/null; do grep VmHWM /proc/$1/status 2>/dev/null | awk '{print $2}' > /tmp/hwm.$1.new && [ -s /tmp/hwm.$1.new ] && mv /tmp/hwm.$1.new /tmp/hwm.$1; sleep 0.2; done; }
# dd floor: read and write the whole disk once
a=$(now); dd if=/dev/vda of=/dev/vda bs=4M conv=notrunc,fsync 2>/dev/null; b=$(now)
echo "RESULT dd $(echo "$a $b" | awk -v s=$SIZE '{printf "%.2f s %.1f MiB/s", $2 - $1, s / ($2 - $1)}')"
# the workload alone
fresh; mount /dev/vda /mnt; wl_start; sleep 5; echo "RESULT workload-alone $(wl_stop)"; umount /mnt
run() {  # tool with_workload
  tool=$1; withwl=$2
  case $tool in cryptsetup-md5) csopt="--resilience-hash md5";; *) csopt="";; esac
  case $tool in diskseal-sha256) dsopt="--resilience-hash sha256";; *) dsopt="";; esac
  fresh
  rm -f /hdr
  if [ ${tool%-*} = cryptsetup ]; then
    cryptsetup reencrypt --encrypt --init-only --header /hdr --key-file /tmp/pw $FAST --sector-size 4096 $csopt -q /dev/vda
    cryptsetup open --header /hdr --key-file /tmp/pw /dev/vda vol
  else
    diskseal encrypt /dev/vda --header /hdr --init-only --key-file /tmp/pw $FAST $dsopt
    diskseal open /dev/vda vol --header /hdr --key-file /tmp/pw
  fi
  mount /dev/mapper/vol /mnt
  if [ $withwl = yes ]; then wl_start; fi
  a=$(now)
  if [ ${tool%-*} = cryptsetup ]; then
    cryptsetup reencrypt --resume-only --header /hdr --active-name vol --key-file /tmp/pw
  else
    DISKSEAL_ONLINE_TIMING=1 diskseal resume /dev/vda --header /hdr --key-file /tmp/pw --progress-json \
      >/dev/null 2>/tmp/timing & P=$!
    peak_rss $P & wait $P
  fi
  b=$(now)
  wlres=""; if [ $withwl = yes ]; then wlres=" $(wl_stop)"; fi
  rss=""; if [ ${tool%-*} = diskseal ]; then rss=" rss_kib $(cat /tmp/hwm.$P 2>/dev/null || echo ?)"; fi
  if [ ${tool%-*} = diskseal ]; then grep -E '^timing .* (sum|phases) ' /tmp/timing | sed "s/^/PROFILE $tool workload=$withwl /"; fi
  echo "RESULT $tool-online-workload=$withwl $(echo "$a $b" | awk -v s=$SIZE '{printf "%.2f s %.1f MiB/s", $2 - $1, s / ($2 - $1)}')$wlres$rss"
  umount /mnt
  dmsetup remove vol
}
for withw in no yes; do
  for tool in cryptsetup diskseal cryptsetup-md5 diskseal-sha256; do run $tool $withw; done
done
EOF
out=$(scripts/vm/run --disk "$work/disk.img" --bin build/diskseal --mem 1024 --smp "$SMP" --timeout 1800 "$work/guest.sh" 2>&1) || {
  echo "$out" | tail -20; exit 1; }
echo "guest: $SMP vCPU(s), ${SIZE} MiB disk"
echo "$out" | grep '^RESULT' | sed 's/^RESULT //'
echo "$out" | grep '^PROFILE' | sed 's/^PROFILE //'
echo "$out" | grep '^RESULT' | sed 's/^RESULT //' | awk '
  / s / { split($0, f, " "); t[f[1]] = f[2] }
  function ratio(what, cs, ds, w) {
    if (t[cs "-online-workload=" w] > 0 && t[ds "-online-workload=" w] > 0)
      printf "ratio diskseal/cryptsetup (rate), %s, workload=%s: %.2fx\n", what, w, t[cs "-online-workload=" w] / t[ds "-online-workload=" w]
  }
  END {
    for (i = 0; i < 2; i++) {
      w = i ? "yes" : "no"
      ratio("each with its defaults", "cryptsetup", "diskseal", w)
      ratio("both md5", "cryptsetup-md5", "diskseal", w)
      ratio("both sha256", "cryptsetup", "diskseal-sha256", w)
    }
    if (t["dd"] > 0) printf "diskseal online vs dd (time): %.2fx\n", t["diskseal-online-workload=no"] / t["dd"]
  }'
