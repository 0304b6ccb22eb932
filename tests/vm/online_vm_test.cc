// Online in-place operations against the real kernel (QEMU guest): encrypt, decrypt and
// re-encrypt a mounted filesystem under its live mapping while a workload writes, fsyncs and
// re-reads checksummed files; kill -9 of the run mid-hotzone; cryptsetup carrying on what
// diskseal started online.
#include <cstdlib>
#include <iostream>

#include <gtest/gtest.h>

#include "guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

// Shell functions shared by the guest scripts. The workload writes files with fsync (dd
// conv=fsync), records each checksum only after the fsync returned, re-reads older files, and
// drops the page cache now and then so that reads come from the device through the mapping. It
// stops when /tmp/stop exists; any mismatch ends it with status 1.
const char kCommon[] = R"SH(
set -e
printf secret > /tmp/pw
fail() {
  echo "FAIL: $*"
  echo "--- workload log"; cat /tmp/wl.log 2>/dev/null | tail -5
  echo "--- dm"; dmsetup info -c 2>&1; dmsetup status 2>&1
  echo "--- run log"; tail -5 /tmp/run.log 2>/dev/null
  exit 1
}
WDIR=/mnt/w
workload() {
  mkdir -p $WDIR
  i=0
  while [ ! -e /tmp/stop ]; do
    i=$((i + 1))
    dd if=/dev/urandom of=$WDIR/f$i bs=16k count=$((1 + i % 8)) conv=fsync 2>/dev/null
    sha256sum $WDIR/f$i >> /tmp/sums
    if [ $((i % 10)) = 0 ]; then echo 1 > /proc/sys/vm/drop_caches; fi
    j=$(( (i * 7919) % i + 1 ))
    if grep " $WDIR/f$j\$" /tmp/sums > /tmp/one; then
      sha256sum -c /tmp/one > /dev/null 2>&1 || { echo "WORKLOAD: f$j changed"; exit 1; }
    fi
    echo $i > /tmp/progress
  done
  echo "workload wrote $i files"
}
start_workload() { rm -f /tmp/stop /tmp/progress; : > /tmp/sums; workload > /tmp/wl.log 2>&1 & WL=$!; }
# Waits (bounded) until the workload has written at least $1 files.
wait_workload() {
  n=0
  while [ "$(cat /tmp/progress 2>/dev/null || echo 0)" -lt "$1" ]; do
    kill -0 $WL 2>/dev/null || fail "workload ended"
    n=$((n + 1)); [ $n -lt 1200 ] || fail "workload made no progress"; sleep 0.1
  done
}
stop_workload() {
  touch /tmp/stop
  wait $WL || { cat /tmp/wl.log; fail "workload failed"; }
  cat /tmp/wl.log
}
verify_all() {
  echo 3 > /proc/sys/vm/drop_caches
  sha256sum -c /tmp/sums > /tmp/check.log 2>&1 || { grep -v ': OK$' /tmp/check.log | head; fail "files differ"; }
  (cd /mnt && sha256sum -c /tmp/seed.sums > /dev/null) || fail "seed files differ"
  echo "verified $(wc -l < /tmp/sums) workload files and the seed files"
}
remount_check() {
  umount /mnt
  e2fsck -fn /dev/mapper/vol > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck"; }
  mount /dev/mapper/vol /mnt
  verify_all
}
tables() { dmsetup table vol | awk '{print $3}' | sort | uniq -c | tr '\n' ' '; echo; }
seed() {
  mkfs.ext4 -q -F /dev/vda
  mount /dev/vda /mnt
  dd if=/dev/urandom of=/mnt/seed1 bs=1M count=6 2>/dev/null
  dd if=/dev/urandom of=/mnt/seed2 bs=64k count=5 2>/dev/null
  (cd /mnt && sha256sum seed1 seed2) > /tmp/seed.sums
  umount /mnt
}
DS="--key-file /tmp/pw --header /hdr"
# diskseal finishes online what cryptsetup started on the open, mounted `vol` (workload running;
# "$@": the key and header flags), checks the result, and closes vol with cryptsetup.
diskseal_finishes_cryptsetups() {
  diskseal resume /dev/vda "$@" 2> /tmp/run.log || { cat /tmp/run.log; fail "diskseal resume of cryptsetup's"; }
  grep -q 'runs online' /tmp/run.log || fail "did not run online"
  stop_workload
  test "$(tables)" = "      1 crypt " || fail "table after diskseal"
  remount_check
  umount /mnt
  cryptsetup close vol
}
# After an online encryption: the workload stopped (and checked), one crypt target, no helper
# left, every file intact and fsck clean (remount_check).
finished_encrypted() {
  stop_workload
  test "$(tables)" = "      1 crypt " || fail "table is not one crypt target"
  dmsetup ls | grep -q dshz && fail "helper device left"
  remount_check
}
# The way in of most tests: seeded plaintext, the operation initialised (detached header), opened,
# mounted, and the workload running with at least $1 files written.
online_start() {
  seed
  diskseal encrypt /dev/vda $DS --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  diskseal open /dev/vda vol $DS
  mount /dev/mapper/vol /mnt
  start_workload
  wait_workload $1
}
)SH";

GuestOptions Options(TempDir& dir) {
  ds::test::Run({"truncate", "-s", "64M", dir / "data.img"});
  GuestOptions o;
  o.disks = {dir / "data.img"};
  o.bins = {DisksealBinary()};
  o.timeout_s = 600;
  return o;
}

TEST(VmOnline, EncryptDecryptReencryptWhileMountedAndWritten) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
seed
# Initialise only: the header records the operation, the device is untouched.
diskseal encrypt /dev/vda $DS --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000
cryptsetup luksDump --header /hdr /dev/vda | grep -q 'online-reencrypt' || fail "no reencryption requirement"
diskseal open /dev/vda vol $DS
echo "after open: $(tables)"
mount /dev/mapper/vol /mnt
start_workload
wait_workload 5
DISKSEAL_ONLINE_TIMING=1 diskseal resume /dev/vda $DS --hotzone-size 2M --progress-json 2> /tmp/run.log || { cat /tmp/run.log; fail "online encrypt"; }
grep -q 'runs online under /dev/mapper/vol' /tmp/run.log || fail "did not run online"
# No file of the run lives on the volume: only the pages it uses are locked (online/memory_lock.h).
grep 'timing vol lock=' /tmp/run.log
grep -q 'timing vol lock=on-fault' /tmp/run.log || fail "locked every page for a data volume"
wait_workload $(( $(cat /tmp/progress) + 3 ))
stop_workload
echo "after encrypt: $(tables)"
test "$(tables)" = "      1 crypt " || fail "table is not one crypt target"
dmsetup ls | grep -q dshz && fail "helper device left"
verify_all
remount_check
cryptsetup open --test-passphrase --header /hdr --key-file /tmp/pw /dev/vda || fail "cryptsetup refuses the header"
echo ONLINE-ENCRYPT-OK

# Online re-encryption to a new key (journal resilience), with the workload.
start_workload
wait_workload 3
diskseal reencrypt /dev/vda $DS --resilience journal --hotzone-size 2M --pbkdf pbkdf2 --pbkdf-force-iterations 1000 2> /tmp/run.log || { cat /tmp/run.log; fail "online reencrypt"; }
grep -q 'runs online' /tmp/run.log || fail "reencrypt did not run online"
stop_workload
test "$(tables)" = "      1 crypt " || fail "table after reencrypt"
remount_check
echo ONLINE-REENCRYPT-OK

