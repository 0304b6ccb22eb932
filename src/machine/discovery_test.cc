#include "machine/discovery.h"

#include <gtest/gtest.h>

#include "machine/test_tree.h"

namespace ds::machine {
namespace {

using test::BlockSpec;
using test::MachineTree;

TEST(Mountinfo, FieldsOptionalTagsAndEscapes) {
  auto m = ParseMountinfo(
      "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
      "\n"
      "40 22 8:17 /sub /mnt/my\\040data rw master:3 shared:9 - xfs /dev/sdb1 rw,attr2\n"
      "41 22 0:5 / /dev rw - devtmpfs udev rw\n");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(m->size(), 3u);
  const Mount& d = (*m)[1];
  EXPECT_EQ(d.id, 40);
  EXPECT_EQ(d.parent, 22);
  EXPECT_EQ(d.major, 8u);
  EXPECT_EQ(d.minor, 17u);
  EXPECT_EQ(d.root, "/sub");
  EXPECT_EQ(d.mountpoint, "/mnt/my data");
  EXPECT_EQ(d.options, "rw");
  EXPECT_EQ(d.fstype, "xfs");
  EXPECT_EQ(d.source, "/dev/sdb1");
  EXPECT_EQ(d.super_options, "rw,attr2");
  EXPECT_EQ((*m)[2].fstype, "devtmpfs");
}

TEST(Mountinfo, BrokenLineNamesItsNumber) {
  auto m = ParseMountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 1 8:2 / /x rw ext4\n");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), Code::kCorrupt);
  EXPECT_NE(m.status().message().find("line 2"), std::string::npos);
}

TEST(Fstab, UuidLabelCommentsAndDefaults) {
  auto f = ParseFstab(
      "# <file system> <mount point> <type> <options> <dump> <pass>\n"
      "UUID=0a0b0c0d-0e0f-1011-1213-141516171819 / ext4 errors=remount-ro 0 1\n"
      "LABEL=data\\040one /data xfs nofail\n"
      "/dev/sdc none swap sw 0 0\n");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 3u);
  EXPECT_EQ((*f)[0].spec, "UUID=0a0b0c0d-0e0f-1011-1213-141516171819");
  EXPECT_EQ((*f)[0].passno, 1);
  EXPECT_EQ((*f)[1].spec, "LABEL=data one");
  EXPECT_EQ((*f)[1].options, "nofail");
  EXPECT_EQ((*f)[1].freq, 0);
  EXPECT_EQ((*f)[2].file, "none");
  EXPECT_FALSE(ParseFstab("/dev/sda1 /\n").ok());
  EXPECT_FALSE(ParseFstab("/dev/sda1 / ext4 defaults x 1\n").ok());
}

TEST(Crypttab, OptionalKeyAndOptions) {
  auto c = ParseCrypttab(
      "data1 UUID=1234 /etc/keys/data1 luks,discard,nofail\n"
      "swap /dev/sdd /dev/urandom swap,cipher=aes-xts-plain64\n"
      "home /dev/sde3\n");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->size(), 3u);
  EXPECT_EQ((*c)[0].name, "data1");
  EXPECT_EQ((*c)[0].device, "UUID=1234");
  EXPECT_EQ((*c)[0].key, "/etc/keys/data1");
  EXPECT_EQ((*c)[0].options, "luks,discard,nofail");
  EXPECT_EQ((*c)[2].key, "");
  EXPECT_FALSE(ParseCrypttab("onlyname\n").ok());
}

TEST(Signature, EachKindWithUuidAndLabel) {
  BlockInfo b;
  ProbeSignature(test::Ext4Image(0x10, "root"), b);
  EXPECT_EQ(b.signature, "ext4");
  EXPECT_EQ(b.fs_uuid, "10111213-1415-1617-1819-1a1b1c1d1e1f");
  EXPECT_EQ(b.fs_label, "root");
  b = {};
  ProbeSignature(test::XfsImage(0x20, "data"), b);
  EXPECT_EQ(b.signature, "xfs");
  EXPECT_EQ(b.fs_label, "data");
  b = {};
  ProbeSignature(test::SwapImage(0x30), b);
  EXPECT_EQ(b.signature, "swap");
  b = {};
  ProbeSignature(test::Luks2Image("6b5c0d6e-0000-4000-8000-000000000001"), b);
  EXPECT_EQ(b.signature, "luks2");
  EXPECT_EQ(b.fs_uuid, "6b5c0d6e-0000-4000-8000-000000000001");
  b = {};
  ProbeSignature(test::LvmPvImage("abcdefghijklmnopqrstuvwxyz012345"), b);
  EXPECT_EQ(b.signature, "LVM2_member");
  EXPECT_EQ(b.fs_uuid, "abcdef-ghij-klmn-opqr-stuv-wxyz-012345");
  b = {};
  Bytes none(8192, 0);
  ProbeSignature(none, b);
  EXPECT_EQ(b.signature, "");
}

