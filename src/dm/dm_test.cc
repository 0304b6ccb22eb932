// What the dm part decides without a kernel: UUIDs, target parameters, validation. Activation
// against the real kernel runs in the QEMU guest (tests/vm/dm_vm_test.cc).
#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include "dm/dm.h"

namespace ds::dm {
namespace {

std::string Str(const SecureBuffer& b) { return std::string(b.view().substr(0, b.size() - 1)); }

TEST(DmTest, UuidFollowsCryptsetup) {
  EXPECT_EQ(MakeUuid("8f3e4d2a-1b2c-4d5e-8f90-0123456789ab", "data"),
            "CRYPT-LUKS2-8f3e4d2a1b2c4d5e8f900123456789ab-data");
}

TEST(DmTest, CryptParamsCarryKeyIvOffsetAndSectorSize) {
  const uint8_t key[4] = {0x00, 0x1f, 0xa0, 0xff};
  Segment s;
  s.cipher = "aes-xts-plain64";
  s.device_sector = 32768;
  s.iv_offset = 8;
  s.sector_size = 4096;
  s.key = key;
  auto p = TargetParams(s, "254:0");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Str(*p), "aes-xts-plain64 001fa0ff 8 254:0 32768 1 sector_size:4096");
  EXPECT_EQ(p->data()[p->size() - 1], 0);  // NUL-terminated for libdevmapper
  s.sector_size = 512;
  p = TargetParams(s, "254:0");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Str(*p), "aes-xts-plain64 001fa0ff 8 254:0 32768");
}

TEST(DmTest, LinearParams) {
  Segment s;
  s.type = Segment::Type::kLinear;
  s.device_sector = 2048;
  auto p = TargetParams(s, "8:16");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Str(*p), "8:16 2048");
}

// The online helper: reads and writes to its own device, empty flushes to the data device, no delay.
TEST(DmTest, SplitFlushParamsSendFlushesToTheActivationsDevice) {
  Segment s;
  s.type = Segment::Type::kSplitFlush;
  s.device_sector = 0;
  auto p = TargetParams(s, "253:4", "8:16");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(Str(*p), "253:4 0 0 253:4 0 0 8:16 0 0");
  EXPECT_EQ(TargetParams(s, "253:4").status().code(), Code::kInvalidArgument);
  Activation a;
  a.name = "v-dshz";
  a.device = "/dev/vda";
  s.sectors = 64;
  a.segments = {s};
  EXPECT_EQ(Validate(a).code(), Code::kInvalidArgument);  // no device of its own
  a.segments[0].device = "/dev/mapper/v-dshzq";
  EXPECT_TRUE(Validate(a).ok());
}

TEST(DmTest, ValidateRejectsBadActivations) {
  uint8_t key[64] = {};
  Segment crypt;
  crypt.cipher = "aes-xts-plain64";
  crypt.sectors = 64;
  crypt.sector_size = 4096;
  crypt.key = key;
  Activation a;
  a.name = "v";
  a.device = "/dev/vda";
  a.segments = {crypt};
  EXPECT_TRUE(Validate(a).ok()) << Validate(a).ToString();

  Activation b = a;
  b.segments.clear();
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
  b = a;
  b.segments[0].key = {};
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
  b = a;
  b.segments[0].sectors = 12;  // 6 KiB: not whole 4 KiB sectors
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
  b = a;
  b.segments[0].sector_size = 3000;
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
  b = a;
  b.segments[0].cipher = "serpent-lrw-benbi";
  EXPECT_EQ(Validate(b).code(), Code::kUnsupported);
  b = a;
  b.name = "a/b";
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
  b = a;
  b.segments[0].sectors = 0;
  EXPECT_EQ(Validate(b).code(), Code::kInvalidArgument);
}

TEST(DmTest, StaleMeansNoUsableTable) {
  MappingInfo m;
  m.live_table = false;
  EXPECT_TRUE(IsStale(m));
  m.live_table = true;
  m.target_types = {"crypt"};
  EXPECT_FALSE(IsStale(m));
  m.uuid = "CRYPT-LUKS2-abc-x";
  EXPECT_TRUE(IsLuks2(m));
  m.uuid = "CRYPT-PLAIN-x";
  EXPECT_FALSE(IsLuks2(m));
}

// A live table's targets as the kernel reports their parameters: the device and the offset on it.
TEST(DmTest, TargetDeviceAndOffsetFromTheKernelsParameters) {
  TargetInfo lin;
  lin.type = "linear";
  ParseTargetDevice("254:2 0", lin);
  EXPECT_EQ(lin.device, makedev(254, 2));
  EXPECT_EQ(lin.device_sector, 0u);
  ParseTargetDevice("8:16 2048", lin);
  EXPECT_EQ(lin.device, makedev(8, 16));
  EXPECT_EQ(lin.device_sector, 2048u);
  TargetInfo crypt;
  crypt.type = "crypt";
  ParseTargetDevice("aes-xts-plain64 :64:logon:cryptsetup:x 8 254:3 32768 1 sector_size:4096", crypt);
  EXPECT_EQ(crypt.device, makedev(254, 3));
  EXPECT_EQ(crypt.device_sector, 32768u);
  TargetInfo err;
  err.type = "error";
  ParseTargetDevice("", err);
  EXPECT_EQ(err.device, 0u);
  TargetInfo bad;
  bad.type = "linear";
  ParseTargetDevice("notadevice 12", bad);  // no device: no offset either
  EXPECT_EQ(bad.device, 0u);
  EXPECT_EQ(bad.device_sector, 0u);
}

// The initramfs's prepared root mapping is recognised by its dm UUID prefix alone.
TEST(DmTest, PreparedLinearByUuidPrefix) {
  EXPECT_TRUE(IsPreparedLinear("DISKSEAL-LINEAR-0b6e6a3c-6d1c-4a0b-9b41-54c4e1f0a7d2-osencrypt"));
  EXPECT_TRUE(IsPreparedLinear(std::string(kPreparedLinearUuidPrefix) + "none-osencrypt"));
  EXPECT_FALSE(IsPreparedLinear("CRYPT-LUKS2-0b6e6a3c6d1c4a0b9b4154c4e1f0a7d2-osencrypt"));
  EXPECT_FALSE(IsPreparedLinear("DISKSEAL-HOTZONE-x-osencrypt"));
  EXPECT_FALSE(IsPreparedLinear(""));
}

// Where the kernel has no device-mapper (these hosts), activation fails with a clear message.
TEST(DmTest, WithoutDeviceMapperCreateIsUnsupported) {
  if (Available()) GTEST_SKIP() << "this kernel has device-mapper; covered by the vm tests";
  uint8_t key[64] = {};
  Segment crypt;
  crypt.cipher = "aes-xts-plain64";
  crypt.sectors = 64;
  crypt.key = key;
  Activation a;
  a.name = "v";
  a.device = "/dev/null";
  a.segments = {crypt};
  Status s = Create(a);
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("--userspace"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace ds::dm