# Online decryption, with the workload.
start_workload
wait_workload 3
diskseal decrypt /dev/vda $DS --hotzone-size 2M 2> /tmp/run.log || { cat /tmp/run.log; fail "online decrypt"; }
grep -q 'runs online' /tmp/run.log || fail "decrypt did not run online"
stop_workload
echo "after decrypt: $(tables)"
test "$(tables)" = "      1 linear " || fail "table after decrypt"
remount_check
umount /mnt
dmsetup remove vol
e2fsck -fn /dev/vda > /dev/null || fail "plaintext fsck"
mount -o ro /dev/vda /mnt
verify_all
umount /mnt
echo ONLINE-DECRYPT-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("ONLINE-ENCRYPT-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("ONLINE-REENCRYPT-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("ONLINE-DECRYPT-OK"), std::string::npos) << g.console;
}

// A kernel without dm-delay: the run falls back to the single linear helper held itself (every
// flush on the mapping then waits for a held zone) and says so; with the workload running,
// nothing is lost and the result is what cryptsetup opens.
TEST(VmOnline, WithoutDmDelayTheLinearHelperLosesNothing) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
rmmod dm_delay || fail "cannot unload dm-delay"
echo /bin/false > /proc/sys/kernel/modprobe  # and nothing loads it again
dmsetup targets | grep -q '^delay' && fail "dm-delay still available"
online_start 5
diskseal resume /dev/vda $DS --hotzone-size 1M --progress-json 2> /tmp/run.log || { cat /tmp/run.log; fail "online encrypt without dm-delay"; }
grep -q 'no dm-delay target' /tmp/run.log || { cat /tmp/run.log; fail "did not say it fell back"; }
wait_workload $(( $(cat /tmp/progress) + 3 ))
finished_encrypted
umount /mnt
dmsetup remove vol
cryptsetup open --header /hdr --key-file /tmp/pw /dev/vda cs || fail "cryptsetup cannot open the result"
mount -o ro /dev/mapper/cs /mnt
(cd /mnt && sha256sum -c /tmp/seed.sums > /dev/null) || fail "seed files differ through cryptsetup"
umount /mnt
echo FALLBACK-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("FALLBACK-OK"), std::string::npos) << g.console;
}

TEST(VmOnline, KillNineMidHotzoneLeavesTheMappingUsableAndCryptsetupCarriesOn) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
online_start 3

# 1. kill -9 of the run mid-hotzone: its guardian finishes the zone and restores the mapping.
diskseal resume /dev/vda $DS --hotzone-size 1M --progress-json 2> /tmp/run.log &
RUN=$!
n=0
until grep -q '"done":[1-9][0-9]\{6,\}' /tmp/run.log 2>/dev/null; do
  n=$((n + 1)); [ $n -lt 3000 ] || { cat /tmp/run.log; fail "no progress"; }; sleep 0.05
done
kill -9 $RUN
wait $RUN || true
# The guardian removes the helper device when it is done: wait for that state.
n=0
while dmsetup ls | grep -q dshz; do
  n=$((n + 1)); [ $n -lt 3000 ] || fail "helper device never removed"; sleep 0.1
done
dmsetup info vol | grep -q 'State: *ACTIVE' || fail "mapping not active after the kill"
echo "after kill: $(tables)"
wait_workload $(( $(cat /tmp/progress) + 5 ))
verify_all
echo KILL-OK

# 2. A stop at a commit point, then cryptsetup carries the operation on under the same mapping.
diskseal resume /dev/vda $DS --hotzone-size 1M --stop-after 4M 2> /tmp/run.log && fail "stop-after did not stop"
grep -q 'continue with' /tmp/run.log || { cat /tmp/run.log; fail "no continuation named"; }
cryptsetup reencrypt --resume-only --header /hdr --active-name vol --key-file /tmp/pw || fail "cryptsetup resume-only"
stop_workload
echo "after cryptsetup: $(tables)"
test "$(tables)" = "      1 crypt " || fail "table after cryptsetup"
remount_check
diskseal dump /dev/vda --header /hdr | grep -q 'no operation\|Segments' || true
echo CRYPTSETUP-CARRIES-ON-OK
umount /mnt
diskseal close vol

# 3. The other way: cryptsetup initialises and opens, diskseal carries the encryption on online.
seed
cryptsetup reencrypt --encrypt --init-only --header /hdr2 --key-file /tmp/pw --pbkdf pbkdf2 \
  --pbkdf-force-iterations 1000 --sector-size 512 -q /dev/vda
cryptsetup open --header /hdr2 --key-file /tmp/pw /dev/vda vol
mount /dev/mapper/vol /mnt
start_workload
wait_workload 3
diskseal_finishes_cryptsetups --key-file /tmp/pw --header /hdr2 --hotzone-size 2M
echo DISKSEAL-CARRIES-ON-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("KILL-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("CRYPTSETUP-CARRIES-ON-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("DISKSEAL-CARRIES-ON-OK"), std::string::npos) << g.console;
}

// A volume with its header on the device, made and opened by cryptsetup (the usual LUKS2 disk):
// `diskseal reencrypt DEVICE` gives it a new key while it is mounted and written; stopped midway,
// cryptsetup's `--resume-only --active-name` finishes; cryptsetup's own online init, diskseal
// finishes. A data shift (encrypt with the header at the start) under an open mapping is refused
// before anything is written, and its --init-only says it runs closed.
TEST(VmOnline, HeaderOnTheDeviceReencryptsOnlineBothWaysWithCryptsetup) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
K="--key-file /tmp/pw"
FAST="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
cryptsetup luksFormat -q --type luks2 $FAST $K /dev/vda
cryptsetup open $K /dev/vda vol
mkfs.ext4 -q -F /dev/mapper/vol
mount /dev/mapper/vol /mnt
dd if=/dev/urandom of=/mnt/seed1 bs=1M count=6 2>/dev/null
dd if=/dev/urandom of=/mnt/seed2 bs=64k count=5 2>/dev/null
(cd /mnt && sha256sum seed1 seed2) > /tmp/seed.sums

# 1. diskseal, the whole way, while mounted and written.
start_workload
wait_workload 3
diskseal reencrypt /dev/vda $K --hotzone-size 1M $FAST 2> /tmp/run.log || { cat /tmp/run.log; fail "online reencrypt"; }
grep -q 'runs online under /dev/mapper/vol' /tmp/run.log || { cat /tmp/run.log; fail "did not run online"; }
stop_workload
test "$(tables)" = "      1 crypt " || fail "table after reencrypt"
remount_check
cryptsetup luksDump /dev/vda | grep -q 'online-reencrypt' && fail "requirement left in the header"
echo ATTACHED-REENCRYPT-OK

# 2. diskseal stops at a commit point, cryptsetup carries on under the mapping.
start_workload
wait_workload 3
rc=0; diskseal reencrypt /dev/vda $K --hotzone-size 1M --stop-after 8M $FAST 2> /tmp/run.log || rc=$?
test $rc = 9 || { cat /tmp/run.log; fail "stop-after exit $rc"; }
cryptsetup reencrypt --resume-only --active-name vol $K || fail "cryptsetup resume-only"
stop_workload
test "$(tables)" = "      1 crypt " || fail "table after cryptsetup"
remount_check
echo CRYPTSETUP-CARRIES-ON-OK