// A typical Azure VM: root, /boot, /boot/efi, the resource disk at /mnt, a swap partition, a data
// disk over dm-crypt on a partition (opened from crypttab), an LVM LV, an unmounted PV.
class DiscoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    t.Block("sda", {.devno = "8:0"});
    t.Block("sda1", {.devno = "8:1", .partition = true});
    t.Block("sda2", {.devno = "8:2", .partition = true});
    t.Block("sda15", {.devno = "8:15", .partition = true});
    t.Device("sda1", test::Ext4Image(0x01, "cloudimg-rootfs"));
    t.Device("sda2", test::Ext4Image(0x02, "boot"));
    t.Block("sdb", {.devno = "8:16"});
    t.Block("sdb1", {.devno = "8:17", .partition = true});
    t.Device("sdb1", test::Ext4Image(0x03, "ephemeral0"));
    t.Block("sdc", {.devno = "8:32"});
    t.Block("sdc1", {.devno = "8:33", .partition = true, .holders = {"dm-0"}});
    t.Device("sdc1", test::Luks2Image("11111111-2222-4333-8444-555555555555"));
    t.Block("dm-0", {.devno = "253:0", .slaves = {"sdc1"}, .dm_name = "data1",
                     .dm_uuid = "CRYPT-LUKS2-11111111222243338444555555555555-data1"});
    t.Device("dm-0", test::XfsImage(0x04, "data1"));
    t.Block("sdd", {.devno = "8:48", .holders = {"dm-1"}});
    t.Device("sdd", test::LvmPvImage("PVPVPVPVPVPVPVPVPVPVPVPVPVPVPVPV"));
    t.Block("dm-1", {.devno = "253:1", .slaves = {"sdd"}, .dm_name = "vg-lv",
                     .dm_uuid = "LVM-abcdefabcdef"});
    t.Device("dm-1", test::Ext4Image(0x05, ""));
    t.Block("sde", {.devno = "8:64"});
    t.Device("sde", test::LvmPvImage("QVPVPVPVPVPVPVPVPVPVPVPVPVPVPVPV"));
    t.Block("sdf", {.devno = "8:80"});
    t.Device("sdf", test::SwapImage(0x06));
    t.Mount("8:1", "/", "ext4", "/dev/sda1");
    t.Mount("0:22", "/proc", "proc", "proc");
    t.Mount("8:2", "/boot", "ext4", "/dev/sda2");
    t.Mount("8:15", "/boot/efi", "vfat", "/dev/sda15");
    t.Mount("8:17", "/mnt", "ext4", "/dev/sdb1");
    t.Mount("253:0", "/data 1", "xfs", "/dev/mapper/data1");
    t.Mount("253:1", "/srv", "ext4", "/dev/mapper/vg-lv");
    t.Mount("253:1", "/var/www", "ext4", "/dev/mapper/vg-lv", "/www");  // a bind mount
    t.File("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/sdf  partition 1048572 0 -2\n"
                         "/swapfile file 1024 0 -3\n");
    t.File("etc/fstab",
           "UUID=01020304-0506-0708-090a-0b0c0d0e0f10 / ext4 defaults 0 1\n"
           "LABEL=boot /boot ext4 defaults 0 2\n"
           "/dev/disk/cloud/azure_resource-part1 /mnt auto defaults,nofail,comment=cloudconfig 0 2\n"
           "/dev/mapper/data1 /data\\0401 xfs nofail 0 0\n");
    t.File("etc/crypttab", "data1 UUID=11111111-2222-4333-8444-555555555555 /etc/k luks,nofail\n");
  }
  MachineTree t;
};

