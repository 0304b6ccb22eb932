// diskseal's device-mapper activation against the real kernel: runs dm_guest_test (built from
// tests/vm/guest/dm_in_guest.cc) in the QEMU guest, next to a volume cryptsetup formatted there.
#include <gtest/gtest.h>

#include "guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

TEST(VmDm, ActivationAgreesWithTheKernelAndCryptsetup) {
  TempDir dir;
  ds::test::Run({"truncate", "-s", "80M", dir / "scratch.img"});
  ds::test::Run({"truncate", "-s", "40M", dir / "luks.img"});
  const std::string script = R"SH(
printf secret > /tmp/pw
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --sector-size 4096 --uuid 6b8a7c2e-3f41-4d0e-9a5b-1c2d3e4f5a6b --key-file /tmp/pw /dev/vdb
cryptsetup luksDump -q --dump-volume-key --key-file /tmp/pw /dev/vdb > /tmp/dump
# The key is printed as hex pairs over several lines after "MK dump:".
sed -n '/MK dump:/,/^$/p' /tmp/dump | sed 's/MK dump://' | tr -d ' \t\n' > /tmp/vk.hex
echo >> /tmp/vk.hex
test "$(wc -c < /tmp/vk.hex)" = 129
dm_guest_test
)SH";
  GuestOptions o;
  o.disks = {dir / "scratch.img", dir / "luks.img"};
  o.bins = {DM_GUEST_TEST_BIN};
  GuestResult g = RunInGuest(script, o);
  EXPECT_EQ(g.exit_code, 0) << g.console;
  EXPECT_NE(g.console.find("[  PASSED  ]"), std::string::npos) << g.console;
}

}  // namespace
}  // namespace ds::test