# 3. cryptsetup initialises online, diskseal carries on.
start_workload
wait_workload 3
cryptsetup reencrypt --init-only $K $FAST -q /dev/vda || fail "cryptsetup init"
diskseal_finishes_cryptsetups $K --hotzone-size 1M
cryptsetup open --test-passphrase $K /dev/vda || fail "cryptsetup refuses the result"
echo DISKSEAL-CARRIES-ON-OK

# 4. A data shift cannot run under a live mapping: refused, the device unchanged.
dd if=/dev/zero of=/dev/vda bs=1M count=17 2>/dev/null  # the LUKS header gone
mkfs.ext4 -q -F /dev/vda 40M
diskseal encrypt /dev/vda $K --reduce-device-size 16M --init-only $FAST > /tmp/init.log 2>&1 || { cat /tmp/init.log; fail "init"; }
grep -q 'with the volume closed' /tmp/init.log || { cat /tmp/init.log; fail "init-only promised online"; }
diskseal open /dev/vda vol $K
before=$(sha256sum < /dev/vda)
rc=0; diskseal resume /dev/vda $K 2> /tmp/err.log || rc=$?
cat /tmp/err.log
test $rc = 5 || fail "resume of a data shift under a mapping: exit $rc"
grep -q 'moves the data.*diskseal close vol' /tmp/err.log || fail "refusal does not say why"
test "$before" = "$(sha256sum < /dev/vda)" || fail "device changed"
rc=0; diskseal encrypt /dev/vda $K --reduce-device-size 16M 2> /tmp/err.log || rc=$?
cat /tmp/err.log
test $rc = 5 || fail "the encrypt command again under a mapping: exit $rc"
test "$before" = "$(sha256sum < /dev/vda)" || fail "device changed"
test "$(dmsetup table vol | wc -l)" = 2 || fail "mapping changed"
diskseal close vol
diskseal resume /dev/vda $K 2> /tmp/run.log || { cat /tmp/run.log; fail "offline resume"; }
cryptsetup open $K /dev/vda cs || fail "cryptsetup cannot open the shifted volume"
e2fsck -fn /dev/mapper/cs > /dev/null || fail "fsck of the shifted volume"
cryptsetup close cs
echo SHIFT-REFUSED-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  for (const char* m : {"ATTACHED-REENCRYPT-OK", "CRYPTSETUP-CARRIES-ON-OK", "DISKSEAL-CARRIES-ON-OK", "SHIFT-REFUSED-OK"})
    EXPECT_NE(g.console.find(m), std::string::npos) << m << "\n" << g.console;
}

// `killall -9 diskseal` with a zone held kills the run and its guardian: the zone stays held
// (users' I/O there waits). cryptsetup's `--resume-only --active-name` then blocks reading the
// helper device (seen: it probes every device of NAME's table); `diskseal resume` is what
// releases it: it finishes the zone, restores the mapping and the whole encryption, after which
// cryptsetup ends (its helper device gone) having changed nothing. Every file intact.
TEST(VmOnline, BothKilledWithAZoneHeldDisksealResumeReleasesCryptsetup) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
online_start 3
diskseal resume /dev/vda $DS --hotzone-size 1M 2> /tmp/run.log &
# Both processes stopped while the queue is suspended, then killed: a held zone, deterministically.
held=0; n=0
while [ $held = 0 ]; do
  n=$((n + 1)); [ $n -lt 100000 ] || fail "never caught a held zone"
  dmsetup info vol-dshzq 2>/dev/null | grep -q SUSPENDED || continue
  kill -STOP $(pidof diskseal) 2>/dev/null || continue
  if dmsetup info vol-dshzq | grep -q SUSPENDED; then held=1; else kill -CONT $(pidof diskseal); fi
done
test "$(pidof diskseal | wc -w)" = 2 || fail "expected the run and its guardian"
kill -9 $(pidof diskseal)
while pidof diskseal > /dev/null; do sleep 0.1; done
dmsetup info vol-dshzq | grep -q SUSPENDED || fail "zone not held after the kill"
echo HELD-AND-KILLED
cryptsetup reencrypt --resume-only --header /hdr --active-name vol --key-file /tmp/pw > /tmp/cs.log 2>&1 &
CS=$!
n=0
until ls -l /proc/$CS/fd 2>/dev/null | grep -q 'vol-dshzn$'; do
  kill -0 $CS 2>/dev/null || { cat /tmp/cs.log; fail "cryptsetup ended without waiting on the held zone"; }
  n=$((n + 1)); [ $n -lt 3000 ] || fail "cryptsetup never opened the helper"; sleep 0.05
done
echo CRYPTSETUP-WAITS
diskseal resume /dev/vda $DS 2> /tmp/run.log || { cat /tmp/run.log; fail "diskseal resume over the leftovers"; }
grep -q 'restoring the mapping' /tmp/run.log || { cat /tmp/run.log; fail "no restore said"; }
n=0
while kill -0 $CS 2>/dev/null; do n=$((n + 1)); [ $n -lt 1200 ] || fail "cryptsetup still blocked"; sleep 0.1; done
rc=0; wait $CS || rc=$?
echo "cryptsetup ended: exit $rc: $(cat /tmp/cs.log)"
finished_encrypted
umount /mnt
diskseal close vol
cryptsetup open --test-passphrase --header /hdr --key-file /tmp/pw /dev/vda || fail "cryptsetup refuses the header"
cryptsetup luksDump --header /hdr /dev/vda | grep -q 'online-reencrypt' && fail "operation left in the header"
echo RELEASED-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  for (const char* m : {"HELD-AND-KILLED", "CRYPTSETUP-WAITS", "RELEASED-OK"})
    EXPECT_NE(g.console.find(m), std::string::npos) << m << "\n" << g.console;
}

// The run and its guardian killed between two zones (nothing held), then the mapping closed by
// cryptsetup: `cryptsetup close` removes the run's crypt helpers with the mapping (their dm UUIDs
// are cryptsetup's for sub-devices), and the next `diskseal open` removes the rest (they would
// hold the device for good) and says so; resume finishes, every file intact.
TEST(VmOnline, BothKilledThenClosedByCryptsetupOpenCleansUpAndResumeFinishes) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
online_start 3
diskseal resume /dev/vda $DS --hotzone-size 1M 2> /tmp/run.log &
until dmsetup ls | grep -q vol-dshzd; do :; done
# Both processes stopped while neither the mapping nor the queue is suspended, then killed.
got=0; n=0
while [ $got = 0 ]; do
  n=$((n + 1)); [ $n -lt 100000 ] || fail "never caught the run between zones"
  dmsetup info vol-dshzq 2>/dev/null | grep -q SUSPENDED && continue
  kill -STOP $(pidof diskseal) 2>/dev/null || continue
  if dmsetup info vol-dshzq | grep -q SUSPENDED || dmsetup info vol | grep -q SUSPENDED; then
    kill -CONT $(pidof diskseal)
  else
    got=1
  fi
