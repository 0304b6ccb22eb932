// What the online part decides without a kernel: whether a live table is the initramfs's 1:1
// linear mapping, and whether it is a volume's table (the prepared root, dm_online.h), against
// headers made and half-encrypted by the real engine. Switching tables against the kernel runs in
// the Debian guest (tests/vm/os_enable_vm_test.cc).
#include "online/dm_online.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>

#include <sstream>

#include "inplace/inplace.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::online {
namespace {

const dev_t kDev = makedev(254, 2);
const dev_t kHelper = makedev(253, 7);

dm::TargetInfo T(uint64_t start, uint64_t sectors, const char* type, dev_t dev, uint64_t dev_sector) {
  dm::TargetInfo t;
  t.start = start;
  t.sectors = sectors;
  t.type = type;
  t.device = dev;
  t.device_sector = dev_sector;
  return t;
}

TEST(PreparedMappingTest, OneToOneLinearIsTheWholeDeviceAtOffsetZero) {
  EXPECT_TRUE(IsLinearOneToOne({T(0, 1000, "linear", kDev, {})}, kDev, 1000));
  EXPECT_FALSE(IsLinearOneToOne({T(0, 1000, "linear", kDev, {})}, kDev, 1001));         // not all of it
  EXPECT_FALSE(IsLinearOneToOne({T(0, 1000, "linear", kDev, 8)}, kDev, 1000));         // shifted
  EXPECT_FALSE(IsLinearOneToOne({T(0, 1000, "linear", makedev(8, 1), 0)}, kDev, 1000));  // another device
  EXPECT_FALSE(IsLinearOneToOne({T(0, 1000, "crypt", kDev, {})}, kDev, 1000));
  EXPECT_FALSE(IsLinearOneToOne({T(0, 500, "linear", kDev, {}), T(500, 500, "linear", kDev, 500)}, kDev, 1000));
  EXPECT_FALSE(IsLinearOneToOne({}, kDev, 1000));
  EXPECT_FALSE(IsLinearOneToOne({T(0, 0, "linear", kDev, {})}, kDev, {}));
}

TEST(PreparedMappingTest, FollowsLayoutTargetByTarget) {
  const std::vector<LayoutPiece> plain = {{1000, 0, false}};
  const std::vector<LayoutPiece> half = {{400, 0, true}, {600, 400, false}};
  // Nothing encrypted yet: the initramfs's table is the header's.
  EXPECT_TRUE(FollowsLayout({T(0, 1000, "linear", kDev, {})}, plain, kDev, {}));
  // Half encrypted, as dm::VolumeSegments maps it; also with the pieces split further.
  EXPECT_TRUE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(400, 600, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_TRUE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(400, 100, "linear", kDev, 400),
                             T(500, 500, "linear", kDev, 500)},
                            half, kDev, {}));
  // A zone held by an online run: its range goes over the helper device.
  const std::vector<dm::TargetInfo> held = {T(0, 400, "crypt", kDev, {}), T(400, 64, "crypt", kHelper, 400),
                                            T(464, 536, "linear", kDev, 464)};
  EXPECT_TRUE(FollowsLayout(held, half, kDev, {kHelper}));
  EXPECT_FALSE(FollowsLayout(held, half, kDev, {}));  // without the helper known it is a foreign device
  // The 1:1 table once part of the device is encrypted: the users would read ciphertext.
  EXPECT_FALSE(FollowsLayout({T(0, 1000, "linear", kDev, {})}, half, kDev, {}));
  // Wrong kind, offset, device, a gap, short, too long, a target across two pieces.
  EXPECT_FALSE(FollowsLayout({T(0, 400, "linear", kDev, {}), T(400, 600, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", kDev, 8), T(400, 600, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", makedev(8, 1), 0), T(400, 600, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(500, 500, "linear", kDev, 500)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(400, 500, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(400, 700, "linear", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 500, "crypt", kDev, {}), T(500, 500, "linear", kDev, 500)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({T(0, 400, "crypt", kDev, {}), T(400, 600, "error", kDev, 400)}, half, kDev, {}));
  EXPECT_FALSE(FollowsLayout({}, plain, kDev, {}));
}

// The layout comes from the header as the engine records it: before the first zone, one
// plaintext piece over the whole device; part way, the encrypted part then the rest.
TEST(PreparedMappingTest, HeaderLayoutOfAnEncryptionBeforeAndPartWay) {
  test::TempDir dir;
  const std::string dev = dir / "disk.img", hdr = dir / "hdr";
  constexpr uint64_t kSize = 8u << 20;
  test::WriteFile(dev, std::string(kSize, 'x'));
  inplace::FormatRequest fr;
  fr.device = dev;
  fr.temp_header = hdr;
  fr.format = test::FastFormat();
  fr.passphrase = []() -> Result<SecureBuffer> {
    SecureBuffer p(2);
    p.data()[0] = 'p';
    p.data()[1] = 'w';
    return p;
  };
  std::ostringstream log;
  auto made = inplace::FormatAndEscrow(*PosixEnv(), fr, log);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  {
    auto v = luks2::Volume::Load(*PosixEnv(), dev, hdr, false);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    auto layout = HeaderLayout(*v);
    ASSERT_TRUE(layout.ok()) << layout.status().ToString();
    ASSERT_EQ(layout->size(), 1u);
    EXPECT_EQ((*layout)[0].sectors, kSize / 512);
    EXPECT_EQ((*layout)[0].device_sector, 0u);
    EXPECT_FALSE((*layout)[0].crypt);
    EXPECT_TRUE(FollowsLayout({T(0, kSize / 512, "linear", kDev, {})}, *layout, kDev, {}));
  }
  inplace::RunRequest rq;
  rq.device = dev;
  rq.header = hdr;
  rq.unlock = [](luks2::Volume& v) { return v.UnlockAll(AsBytes("pw")); };
  rq.hotzone_bytes = 1u << 20;
  rq.stop_after = 3u << 20;
  Status ran = inplace::RunOperation(*PosixEnv(), rq, log, nullptr);
  ASSERT_EQ(ran.code(), Code::kInterrupted) << ran.ToString();
  auto v = luks2::Volume::Load(*PosixEnv(), dev, hdr, false);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  auto layout = HeaderLayout(*v);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ASSERT_EQ(layout->size(), 2u);
  const LayoutPiece done = (*layout)[0], rest = (*layout)[1];
  EXPECT_TRUE(done.crypt);
  EXPECT_FALSE(rest.crypt);
  EXPECT_GE(done.sectors, (3u << 20) / 512);
  EXPECT_EQ(done.device_sector, 0u);
  EXPECT_EQ(rest.device_sector, done.sectors);
  EXPECT_EQ(done.sectors + rest.sectors, kSize / 512);
  EXPECT_TRUE(FollowsLayout({T(0, done.sectors, "crypt", kDev, {}), T(done.sectors, rest.sectors, "linear", kDev, done.sectors)},
                            *layout, kDev, {}));
  // The initramfs's table no longer is this volume's: adoption would be refused.
  EXPECT_FALSE(FollowsLayout({T(0, kSize / 512, "linear", kDev, {})}, *layout, kDev, {}));
}

// The run's steps load NAME with linear targets onto its crypt helpers wherever a helper
// expresses the segment exactly; anything else keeps its own crypt target.
TEST(CryptHelperRouting, LinearOntoTheHelperOnlyWhereItMapsTheSameBytes) {
  const std::vector<uint8_t> key(64, 7), other(64, 8);
  auto crypt = [](uint64_t sectors, uint64_t dev_sector, uint64_t iv, std::span<const uint8_t> k,
                  std::string device = "") {
    dm::Segment s;
    s.type = dm::Segment::Type::kCrypt;
    s.sectors = sectors;
    s.device_sector = dev_sector;
    s.iv_offset = iv;
    s.cipher = "aes-xts-plain64";
    s.sector_size = 4096;
    s.key = k;
    s.device = std::move(device);
    return s;
  };
  dm::Segment lin;
  lin.type = dm::Segment::Type::kLinear;
  lin.sectors = 600;
  lin.device_sector = 400;
  // The new layout over the data device from sector 0, and over the hotzone helper.
  const std::vector<CryptHelper> helpers = {{"/dev/mapper/v-dshzd", crypt(1000, 0, 0, key)},
                                            {"/dev/mapper/v-dshzn", crypt(1000, 0, 0, key, "/dev/mapper/v-dshz")}};
  const std::vector<dm::Segment> table = {crypt(400, 0, 0, key), crypt(64, 400, 400, key, "/dev/mapper/v-dshz"),
                                          lin};
  auto routed = RouteOverCryptHelpers(table, helpers);
  ASSERT_EQ(routed.size(), 3u);
  EXPECT_EQ(routed[0].type, dm::Segment::Type::kLinear);
  EXPECT_EQ(routed[0].device, "/dev/mapper/v-dshzd");
  EXPECT_EQ(routed[0].device_sector, 0u);
  EXPECT_EQ(routed[0].sectors, 400u);
  EXPECT_EQ(routed[1].type, dm::Segment::Type::kLinear);
  EXPECT_EQ(routed[1].device, "/dev/mapper/v-dshzn");  // the hotzone: over the helper above the queue
  EXPECT_EQ(routed[1].device_sector, 400u);
  EXPECT_EQ(routed[1].sectors, 64u);
  EXPECT_EQ(routed[2].type, dm::Segment::Type::kLinear);  // plaintext stays as it was
  EXPECT_EQ(routed[2].device, "");
  EXPECT_EQ(routed[2].device_sector, 400u);
  // A helper starting further on: the offset inside it, the IV following.
  const std::vector<CryptHelper> shifted = {{"/dev/mapper/v-dshzo", crypt(1000, 32, 5, key)}};
  auto r = RouteOverCryptHelpers({crypt(100, 132, 105, key)}, shifted);
  EXPECT_EQ(r[0].type, dm::Segment::Type::kLinear);
  EXPECT_EQ(r[0].device_sector, 100u);
  // Kept as crypt: another key, an IV that does not follow the sector, before the helper, past
  // its end, another sector size, another device.
  for (const dm::Segment& s : {crypt(100, 132, 105, other), crypt(100, 132, 104, key), crypt(10, 0, 0, key),
                               crypt(100, 1000, 973, key), crypt(100, 132, 105, key, "/dev/mapper/v-dshz")}) {
    auto k = RouteOverCryptHelpers({s}, shifted);
    EXPECT_EQ(k[0].type, dm::Segment::Type::kCrypt) << s.device_sector << " " << s.iv_offset;
    EXPECT_EQ(k[0].device_sector, s.device_sector);
  }
  dm::Segment small = crypt(100, 132, 105, key);
  small.sector_size = 512;
  EXPECT_EQ(RouteOverCryptHelpers({small}, shifted)[0].type, dm::Segment::Type::kCrypt);
  EXPECT_EQ(RouteOverCryptHelpers(table, {})[0].type, dm::Segment::Type::kCrypt);  // no helpers: unchanged
}

}  // namespace
}  // namespace ds::online
