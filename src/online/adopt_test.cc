// The pure rules of adopting a device-mapper device (online/adopt.h). The kernel side (the raw
// copy, the switch, the release) runs in the QEMU guest: tests/vm/online_vm_test.cc
// (VmOnline.LogicalVolumeEnableAndDisableWithoutRemount).
#include "online/adopt.h"

#include <sys/sysmacros.h>

#include <gtest/gtest.h>

namespace ds::online {
namespace {

dm::MappingInfo Lv() {
  dm::MappingInfo m;
  m.name = "vg-data";
  m.uuid = "LVM-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz01";
  m.live_table = true;
  return m;
}

dm::TargetInfo Linear(uint64_t start, uint64_t sectors, uint64_t offset, unsigned minor = 16) {
  dm::TargetInfo t;
  t.start = start;
  t.sectors = sectors;
  t.type = "linear";
  t.device = makedev(8, minor);
  t.device_sector = offset;
  return t;
}

TEST(Adopt, OneLinearTargetIsAdopted) {
  EXPECT_EQ(AdoptRefusal(Lv(), {Linear(0, 131072, 2048)}), "");
}

TEST(Adopt, SeveralLinearSegmentsOnSeveralDevicesAreAdopted) {
  EXPECT_EQ(AdoptRefusal(Lv(), {Linear(0, 1000, 2048), Linear(1000, 500, 8192, 32)}), "");
}

TEST(Adopt, MappingWithoutUuidIsAdopted) {
  dm::MappingInfo m = Lv();
  m.uuid.clear();
  EXPECT_EQ(AdoptRefusal(m, {Linear(0, 8, 0)}), "");
}

TEST(Adopt, NonLinearTargetsAreRefusedNamingTheType) {
  for (const char* type : {"thin", "snapshot", "snapshot-origin", "raid", "mirror", "cache", "striped", "crypt"}) {
    dm::TargetInfo t = Linear(0, 100, 0);
    t.type = type;
    const std::string why = AdoptRefusal(Lv(), {Linear(0, 50, 0), [&] { t.start = 50; return t; }()});
    EXPECT_NE(why.find(std::string("a ") + type + " target"), std::string::npos) << why;
    EXPECT_NE(why.find("only linear"), std::string::npos) << why;
  }
}

TEST(Adopt, OwnAndLuksMappingsAreRefused) {
  dm::MappingInfo m = Lv();
  m.uuid = "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-vol";
  EXPECT_NE(AdoptRefusal(m, {Linear(0, 8, 0)}).find("already encrypted"), std::string::npos);
  m.uuid = "DISKSEAL-HOTZONE-x-vol";
  EXPECT_NE(AdoptRefusal(m, {Linear(0, 8, 0)}).find("diskseal"), std::string::npos);
}

TEST(Adopt, SuspendedReadOnlyOrTablelessDevicesAreRefused) {
  dm::MappingInfo m = Lv();
  m.suspended = true;
  EXPECT_NE(AdoptRefusal(m, {Linear(0, 8, 0)}).find("suspended"), std::string::npos);
  m = Lv();
  m.read_only = true;
  EXPECT_NE(AdoptRefusal(m, {Linear(0, 8, 0)}).find("read-only"), std::string::npos);
  m = Lv();
  m.live_table = false;
  EXPECT_NE(AdoptRefusal(m, {}).find("no live"), std::string::npos);
  EXPECT_NE(AdoptRefusal(Lv(), {}).find("no live"), std::string::npos);
}

TEST(Adopt, GapsInTheTableAreRefused) {
  EXPECT_NE(AdoptRefusal(Lv(), {Linear(0, 8, 0), Linear(16, 8, 0)}).find("contiguous"), std::string::npos);
  EXPECT_NE(AdoptRefusal(Lv(), {Linear(8, 8, 0)}).find("contiguous"), std::string::npos);
}

TEST(Adopt, TablesCompareTargetByTarget) {
  // Release and the take-over in RunOnline compare whole tables: device, offset and length.
  EXPECT_TRUE((std::vector<dm::TargetInfo>{Linear(0, 8, 2048)}) == (std::vector<dm::TargetInfo>{Linear(0, 8, 2048)}));
  EXPECT_FALSE((std::vector<dm::TargetInfo>{Linear(0, 8, 2048)}) == (std::vector<dm::TargetInfo>{Linear(0, 8, 4096)}));
  EXPECT_FALSE((std::vector<dm::TargetInfo>{Linear(0, 8, 2048)}) ==
               (std::vector<dm::TargetInfo>{Linear(0, 8, 2048, 17)}));
}

TEST(Adopt, RawDeviceIsNamedAfterTheMapping) {
  EXPECT_EQ(RawName("vg-data"), "vg-data-dsraw");
  EXPECT_EQ(RawPath("vg-data"), "/dev/mapper/vg-data-dsraw");
}

TEST(Adopt, NothingIsForeignWhereThereIsNoDeviceMapper) {
  // The host kernel has no device-mapper; a regular file is never a mapping either way.
  auto f = ForeignMappingAt("/etc/hostname");
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->has_value());
  auto why = AdoptRefusalAt("/etc/hostname");
  ASSERT_TRUE(why.ok());
  EXPECT_EQ(*why, "");
}

}  // namespace
}  // namespace ds::online