TEST_F(DiscoverTest, RolesAndOrder) {
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  std::vector<std::string> got;
  for (const auto& v : m->volumes)
    got.push_back(std::string(RoleName(v.role)) + " " + v.dev + " " + v.mountpoint);
  EXPECT_EQ(got, (std::vector<std::string>{
                     "OS /dev/sda1 /", "Boot /dev/sda2 /boot", "Boot /dev/sda15 /boot/efi",
                     "Data /dev/mapper/data1 /data 1", "Data /dev/mapper/vg-lv /srv",
                     "Swap /dev/sdf ", "Resource /dev/sdb1 /mnt", "Other /dev/sde "}));
  ASSERT_NE(m->os(), nullptr);
  EXPECT_EQ(m->os()->fstab->spec, "UUID=01020304-0506-0708-090a-0b0c0d0e0f10");
  EXPECT_EQ(m->boot()->fstab->spec, "LABEL=boot");
  EXPECT_EQ(m->data().size(), 2u);
  EXPECT_EQ(m->swaps, (std::vector<std::string>{"/dev/sdf", "/swapfile"}));
}

TEST_F(DiscoverTest, DmCryptOverPartitionWithCrypttab) {
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const Volume* v = m->data()[0];
  EXPECT_EQ(v->dev, "/dev/mapper/data1");
  EXPECT_EQ(v->fstype, "xfs");
  EXPECT_TRUE(v->encrypted);
  EXPECT_FALSE(v->is_luks);  // the mapping is plaintext; the LUKS header is on sdc1 below it
  ASSERT_TRUE(v->crypttab.has_value());
  EXPECT_EQ(v->crypttab->name, "data1");
  EXPECT_EQ(v->crypttab->options, "luks,nofail");
  ASSERT_TRUE(v->fstab.has_value());
  EXPECT_EQ(v->fstab->file, "/data 1");
  for (const auto& b : m->blocks)
    if (b.name == "sdc1") {
      EXPECT_EQ(b.signature, "luks2");
      EXPECT_EQ(b.holders, (std::vector<std::string>{"dm-0"}));
      EXPECT_EQ(b.parent, "sdc");
      EXPECT_TRUE(b.partition);
    }
  for (const auto& vol : m->volumes) EXPECT_NE(vol.dev, "/dev/sdc1");  // represented by dm-0
}

TEST_F(DiscoverTest, LvmLvAndUnusedPv) {
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const Volume* lv = m->data()[1];
  EXPECT_EQ(lv->mountpoint, "/srv");  // not the bind mount of a subdirectory at /var/www
  EXPECT_TRUE(lv->lvm_lv);
  EXPECT_FALSE(lv->encrypted);
  const Volume& pv = m->volumes.back();
  EXPECT_EQ(pv.dev, "/dev/sde");
  EXPECT_TRUE(pv.lvm_pv);
  EXPECT_EQ(pv.fstype, "LVM2_member");
}

TEST_F(DiscoverTest, LvmPhysicalDeviceAndBuiltOn) {
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const Volume* lv = m->data()[1];
  auto pv = LvmPhysicalDevice(*m, *lv);
  ASSERT_TRUE(pv.ok()) << pv.status().ToString();
  EXPECT_EQ(*pv, "/dev/sdd");
  EXPECT_TRUE(BuiltOn(*m, *lv, "vg-lv"));
  EXPECT_FALSE(BuiltOn(*m, *lv, "data1"));
  EXPECT_TRUE(BuiltOn(*m, *m->data()[0], "data1"));
  // Not an LV, or an LV over two PVs: refused with the devices named.
  EXPECT_EQ(LvmPhysicalDevice(*m, *m->os()).status().code(), Code::kUnsupported);
  t.Block("dm-1", {.devno = "253:1", .slaves = {"sdd", "sde"}, .dm_name = "vg-lv", .dm_uuid = "LVM-abcdefabcdef"});
  auto two = Discover(t.Root());
  ASSERT_TRUE(two.ok());
  auto spans = LvmPhysicalDevice(*two, *two->data()[1]);
  ASSERT_FALSE(spans.ok());
  EXPECT_NE(spans.status().message().find("/dev/sdd, /dev/sde"), std::string::npos) << spans.status().message();
}