done
test "$(pidof diskseal | wc -w)" = 2 || fail "expected the run and its guardian"
kill -9 $(pidof diskseal)
while pidof diskseal > /dev/null; do sleep 0.1; done
dmsetup ls | grep -q vol-dshzd || fail "no crypt helper left by the kill"
stop_workload
umount /mnt
cryptsetup close vol || fail "cryptsetup close"
dmsetup ls | grep -q 'vol-dshz[ndo]' && fail "cryptsetup close left a crypt helper"
dmsetup ls | grep -q vol-dshzq || fail "expected the queue left (not a sub-device)"
diskseal open /dev/vda vol $DS 2> /tmp/open.log || { cat /tmp/open.log; fail "open over the orphaned helpers"; }
grep -q 'removed the helper devices of an online run whose mapping was closed' /tmp/open.log || { cat /tmp/open.log; fail "no word of the removal"; }
dmsetup ls | grep -q dshz && fail "helper left after the open"
diskseal resume /dev/vda $DS 2> /tmp/run.log || { cat /tmp/run.log; fail "resume after the close"; }
test "$(tables)" = "      1 crypt " || fail "table is not one crypt target"
mount /dev/mapper/vol /mnt
remount_check
echo CLEANED-UP-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("CLEANED-UP-OK"), std::string::npos) << g.console;
}

// 512-byte sectors (xfs's log writes such sectors anywhere) written by a user right beside the
// run's progress, on both sides of the boundary (the last four done, the next two), while another user writes 4 MiB far from it
// sector by sector (so zones are sized by time, not only by the hotzone limit and where users
// work): a zone's edge page is where such a write could be lost (users write around the data
// device's page cache, engine.h users_bypass_cache; an xfs root decrypted online lost log
// writes there). Every sector's last write reads back, encrypting and decrypting.
TEST(VmOnline, SectorWritesBesideEveryZoneEdgeSurvive) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
dd if=/dev/urandom of=/dev/vda bs=1M count=64 2>/dev/null
SIZE=$(( $(cat /sys/block/vda/size) * 512 ))
SECTORS=$((SIZE / 512))
dd if=/dev/urandom of=/tmp/far bs=1M count=4 2>/dev/null
diskseal encrypt /dev/vda $DS --init-only --sector-size 512 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
diskseal open /dev/vda vol $DS
user_write() {
  dd if=/dev/urandom of=/tmp/s bs=512 count=1 2>/dev/null
  dd if=/tmp/s of=/dev/mapper/vol bs=512 seek=$1 count=1 oflag=direct conv=notrunc 2>/dev/null || fail "user write at sector $1"
  echo "$1 $(sha256sum < /tmp/s | cut -c1-64)" >> /tmp/sectors
}
# $1: where the far user writes (the sector); until /tmp/stopfar.
far_writer() {
  while [ ! -e /tmp/stopfar ]; do
    dd if=/tmp/far of=/dev/mapper/vol bs=512 seek=$1 oflag=direct conv=notrunc 2>/dev/null || { echo "far write failed"; exit 1; }
  done
}
# $1: the operation's direction (forward: the boundary is at done; backward: at SIZE - done).
beside_the_run() {
  if [ "$1" = forward ]; then far=$((SECTORS - 8192)); else far=0; fi
  rm -f /tmp/stopfar
  : > /tmp/sectors  # (the far user overwrites some of the previous phase's)
  far_writer $far & FW=$!
  n=0
  while kill -0 $RUN 2>/dev/null; do
    d=$(grep -o '"done":[0-9]*' /tmp/run.log 2>/dev/null | tail -1 | cut -d: -f2)
    [ -n "$d" ] || d=0
    if [ "$1" = forward ]; then b=$((d / 512)); else b=$(( (SIZE - d) / 512 )); fi
    for s in $((b - 4)) $((b - 3)) $((b - 2)) $((b - 1)) $b $((b + 1)); do
      [ $s -ge 0 ] && [ $s -lt $SECTORS ] || continue
      [ $s -lt $far ] || [ $s -ge $((far + 8192)) ] || continue  # the far user's
      user_write $s
      n=$((n + 1))
    done
    # Paced: the boundary's area goes cold between writes, so zones there are sized by time.
    sleep 1
  done
  touch /tmp/stopfar
  wait $FW || fail "the far writer failed"
  dd if=/dev/mapper/vol bs=512 skip=$far count=8192 iflag=direct 2>/dev/null | cmp -s - /tmp/far || fail "the far user's 4 MiB differ"
  echo "$1: $n sector writes at the boundary, 4 MiB far from it, intact"
}
check_sectors() {
  awk '{last[$1] = $2} END {for (s in last) print s, last[s]}' /tmp/sectors > /tmp/last
  bad=0
  while read s sum; do
    got=$(dd if=/dev/mapper/vol bs=512 skip=$s count=1 iflag=direct 2>/dev/null | sha256sum | cut -c1-64)
    [ "$got" = "$sum" ] || { echo "sector $s lost its last write"; bad=$((bad + 1)); }
  done < /tmp/last
  [ $bad = 0 ] || fail "$bad of $(wc -l < /tmp/last) sectors lost a user's write"
  echo "$(wc -l < /tmp/last) sectors intact"
}
diskseal resume /dev/vda $DS --hotzone-size 8M --progress-json 2> /tmp/run.log &
RUN=$!
beside_the_run forward
wait $RUN || { tail -3 /tmp/run.log; fail "online encrypt"; }
test "$(tables)" = "      1 crypt " || fail "table after the encryption"
check_sectors
echo SECTORS-ENCRYPT-OK
diskseal decrypt /dev/vda $DS --hotzone-size 8M --progress-json 2> /tmp/run.log &
RUN=$!
beside_the_run backward
wait $RUN || { tail -3 /tmp/run.log; fail "online decrypt"; }
check_sectors
echo SECTORS-DECRYPT-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("SECTORS-ENCRYPT-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("SECTORS-DECRYPT-OK"), std::string::npos) << g.console;
}

// Bad input on the online path: the wrong key for a resume on an active mapping changes nothing;
// the mapping closed by someone else mid-run (not mounted, so `dmsetup remove` can) stops the run
// with a message naming it, the helper device is gone, nothing is lost and a later open + resume
// finishes.
TEST(VmOnline, WrongKeyAndMappingClosedMidRunLoseNothing) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
seed
diskseal encrypt /dev/vda $DS --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000
diskseal open /dev/vda vol $DS
before="$(dmsetup table vol)"
printf wrong > /tmp/bad
if diskseal resume /dev/vda --key-file /tmp/bad --header /hdr 2> /tmp/run.log; then fail "wrong key accepted"; fi
cat /tmp/run.log
test "$(dmsetup table vol)" = "$before" || fail "table changed by a wrong key"
dmsetup ls | grep -q dshz && fail "helper device left by a wrong key"
echo WRONG-KEY-OK

diskseal resume /dev/vda $DS --hotzone-size 1M --progress-json 2> /tmp/run.log &
RUN=$!
n=0
until grep -q '"done":[1-9][0-9]\{6,\}' /tmp/run.log 2>/dev/null; do
  n=$((n + 1)); [ $n -lt 3000 ] || { cat /tmp/run.log; fail "no progress"; }; sleep 0.05
done
n=0
until dmsetup remove vol 2> /dev/null; do
  n=$((n + 1)); [ $n -lt 1200 ] || fail "dmsetup remove vol kept failing"; sleep 0.05
