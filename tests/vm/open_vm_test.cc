// `diskseal open` through the real kernel (dm-crypt in the QEMU guest), interoperating with
// cryptsetup both ways, and the same filesystem read back on the host through the userspace view.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

TEST(VmOpen, KernelOpenInteroperatesWithCryptsetupAndTheUserspaceView) {
  TempDir dir;
  WriteFile(dir / "pw", "secret");
  ds::test::Run({"truncate", "-s", "48M", dir / "ds.img"});
  ds::test::Run({"truncate", "-s", "40M", dir / "cs.img"});
  // Volume 1: formatted by diskseal on the host. Small PBKDF cost: the guest has 512 MiB.
  RunResult f = Diskseal({"format", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                          "--key-file", dir / "pw", dir / "ds.img"});
  ASSERT_EQ(f.exit_code, 0) << f.err;
  Bytes payload = MakeRandomImage(dir / "payload", 3 << 20, 11);
  const std::string payload_sum = Sha256File(dir / "payload");

  const std::string script = R"SH(
printf secret > /tmp/pw
printf wrong > /tmp/bad
expect_rc() { want=$1; shift; rc=0; "$@" || rc=$?; [ "$rc" = "$want" ] || { echo "FAIL: $* -> $rc, want $want"; exit 1; }; }

# diskseal opens its own volume through the kernel; cryptsetup recognises the mapping.
diskseal open --key-file /tmp/pw /dev/vda ds1
test -b /dev/mapper/ds1
cryptsetup status ds1 | grep -q 'type:    LUKS2'
diskseal list | grep -q '^ds1 .*kernel .*active'
mkfs.ext4 -q /dev/mapper/ds1
mount /dev/mapper/ds1 /mnt
cp /payload /mnt/payload
dd if=/dev/urandom of=/mnt/random bs=1M count=2 2>/dev/null
(cd /mnt && sha256sum payload random) > /tmp/sums
cp /tmp/sums /mnt/sums.txt
umount /mnt

# Bad input while ds1 is open.
expect_rc 5 diskseal open --key-file /tmp/pw /dev/vda ds1
expect_rc 5 diskseal open --key-file /tmp/pw /dev/vda other
diskseal close ds1
test ! -e /dev/mapper/ds1
expect_rc 4 diskseal close ds1
expect_rc 2 diskseal open --key-file /tmp/bad /dev/vda ds1

# cryptsetup opens what diskseal formatted and finds the files.
cryptsetup open --key-file /tmp/pw /dev/vda cs1
mount -o ro /dev/mapper/cs1 /mnt
(cd /mnt && sha256sum -c /tmp/sums)
umount /mnt
cryptsetup close cs1

# diskseal opens what cryptsetup formatted.
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file /tmp/pw /dev/vdb
cryptsetup open --key-file /tmp/pw /dev/vdb cs2
mkfs.ext4 -q /dev/mapper/cs2
mount /dev/mapper/cs2 /mnt
cp /payload /mnt/p
(cd /mnt && sha256sum p) > /tmp/sums2
umount /mnt
cryptsetup close cs2
diskseal open --key-file /tmp/pw /dev/vdb ds2
mount /dev/mapper/ds2 /mnt
(cd /mnt && sha256sum -c /tmp/sums2)
umount /mnt
e2fsck -fn /dev/mapper/ds2
diskseal close ds2

# A mapping a crash left half made (no table) does not block the name.
dmsetup create ds3 --notable -u CRYPT-LUKS2-00000000000000000000000000000000-ds3
diskseal list | grep -q '^ds3 .*stale'
diskseal open --key-file /tmp/pw /dev/vdb ds3
dmsetup table ds3 | grep -q ' crypt '
diskseal close ds3
echo GUEST-OK
)SH";
  GuestOptions o;
  o.disks = {dir / "ds.img", dir / "cs.img"};
  o.bins = {DisksealBinary()};
  o.files = {{dir / "payload", "/payload"}};
  GuestResult g = RunInGuest(script, o);
  ASSERT_EQ(g.exit_code, 0) << g.console;
  ASSERT_NE(g.console.find("GUEST-OK"), std::string::npos) << g.console;

  // Back on the host (no device-mapper): the ext4 the guest made through dm-crypt, read through
  // diskseal's userspace view, files and checksums intact.
  const std::string run = dir / "run", mnt = dir / "mnt";
  ::mkdir(mnt.c_str(), 0700);
  RunResult op = Diskseal({"open", "--userspace", "--run-dir", run, "--key-file", dir / "pw",
                           dir / "ds.img", "back"});
  ASSERT_EQ(op.exit_code, 0) << op.err;
  RunResult lo = ds::test::Run({"losetup", "-f", "--show", "-r", run + "/back"});
  ASSERT_EQ(lo.exit_code, 0) << lo.err;
  const std::string loop = Trim(lo.out);
  RunResult mo = ds::test::Run({"mount", "-o", "ro", loop, mnt});
  EXPECT_EQ(mo.exit_code, 0) << mo.err;
  if (mo.exit_code == 0) {
    EXPECT_EQ(Sha256File(mnt + "/payload"), payload_sum);
    RunResult c = ds::test::Run({"sh", "-c", "cd " + mnt + " && sha256sum -c sums.txt"});
    EXPECT_EQ(c.exit_code, 0) << c.out << c.err;
    ds::test::Run({"umount", mnt});
  }
  RunResult cl = Diskseal({"close", "--run-dir", run, "back"});  // also detaches the loop device
  EXPECT_EQ(cl.exit_code, 0) << cl.err;
  if (cl.exit_code != 0) ds::test::Run({"losetup", "-d", loop});
}

