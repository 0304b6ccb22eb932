// The test host itself: cryptsetup in the guest formats, opens through the real kernel dm-crypt,
// makes ext4, writes and verifies files; reopening after close finds them intact.
#include <gtest/gtest.h>

#include "guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

TEST(VmHost, CryptsetupFormatsOpensAndMountsThroughTheKernel) {
  TempDir dir;
  test::Run({"truncate", "-s", "40M", dir / "disk.img"});
  const std::string script = R"(
printf secret > /tmp/pw
# Small PBKDF costs: a default Argon2 slot needs up to 1 GiB, more than the guest has.
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file /tmp/pw /dev/vda
cryptsetup open --key-file /tmp/pw /dev/vda t
cryptsetup status t | grep -q 'type:    LUKS2'
mkfs.ext4 -q /dev/mapper/t
mount /dev/mapper/t /mnt
dd if=/dev/urandom of=/mnt/a bs=1M count=3 2>/dev/null
echo hello > /mnt/b
(cd /mnt && sha256sum a b) > /tmp/sums
umount /mnt
cryptsetup close t
test ! -e /dev/mapper/t
cryptsetup open --key-file /tmp/pw /dev/vda t
mount /dev/mapper/t /mnt
(cd /mnt && sha256sum -c /tmp/sums)
umount /mnt
e2fsck -fn /dev/mapper/t
cryptsetup close t
echo GUEST-OK
)";
  GuestOptions o;
  o.disks = {dir / "disk.img"};
  GuestResult g = RunInGuest(script, o);
  ASSERT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("GUEST-OK"), std::string::npos) << g.console;
  // The host's cryptsetup reads the header the guest wrote.
  RunResult dump = test::Run({"cryptsetup", "luksDump", dir / "disk.img"});
  EXPECT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("Version:       \t2"), std::string::npos) << dump.out;
}

// A failing script's status comes back unchanged, and the harness does not mistake kernel noise
// for the marker.
TEST(VmHost, ReturnsTheScriptsExitStatus) {
  GuestResult g = RunInGuest("echo about to fail\nexit 7\n", GuestOptions());
  EXPECT_EQ(g.exit_code, 7) << g.console;
  EXPECT_NE(g.console.find("DISKSEAL_VM_EXIT=7"), std::string::npos) << g.console;
}

}  // namespace
}  // namespace ds::test