done
if wait $RUN; then tail -3 /tmp/run.log; fail "the run did not stop when its mapping was closed"; fi
grep -v '^{' /tmp/run.log | tail -3
grep -q 'vol: /dev/mapper/vol was closed by someone else' /tmp/run.log || fail "no message naming the closed mapping"
dmsetup ls | grep -q dshz && fail "helper device left after the close"
diskseal open /dev/vda vol $DS || fail "open after the close"
# The resume after the close is where a flush is checked: a flush on the mapping (what
# every fsync sends) does not wait for a held hotzone. The run is stopped (SIGSTOP) while its
# queue device is suspended, and an empty flush of /dev/mapper/vol (nothing mounted, no dirty
# pages: fsync of the block device) still returns.
diskseal resume /dev/vda $DS --hotzone-size 256K --progress-json 2> /tmp/run.log &
RUN=$!
n=0
while :; do
  n=$((n + 1)); [ $n -lt 20000 ] || { tail -3 /tmp/run.log; fail "never saw a zone held"; }
  kill -0 $RUN 2>/dev/null || { tail -3 /tmp/run.log; fail "the run ended before a zone was seen held"; }
  dmsetup info vol-dshzq 2>/dev/null | grep -q 'State: *SUSPENDED' || continue
  kill -STOP $RUN
  # Held, and past the instant vol itself is suspended to switch tables (the hold suspends vol,
  # then the queue, then resumes vol with the new table): a run stopped in that instant leaves
  # every I/O of vol waiting, which is not what is checked here.
  dmsetup info vol-dshzq 2>/dev/null | grep -q 'State: *SUSPENDED' &&
    dmsetup info vol 2>/dev/null | grep -q 'State: *ACTIVE' && break
  kill -CONT $RUN
done
echo "zone held, run stopped: $(tables)"
rm -f /tmp/flushed
( dd if=/dev/null of=/dev/mapper/vol conv=notrunc,fsync 2>/dev/null; touch /tmp/flushed ) &
n=0
until [ -e /tmp/flushed ]; do
  n=$((n + 1)); [ $n -lt 1200 ] || { kill -CONT $RUN; fail "a flush waited for the held hotzone"; }; sleep 0.05
done
dmsetup info vol-dshzq | grep -q 'State: *SUSPENDED' || fail "the zone was released under a stopped run"
echo FLUSH-PASSES-HELD-ZONE-OK
# A tired admin opens the device again meanwhile: refused, naming the mapping, not a helper.
if diskseal open /dev/vda vol2 $DS 2> /tmp/open2.log; then fail "a second open of a device in use"; fi
cat /tmp/open2.log
grep -q dshz /tmp/open2.log && fail "the refusal names a helper device"
dmsetup ls | grep -q vol2 && fail "a second mapping was made"
# ... and starts a second resume: exit 5 naming the run once (its guardian, a fork holding the
# same lock, is not a second owner).
rc=0; diskseal resume /dev/vda $DS 2> /tmp/second.log || rc=$?
cat /tmp/second.log
[ $rc = 5 ] || fail "a second resume exited $rc"
grep -q "in use by diskseal resume .*(pid $RUN); diskseal allows one owner per device" /tmp/second.log || fail "the refusal does not name the run"
[ "$(grep -o '(pid ' /tmp/second.log | wc -l)" = 1 ] || fail "the refusal names more than one owner"
# Then the run and its guardian (its child) are both killed with the zone held: nothing restores
# the mapping until the next resume, which finishes the held zone, removes both helpers and
# carries the encryption to the end.
G=""
for p in /proc/[0-9]*; do
  [ "$(awk '{print $4}' $p/stat 2>/dev/null)" = "$RUN" ] && G="$G ${p#/proc/}"
done
[ -n "$G" ] || fail "no guardian process under the run"
kill -9 $G
kill -9 $RUN
wait $RUN || true
dmsetup info vol-dshzq | grep -q 'State: *SUSPENDED' || fail "the held zone was released with nobody left to finish it"
diskseal resume /dev/vda $DS --hotzone-size 4M 2> /tmp/run.log || { cat /tmp/run.log; fail "resume after both were killed"; }
grep -q 'restoring the mapping an interrupted online run left behind' /tmp/run.log || { cat /tmp/run.log; fail "no restore"; }
dmsetup ls | grep -q dshz && fail "helper device left after the resume"
test "$(tables)" = "      1 crypt " || fail "table after the resume"
# The killed run's I/O statistics on vol (where users work, online/zone_heat.h) are gone too.
test -z "$(dmsetup message vol 0 @stats_list)" || fail "statistics regions left on vol: $(dmsetup message vol 0 @stats_list)"
echo BOTH-KILLED-RESUMED-OK
e2fsck -fn /dev/mapper/vol > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck"; }
mount -o ro /dev/mapper/vol /mnt
(cd /mnt && sha256sum -c /tmp/seed.sums > /dev/null) || fail "seed files differ"
umount /mnt
diskseal close vol
echo CLOSED-MID-RUN-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("WRONG-KEY-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("FLUSH-PASSES-HELD-ZONE-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("BOTH-KILLED-RESUMED-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("CLOSED-MID-RUN-OK"), std::string::npos) << g.console;
}

// ENOSPC where the header lives (a small tmpfs): --init-only reserves the whole header file before
// writing anything, so a full filesystem fails there with a clear error, the device untouched and
// no file left behind; once it is created, an online run never allocates (every commit and the
// resilience area are written in place), so it finishes on a full filesystem.
TEST(VmOnline, FullFilesystemForTheHeaderFailsAtInitAndNeverMidRun) {
  TempDir dir;
  const std::string script = std::string(kCommon) + R"SH(
seed
mkdir -p /h
mount -t tmpfs -o size=20m tmpfs /h
dd if=/dev/zero of=/h/fill bs=1M count=10 2> /dev/null
DSH="--key-file /tmp/pw --header /h/hdr"
sha256sum < /dev/vda > /tmp/before
if diskseal encrypt /dev/vda $DSH --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000 2> /tmp/run.log; then
  fail "init-only on a full filesystem succeeded"
fi
cat /tmp/run.log
grep -q 'No space left on device' /tmp/run.log || fail "ENOSPC not named"
grep -q '/h/hdr' /tmp/run.log || fail "the header file not named"
test -z "$(ls /h | grep -v '^fill$')" || { ls -la /h; fail "files left in the header's filesystem"; }
sha256sum < /dev/vda | cmp -s - /tmp/before || fail "device changed by a failed init"
rm /h/fill
diskseal encrypt /dev/vda $DSH --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000 || fail "init-only after freeing space"
diskseal open /dev/vda vol $DSH
mount /dev/mapper/vol /mnt
dd if=/dev/zero of=/h/fill bs=4k 2> /dev/null || true
test "$(df -k /h | awk 'NR == 2 {print $4}')" = 0 || fail "the header's filesystem is not full"
start_workload
wait_workload 3
diskseal resume /dev/vda $DSH --hotzone-size 2M 2> /tmp/run.log || { cat /tmp/run.log; fail "online run on a full header filesystem"; }
stop_workload
test "$(tables)" = "      1 crypt " || fail "table after the run"
remount_check
umount /mnt
diskseal close vol
echo FULL-HEADER-FS-OK
)SH";
  GuestResult g = RunInGuest(script, Options(dir));
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("FULL-HEADER-FS-OK"), std::string::npos) << g.console;
}