// A volume stopped in the middle of its encryption (part crypt, part still plaintext: a crypt and a
// linear segment) opens through the kernel and reads as the original bytes, and cryptsetup in the
// guest activates the same header and agrees byte for byte.
TEST(VmOpen, HalfEncryptedVolumeOpensThroughTheKernelAndCryptsetupAgrees) {
  TempDir dir;
  WriteFile(dir / "pw", "secret");
  const std::string img = dir / "half.img", hdr = dir / "half.hdr";
  MakeRandomImage(img, 24u << 20, 31);
  const std::string sum = Sha256File(img);
  // --stop-after: a run that stops at the first commit point past 8 MiB (exit 9, resumable).
  RunResult e = Diskseal({"encrypt", img, "--header", hdr, "--key-file", dir / "pw", "--pbkdf", "pbkdf2",
                          "--pbkdf-force-iterations", "1000", "--hotzone-size", "1M", "--stop-after", "8M"});
  ASSERT_EQ(e.exit_code, 9) << e.err;
  WriteFile(dir / "sum", sum + "\n");
  const std::string script = R"SH(
printf secret > /tmp/pw
want=$(cat /want.sum)
# the header must say "in progress" for this test to mean anything
diskseal dump --json --header /half.hdr /dev/vda | grep -q online-reencrypt-v2
diskseal open --header /half.hdr --key-file /tmp/pw /dev/vda half
dmsetup table half | cut -d' ' -f1-3
dmsetup table half | grep -q ' linear '
dmsetup table half | grep -q ' crypt '
got=$(sha256sum /dev/mapper/half | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "FAIL: diskseal mapping reads $got, want $want"; exit 1; }
diskseal close half
cryptsetup open --header /half.hdr --key-file /tmp/pw /dev/vda cs
got=$(sha256sum /dev/mapper/cs | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "FAIL: cryptsetup mapping reads $got, want $want"; exit 1; }
cryptsetup close cs
echo GUEST-OK
)SH";
  GuestOptions o;
  o.disks = {img};
  o.bins = {DisksealBinary()};
  o.files = {{hdr, "/half.hdr"}, {dir / "sum", "/want.sum"}};
  GuestResult g = RunInGuest(script, o);
  ASSERT_EQ(g.exit_code, 0) << g.console;
  ASSERT_NE(g.console.find("GUEST-OK"), std::string::npos) << g.console;
}

}  // namespace
}  // namespace ds::test
