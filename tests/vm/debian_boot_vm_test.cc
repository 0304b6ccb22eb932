// The full Debian 12 test guest (scripts/vm/debian-image + tests/vm/debian_guest.h): it boots from
// its own /boot, runs commands over the agent channel, reboots, survives a power cut. The base
// every OS-volume test stands on. (The xfs-on-LVM variant boots in
// VmOsEnable.RootOnLvmAndXfsEncryptsThePhysicalVolumeUnderTheGroup, before and after its
// encryption: one image build and boot fewer in CI.)
#include <gtest/gtest.h>

#include <cstdio>

#include "debian_guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

TEST(VmDebian, Ext4BootsRunsCommandsRebootsAndSurvivesAPowerCut) {
  DebianImage img;
  std::string err;
  ASSERT_TRUE(PrepareDebianImage({}, &img, &err)) << err;
  std::printf("[ image ] %s ready in %.1f s\n", img.dir.c_str(), img.seconds);
  TempDir dir;
  ASSERT_TRUE(CopyImage(img, dir / "disk.img", &err)) << err;

  DebianGuest::Options o;
  o.disk = dir / "disk.img";
  o.root_arg = img.env["ROOT_ARG"];
  o.work_dir = dir.path();
  DebianGuest g(o);
  ASSERT_TRUE(g.Boot(300, &err)) << err;
  std::printf("[ boot  ] agent ready %.1f s after QEMU started\n", g.last_boot_seconds());

  // A command's output and exit status come back; a failing one reports its status.
  ExecResult r = g.Exec("findmnt -no FSTYPE /; findmnt -no SOURCE /; findmnt -no FSTYPE /boot; uname -r");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.substr(0, 5), "ext4\n") << r.output;
  EXPECT_NE(r.output.find("\next4\n"), std::string::npos) << r.output;  // the separate /boot
  ExecResult bad = g.Exec("echo to-stderr >&2; exit 7");
  EXPECT_EQ(bad.exit_code, 7);
  EXPECT_EQ(bad.output, "to-stderr\n");
  // The boot finished (no failed units): the image is a sound base for the boot-flow tests.
  ExecResult st = g.Exec("systemctl is-system-running --wait", 240);
  EXPECT_EQ(st.output, "running\n") << st.output << g.Exec("systemctl --failed --no-legend").output;
  // For the record (where a slow boot spends its time): kernel, initramfs and userspace.
  std::printf("[ boot  ] %s", g.Exec("systemd-analyze 2>&1 | head -1; systemd-analyze blame 2>&1 | head -4").output.c_str());

  // A file written and synced survives the reboot; the machine comes back with a new boot_id.
  ASSERT_EQ(g.Exec("echo kept > /root/before-reboot && sync").exit_code, 0);
  const std::string first_boot = g.boot_id();
  ASSERT_TRUE(g.Reboot(300, &err)) << err;
  std::printf("[ boot  ] after reboot: agent ready %.1f s\n", g.last_boot_seconds());
  EXPECT_NE(g.boot_id(), first_boot);
  r = g.Exec("cat /root/before-reboot");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output, "kept\n");

  // Power cut: what was synced is there after the next boot (the journal replays), what was not
  // may be lost but the filesystem mounts.
  ASSERT_EQ(g.Exec("echo synced > /root/before-cut && sync").exit_code, 0);
  g.PowerCut();
  EXPECT_FALSE(g.running());
  ASSERT_TRUE(g.Boot(300, &err)) << err;
  r = g.Exec("cat /root/before-cut /root/before-reboot");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "synced\nkept\n");
  ASSERT_TRUE(g.Shutdown(120, &err)) << err;
}

}  // namespace
}  // namespace ds::test