// Power cuts of the guest at random instants of an online encryption under the workload. The
// header and the workload's records (one small file per fsync'd workload file, itself fsync'd)
// live on a second, plain disk, so that both survive the cut; the guest's page cache does not.
// After each cut a new boot opens the volume (recovering a hotzone left flagged), checks every
// recorded file, fsck, carries the encryption on online, and checks again; cryptsetup on the host
// reads the final header. DISKSEAL_ONLINE_CUT_SEED picks other instants (default: fixed).
TEST(VmOnline, PowerCutsDuringOnlineEncryptionLoseNoFsyncedFile) {
  const char* env_seed = std::getenv("DISKSEAL_ONLINE_CUT_SEED");
  unsigned seed = env_seed ? unsigned(std::strtoul(env_seed, nullptr, 10)) : 20261204u;
  const int cuts = 3;
  for (int c = 0; c < cuts; ++c) {
    TempDir dir;
    ds::test::Run({"truncate", "-s", "64M", dir / "data.img"});
    ds::test::Run({"truncate", "-s", "24M", dir / "rec.img"});
    // The cut comes once the engine has done at least `at` bytes (a state, not a delay), at a
    // random point of the 64 MiB, plus a random number of workload files more.
    seed = seed * 1103515245u + 12345u;
    const uint64_t at = (1u << 20) + (seed >> 8) % (60u << 20);
    const unsigned extra = (seed >> 4) % 4;
    const std::string common = std::string(kCommon) + R"SH(
rec_workload() {
  mkdir -p /mnt/w
  i=0
  while :; do
    i=$((i + 1))
    dd if=/dev/urandom of=/mnt/w/f$i bs=16k count=$((1 + i % 8)) conv=fsync 2>/dev/null
    sha256sum /mnt/w/f$i | dd of=/rec/r$i conv=fsync 2>/dev/null
    echo $i > /tmp/progress
  done
}
check_records() {
  n=0
  for r in /rec/r*; do
    [ -e "$r" ] || continue
    sha256sum -c "$r" > /dev/null 2>&1 || { cat "$r"; fail "fsync'd file $r lost or changed"; }
    n=$((n + 1))
  done
  (cd /mnt && sha256sum -c /rec/seed.sums > /dev/null) || fail "seed files differ"
  echo "checked $n fsync'd files"
}
DS="--key-file /tmp/pw --header /rec/hdr"
)SH";
    GuestOptions o;
    o.disks = {dir / "data.img", dir / "rec.img"};
    o.bins = {DisksealBinary()};
    o.timeout_s = 600;
    const std::string first = common + R"SH(
mkfs.ext4 -q -F /dev/vdb
mkdir -p /rec && mount /dev/vdb /rec
seed
cp /tmp/seed.sums /rec/seed.sums && sync
diskseal encrypt /dev/vda $DS --init-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000
diskseal open /dev/vda vol $DS
mount /dev/mapper/vol /mnt
rec_workload > /tmp/wl.log 2>&1 &
WL=$!
wait_workload 2
diskseal resume /dev/vda $DS --hotzone-size 2M --progress-json 2> /tmp/run.log &
n=0
until awk -F'"done":' 'NF > 1 { split($2, a, ","); if (a[1] + 0 >= )SH" + std::to_string(at) + R"SH() found = 1 } END { exit !found }' /tmp/run.log 2>/dev/null; do
  grep -q '"event":"done"' /tmp/run.log 2>/dev/null && break
  n=$((n + 1)); [ $n -lt 6000 ] || fail "no progress"; sleep 0.05
done
wait_workload $(( $(cat /tmp/progress) + )SH" + std::to_string(extra) + R"SH( ))
echo "CUTTING at $(tail -1 /tmp/run.log)"
echo b > /proc/sysrq-trigger
)SH";
    GuestResult g1 = RunInGuest(first, o);
    ASSERT_NE(g1.console.find("CUTTING at"), std::string::npos) << g1.console;
    ASSERT_NE(g1.exit_code, 0) << "the guest was meant to lose power: " << g1.console;
    const std::string second = common + R"SH(
mkdir -p /rec && mount /dev/vdb /rec
cp /rec/seed.sums /tmp/seed.sums
diskseal open /dev/vda vol $DS 2> /tmp/open.log || { cat /tmp/open.log; fail "open after the cut"; }
cat /tmp/open.log
e2fsck -fn /dev/mapper/vol > /tmp/fsck.log 2>&1 || echo "fsck -n before journal replay: $(tail -2 /tmp/fsck.log)"
mount /dev/mapper/vol /mnt
check_records
umount /mnt
e2fsck -fn /dev/mapper/vol > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck after the cut"; }
mount /dev/mapper/vol /mnt
WDIR=/mnt/w2
start_workload
wait_workload 2
diskseal resume /dev/vda $DS --hotzone-size 2M 2> /tmp/run.log || { cat /tmp/run.log; fail "resume after the cut"; }
stop_workload
test "$(tables)" = "      1 crypt " || fail "table after the resume"
check_records
verify_all
umount /mnt
e2fsck -fn /dev/mapper/vol > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck at the end"; }
diskseal close vol
umount /rec
echo CUT-RECOVERED-OK
)SH";
    GuestResult g2 = RunInGuest(second, o);
    ASSERT_EQ(g2.exit_code, 0) << "cut at " << at << " bytes:\n" << g1.console << "\n---- after the cut:\n" << g2.console;
    ASSERT_NE(g2.console.find("CUT-RECOVERED-OK"), std::string::npos) << g2.console;
    std::cout << "cut " << c << " after " << at << " bytes: "
              << (g2.console.find("recovered the hotzone") != std::string::npos ? "mid-hotzone, recovered at open"
                                                                                : "between hotzones")
              << "\n";
    // A stranger agrees: the host's cryptsetup reads the final header and the passphrase opens it.
    RunResult x = ds::test::Run({"debugfs", "-R", "dump /hdr " + std::string(dir / "hdr"), dir / "rec.img"});
    ASSERT_EQ(x.exit_code, 0) << x.err;
    WriteFile(dir / "pw", "secret");
    RunResult cs = ds::test::Run({"cryptsetup", "open", "--test-passphrase", "--header", dir / "hdr",
                                  "--key-file", dir / "pw", dir / "data.img"});
    EXPECT_EQ(cs.exit_code, 0) << cs.err;
    RunResult dump = ds::test::Run({"cryptsetup", "luksDump", dir / "hdr"});
    EXPECT_EQ(dump.out.find("online-reencrypt"), std::string::npos) << dump.out;
  }
}