TEST_F(DiscoverTest, ResourceDiskNeedsAHint) {
  // /mnt without a label or cloud-init's fstab mark is an ordinary data disk
  t.Device("sdb1", test::Ext4Image(0x03, "scratch"));
  t.File("etc/fstab", "/dev/sdb1 /mnt ext4 defaults 0 2\n");
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  bool found = false;
  for (const auto& v : m->volumes)
    if (v.dev == "/dev/sdb1") {
      found = true;
      EXPECT_EQ(v.role, VolumeRole::kData);
    }
  EXPECT_TRUE(found);
}

TEST_F(DiscoverTest, NestedMountsAreAllListed) {
  t.Block("sdg", {.devno = "8:96"});
  t.Block("sdh", {.devno = "8:112"});
  t.Mount("8:96", "/data3", "ext4", "/dev/sdg");
  t.Mount("8:112", "/data3/data4", "ext4", "/dev/sdh");
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  std::vector<std::string> data;
  for (const Volume* v : m->data()) data.push_back(v->mountpoint);
  EXPECT_EQ(data, (std::vector<std::string>{"/data 1", "/data3", "/data3/data4", "/srv"}));
}

TEST_F(DiscoverTest, BrokenFstabIsReportedWithThePath) {
  t.File("etc/fstab", "/dev/sda1\n");
  auto m = Discover(t.Root());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), Code::kCorrupt);
  EXPECT_NE(m.status().message().find("etc/fstab"), std::string::npos);
}

// Root on diskseal's prepared linear mapping (packaging/initramfs-tools, prepared mode): the OS
// volume is that mapping, not encrypted, and names the partition below it; any other dm mapping
// (an LV) names nothing.
TEST(DiscoverPrepared, RootOnThePreparedLinearMappingNamesThePartitionBelow) {
  test::MachineTree t;
  t.Block("vda", {.devno = "254:0"});
  t.Block("vda1", {.devno = "254:1", .partition = true});
  t.Block("vda2", {.devno = "254:2", .partition = true, .holders = {"dm-0"}});
  t.Device("vda1", test::Ext4Image(0x02, "boot"));
  t.Device("vda2", test::Ext4Image(0x01, "root"));
  t.Block("dm-0", {.devno = "253:0", .slaves = {"vda2"}, .dm_name = "osencrypt",
                   .dm_uuid = "DISKSEAL-LINEAR-01020304-0506-0708-090a-0b0c0d0e0f10-osencrypt"});
  t.Device("dm-0", test::Ext4Image(0x01, "root"));
  t.Block("dm-1", {.devno = "253:1", .slaves = {"vda1"}, .dm_name = "vg-lv", .dm_uuid = "LVM-abc"});
  t.Device("dm-1", test::Ext4Image(0x03, "srv"));
  t.Mount("253:0", "/", "ext4", "/dev/mapper/osencrypt");
  t.Mount("254:1", "/boot", "ext4", "/dev/vda1");
  t.Mount("253:1", "/srv", "ext4", "/dev/mapper/vg-lv");
  t.File("etc/fstab", "UUID=01020304-0506-0708-090a-0b0c0d0e0f10 / ext4 defaults 0 1\n");
  auto m = Discover(t.Root());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const Volume* os = m->os();
  ASSERT_NE(os, nullptr);
  EXPECT_EQ(os->dev, "/dev/mapper/osencrypt");
  EXPECT_EQ(os->prepared_from, "/dev/vda2");
  EXPECT_FALSE(os->encrypted);
  EXPECT_FALSE(os->lvm_lv);
  ASSERT_TRUE(os->fstab.has_value());
  EXPECT_EQ(os->fstab->file, "/");
  for (const Volume* d : m->data()) EXPECT_EQ(d->prepared_from, "") << d->mountpoint;
}

TEST(DiscoverLive, ThisMachine) {
  MachineRoot root;
  root.env = PosixEnv();
  auto m = Discover(root);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_FALSE(m->mounts.empty());
  bool root_mount = false;
  for (const auto& mt : m->mounts) root_mount |= mt.mountpoint == "/";
  EXPECT_TRUE(root_mount);
}

}  // namespace
}  // namespace ds::machine