// The machine workflow online: `enable --volume-type Data` moves the mounted filesystem onto its
// mapping with one remount and encrypts it while the workload runs; a run killed with kill -9 at a
// known point (the test freeze) is carried on by `resume --all`, the boot-time unit's command.
TEST(VmOnline, EnableIsOnlineAndResumeAllCarriesOnAfterKillNine) {
  TempDir dir;
  ds::test::Run({"truncate", "-s", "64M", dir / "data.img"});
  ds::test::Run({"truncate", "-s", "48M", dir / "data2.img"});
  const std::string script = std::string(kCommon) + R"SH(
mkdir -p /etc /data /data2 /var/lib
for d in vda vdb; do mkfs.ext4 -q -F /dev/$d; done
mount /dev/vda /data
mount /dev/vdb /data2
dd if=/dev/urandom of=/data/seed1 bs=1M count=4 2>/dev/null
dd if=/dev/urandom of=/data2/seed2 bs=1M count=4 2>/dev/null
sha256sum /data/seed1 /data2/seed2 > /tmp/machine.sums
printf '/dev/vda /data ext4 defaults 0 2\n/dev/vdb /data2 ext4 defaults 0 2\n' > /etc/fstab
: > /etc/crypttab
# The remount needs the files closed for a moment (it names who holds them otherwise): the
# workload starts once the filesystem is on its mapping, while the run is frozen at 5% (test hook).
wait_frozen() {
  n=0
  until grep -q 'State:.*T' /proc/$1/status 2>/dev/null; do
    n=$((n + 1)); [ $n -lt 3000 ] || { cat $2; fail "the run never reached its freeze point"; }; sleep 0.05
  done
}
diskseal enable --volume-type Data --no-escrow --only /data --hotzone-size 2M --pbkdf pbkdf2 \
  --pbkdf-force-iterations 1000 --test-freeze-at-percent 5 2> /tmp/run.log &
EN=$!
wait_frozen $EN /tmp/run.log
echo "enable frozen at its test point: $(dmsetup info -c --noheadings -o name,attr | tr '\n' ' ')"
WDIR=/data/w
start_workload
wait_workload 3
echo "workload running on the mapping"
kill -CONT $EN
wait $EN || { cat /tmp/run.log; fail "enable"; }
cat /tmp/run.log | grep -v progress
grep -q 'one remount' /tmp/run.log || fail "enable did not move the filesystem online"
grep -q 'runs online\|encrypt /data' /tmp/run.log || true
stop_workload
src=$(awk '$2 == "/data" {print $1}' /proc/mounts)
echo "/data is mounted from $src"
case "$src" in /dev/mapper/*) ;; *) fail "/data not on its mapping";; esac
name=${src#/dev/mapper/}
dmsetup table $name | grep -q ' crypt ' || fail "not dm-crypt"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums > /dev/null || fail "workload files"
grep -q "$name" /etc/crypttab || fail "no crypttab line"
diskseal status --json | grep -q '"DataVolumesEncrypted"' || fail "status"
echo ENABLE-ONLINE-OK

# A second volume: the run freezes itself at 40% (test hook), is killed with kill -9, and the
# boot-time command carries it on; the filesystem stays mounted and usable all along.
diskseal enable --volume-type Data --no-escrow --only /data2 --hotzone-size 1M --pbkdf pbkdf2 \
  --pbkdf-force-iterations 1000 --test-freeze-at-percent 30 2> /tmp/run2.log &
EN=$!
wait_frozen $EN /tmp/run2.log
WDIR=/data2/w
start_workload
wait_workload 3
kill -9 $EN
wait $EN || true
n=0
until ! ls /dev/mapper/ | grep -q dshz; do
  n=$((n + 1)); [ $n -lt 3000 ] || fail "helper device never removed"; sleep 0.1
done
wait_workload $(( $(cat /tmp/progress) + 3 ))
diskseal status 2>&1 | head -5
diskseal resume --all --hotzone-size 1M 2> /tmp/run3.log || { cat /tmp/run3.log; fail "resume --all"; }
stop_workload
src=$(awk '$2 == "/data2" {print $1}' /proc/mounts)
case "$src" in /dev/mapper/*) ;; *) fail "/data2 not on its mapping";; esac
dmsetup table ${src#/dev/mapper/} | grep -q ' crypt ' || fail "data2 not dm-crypt"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums > /dev/null || fail "workload files of data2"
sha256sum -c /tmp/machine.sums || fail "seed files"
diskseal status
echo RESUME-ALL-OK

# disable, online: decrypted under the mapping while written; the one remount onto the plain
# device needs the files closed: while this shell holds one open it is refused, naming it, and
# the next run (workload stopped, file closed) finishes with the remount.
WDIR=/data/w3
start_workload
wait_workload 3
exec 3< /data/seed1
diskseal disable --volume-type Data --only /data --hotzone-size 2M 2> /tmp/run4.log && fail "remounted with a file open"
grep -v progress /tmp/run4.log | tail -2
grep -q 'busy\|hold' /tmp/run4.log || fail "the refused remount does not say why"
grep -q '"done":67108864' /tmp/run4.log || fail "the decryption did not finish before the remount"
stop_workload
exec 3<&-
diskseal disable --volume-type Data --only /data 2> /tmp/run4.log || { cat /tmp/run4.log; fail "disable"; }
src=$(awk '$2 == "/data" {print $1}' /proc/mounts)
test "$src" = /dev/vda || fail "/data is mounted from $src after disable"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums > /dev/null || fail "workload files after disable"
sha256sum -c /tmp/machine.sums || fail "seed files after disable"
for m in /data /data2; do
  s=$(awk -v m=$m '$2 == m {print $1}' /proc/mounts); umount $m
  e2fsck -fn $s > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck $m"; }
done
echo DISABLE-ONLINE-OK
)SH";
  GuestOptions o;
  o.disks = {dir / "data.img", dir / "data2.img"};
  o.bins = {DisksealBinary()};
  o.timeout_s = 600;
  GuestResult g = RunInGuest(script, o);
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("ENABLE-ONLINE-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("RESUME-ALL-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("DISABLE-ONLINE-OK"), std::string::npos) << g.console;
}

// A filesystem on an LVM logical volume (the real lvm2 tools in the guest) is encrypted and
// decrypted by `enable`/`disable --volume-type Data` with no unmount and no remount at all
// (online/adopt.h): the same mount (mount id, st_dev) and a file descriptor held open across every
// run keep working while the workload writes; a run killed with kill -9 mid-encryption leaves the
// filesystem usable and `resume --all` finishes it; the same for disable, which ends with the LV's
// original table back. An LV whose table is not linear (striped) is refused with exit 7, naming it
// and the rule, unchanged.
TEST(VmOnline, LogicalVolumeEnableAndDisableWithoutRemount) {
  TempDir dir;
  ds::test::Run({"truncate", "-s", "72M", dir / "pv.img"});
  const std::string script = std::string(kCommon) + R"SH(
mkdir -p /etc /data /var/lib /run/lock/lvm /etc/lvm
LVMC='devices { obtain_device_list_from_udev = 0 } activation { udev_sync = 0 udev_rules = 0 } backup { backup = 0 archive = 0 }'
lvm pvcreate -q --config "$LVMC" /dev/vda > /dev/null || fail "pvcreate"
lvm vgcreate -q --config "$LVMC" dsvg /dev/vda > /dev/null || fail "vgcreate"
lvm lvcreate -q --config "$LVMC" -Zn -L 48M -n data dsvg > /dev/null || fail "lvcreate"
LV=/dev/mapper/dsvg-data
test -b $LV || fail "no $LV"
dmsetup info -c --noheadings -o name,uuid dsvg-data
dmsetup table dsvg-data > /tmp/lv.table
cat /tmp/lv.table
mkfs.ext4 -q -F $LV
mount $LV /data
dd if=/dev/urandom of=/data/seed1 bs=1M count=4 2>/dev/null
sha256sum /data/seed1 > /tmp/machine.sums
printf '/dev/mapper/dsvg-data /data ext4 defaults 0 2\n' > /etc/fstab
: > /etc/crypttab
# Refused, nothing changed: an LV whose table is not linear (here striped, as lvcreate -i makes).
lvm lvcreate -q --config "$LVMC" -Zn -L 8M -n odd dsvg > /dev/null || fail "lvcreate odd"
set -- $(dmsetup table dsvg-odd)
dmsetup suspend dsvg-odd
dmsetup reload dsvg-odd --table "0 $2 striped 1 128 $4 $5"
dmsetup resume dsvg-odd
dmsetup table dsvg-odd > /tmp/odd.table
mkfs.ext4 -q -F /dev/mapper/dsvg-odd
mkdir -p /odd
mount /dev/mapper/dsvg-odd /odd
rc=0; diskseal enable --volume-type Data --no-escrow --only /odd 2> /tmp/odd.log || rc=$?
cat /tmp/odd.log
test $rc = 7 || fail "a striped LV: exit $rc, not 7 (unsupported)"
grep -q 'dsvg-odd.*striped target: only linear' /tmp/odd.log || fail "the refusal does not name the device and the rule"
dmsetup table dsvg-odd | cmp - /tmp/odd.table || fail "the refused LV changed"
dmsetup info dsvg-odd-dsraw > /dev/null 2>&1 && fail "the refused LV got a raw copy"
test -z "$(ls /var/lib/diskseal/volumes 2>/dev/null)" || fail "a record was made for the refused LV"
umount /odd
mount_id() { awk '$5 == "/data" {print $1}' /proc/self/mountinfo; }
MID=$(mount_id)
DEV=$(stat -c %d /data)
# Held open across the whole run: a remount would fail (busy) or leave it writing elsewhere.
exec 4>> /data/held
echo before >&4
same_mount() {
  test "$(mount_id)" = "$MID" || fail "$1: /data is another mount now"
  test "$(stat -c %d /data)" = "$DEV" || fail "$1: /data has another device now"
  test "$(awk '$2 == "/data" {print $1}' /proc/mounts)" = $LV || fail "$1: /data not mounted from $LV"
  echo "$1" >&4
}
wait_frozen() {
  n=0
  until grep -q 'State:.*T' /proc/$1/status 2>/dev/null; do
    n=$((n + 1)); [ $n -lt 3000 ] || { cat $2; fail "the run never reached its freeze point"; }; sleep 0.05
  done
}
WDIR=/data/w
start_workload
wait_workload 3
# Frozen at 30% by the test hook, then kill -9: the guardian restores the mapping.
diskseal enable --volume-type Data --no-escrow --only /data --hotzone-size 1M --pbkdf pbkdf2 \
  --pbkdf-force-iterations 1000 --test-freeze-at-percent 30 2> /tmp/run.log &
EN=$!
wait_frozen $EN /tmp/run.log
grep -q 'no remount' /tmp/run.log || { cat /tmp/run.log; fail "enable did not adopt the LV"; }
echo "frozen: $(dmsetup table dsvg-data | awk '{print $3}' | tr '\n' ' ')"
kill -9 $EN
wait $EN || true
n=0
until ! ls /dev/mapper/ | grep -q dshz; do
  n=$((n + 1)); [ $n -lt 3000 ] || fail "helper device never removed"; sleep 0.1
done
wait_workload $(( $(cat /tmp/progress) + 3 ))
same_mount "after kill -9"
diskseal status 2>&1 | head -4
diskseal status --json | grep -q '"EncryptionInProgress"' || fail "status during the interruption"
diskseal resume --all --hotzone-size 1M 2> /tmp/run2.log || { cat /tmp/run2.log; fail "resume --all"; }
wait_workload $(( $(cat /tmp/progress) + 3 ))
stop_workload
same_mount "after encryption"
dmsetup table dsvg-data | grep -q ' crypt ' || fail "the LV is not dm-crypt"
dmsetup table dsvg-data | grep -v -q ' crypt ' && fail "the LV is not one crypt target"
name=$(awk '{print $1}' /etc/crypttab)
grep -q "dsvg" /etc/crypttab || fail "crypttab does not open the LV"
grep -q "/dev/mapper/$name /data" /etc/fstab || fail "fstab does not mount the mapping"
cat /etc/crypttab
diskseal status --json | grep -q '"DataVolumesEncrypted"' || fail "status"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums > /dev/null || fail "workload files"
sha256sum -c /tmp/machine.sums > /dev/null || fail "seed file"
echo "LV-ENABLE-OK"

# fsck of the encrypted filesystem (the test's own unmount, after the proof above).
exec 4>&-
umount /data
e2fsck -fn $LV > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck after encryption"; }
mount $LV /data
MID=$(mount_id)
DEV=$(stat -c %d /data)
exec 4>> /data/held

WDIR=/data/w2
start_workload
wait_workload 3
# disable, frozen at 40% and killed with kill -9, carried on by resume --all.
diskseal disable --volume-type Data --only /data --hotzone-size 1M --test-freeze-at-percent 40 2> /tmp/run3.log &
EN=$!
wait_frozen $EN /tmp/run3.log
kill -9 $EN
wait $EN || true
n=0
until ! ls /dev/mapper/ | grep -q dshz; do
  n=$((n + 1)); [ $n -lt 3000 ] || fail "helper device never removed"; sleep 0.1
done
wait_workload $(( $(cat /tmp/progress) + 3 ))
same_mount "after kill -9 of disable"
diskseal status --json | grep -q '"DecryptionInProgress"' || fail "status during the interrupted disable"
diskseal resume --all --hotzone-size 2M 2> /tmp/run4.log || { cat /tmp/run4.log; fail "resume --all of disable"; }
wait_workload $(( $(cat /tmp/progress) + 3 ))
stop_workload
grep -v progress /tmp/run4.log | tail -3
same_mount "after disable"
dmsetup table dsvg-data | cmp - /tmp/lv.table || { dmsetup table dsvg-data; fail "the LV's table is not the original"; }
dmsetup info dsvg-data-dsraw > /dev/null 2>&1 && fail "raw device left"
grep -q /data /etc/crypttab && fail "crypttab line left"
grep -q '^/dev/mapper/dsvg-data /data' /etc/fstab || fail "fstab not restored"
echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /tmp/sums > /dev/null || fail "workload files after disable"
sha256sum -c /tmp/machine.sums > /dev/null || fail "seed file after disable"
exec 4>&-
grep -c . /data/held | grep -q '^5$' || { cat /data/held; fail "the held file lost writes"; }
umount /data
e2fsck -fn $LV > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck after disable"; }
lvm lvchange -q --config "$LVMC" -an dsvg/data || fail "LVM cannot deactivate the LV"
echo LV-DISABLE-OK
)SH";
  GuestOptions o;
  o.disks = {dir / "pv.img"};
  o.bins = {DisksealBinary(), "/usr/sbin/lvm"};
  o.timeout_s = 600;
  GuestResult g = RunInGuest(script, o);
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("LV-ENABLE-OK"), std::string::npos) << g.console;
  EXPECT_NE(g.console.find("LV-DISABLE-OK"), std::string::npos) << g.console;
}

}  // namespace
}  // namespace ds::test
