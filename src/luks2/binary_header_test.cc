#include "luks2/binary_header.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "luks2/format.h"

namespace ds::luks2 {
namespace {

BinaryHeader Sample() {
  BinaryHeader h;
  h.hdr_size = 16384;
  h.seqid = 7;
  h.label = "data";
  h.uuid = "5b2f4e1c-7b1e-4d2a-9a41-0f7c1d9b2a11";
  h.subsystem = "sub";
  h.salt.fill(0x5a);
  return h;
}

TEST(BinaryHeader, LayoutMatchesTheSpecification) {
  Bytes b = EncodeBinaryHeader(Sample());
  ASSERT_EQ(b.size(), 4096u);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "LUKS");
  EXPECT_EQ(b[4], 0xba);
  EXPECT_EQ(b[5], 0xbe);
  EXPECT_EQ(GetBe16(&b[6]), 2);
  EXPECT_EQ(GetBe64(&b[8]), 16384u);
  EXPECT_EQ(GetBe64(&b[16]), 7u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(&b[24])), "data");
  EXPECT_EQ(std::string(reinterpret_cast<char*>(&b[72])), "sha256");
  EXPECT_EQ(b[104], 0x5a);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(&b[168])), Sample().uuid);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(&b[208])), "sub");
  EXPECT_EQ(GetBe64(&b[256]), 0u);
}

TEST(BinaryHeader, RoundTripsPrimaryAndSecondary) {
  for (bool secondary : {false, true}) {
    BinaryHeader h = Sample();
    h.secondary = secondary;
    h.hdr_offset = secondary ? 16384 : 0;
    auto back = DecodeBinaryHeader(EncodeBinaryHeader(h), secondary, h.hdr_offset);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->seqid, 7u);
    EXPECT_EQ(back->label, "data");
    EXPECT_EQ(back->uuid, h.uuid);
    EXPECT_EQ(back->salt, h.salt);
  }
}

TEST(BinaryHeader, EveryRuleIsEnforced) {
  Bytes good = EncodeBinaryHeader(Sample());
  struct Case { const char* name; std::function<void(Bytes&)> damage; const char* msg; };
  std::vector<Case> cases = {
      {"magic", [](Bytes& b) { b[0] = 'X'; }, "magic"},
      {"version", [](Bytes& b) { PutBe16(&b[6], 1); }, "version"},
      {"hdr_size", [](Bytes& b) { PutBe64(&b[8], 12345); }, "hdr_size"},
      {"hdr_size huge", [](Bytes& b) { PutBe64(&b[8], UINT64_MAX); }, "hdr_size"},
      {"hdr_offset", [](Bytes& b) { PutBe64(&b[256], 4096); }, "hdr_offset"},
      {"label unterminated", [](Bytes& b) { std::fill(&b[24], &b[72], 'a'); }, "label"},
      {"uuid garbage after NUL", [](Bytes& b) { b[168 + 39] = 'x'; }, "uuid"},
      {"csum_alg unknown", [](Bytes& b) { std::memcpy(&b[72], "nohash\0", 7); }, "checksum"},
      {"reserved bytes", [](Bytes& b) { b[300] = 1; }, "reserved"},
      {"padding", [](Bytes& b) { b[4000] = 1; }, "reserved"},
  };
  for (auto& c : cases) {
    Bytes b = good;
    c.damage(b);
    auto r = DecodeBinaryHeader(b, false, 0);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_NE(r.status().message().find(c.msg), std::string::npos) << c.name << ": " << r.status().message();
  }
  EXPECT_FALSE(DecodeBinaryHeader(good, true, 0).ok());  // primary magic where a secondary belongs
}

TEST(BinaryHeader, ChecksumCoversHeaderAndJsonArea) {
  BinaryHeader h = Sample();
  Bytes area(16384 - 4096, 0);
  area[0] = '{';
  auto c1 = ComputeChecksum(h, area);
  area[100] = 1;
  auto c2 = ComputeChecksum(h, area);
  h.seqid++;
  area[100] = 0;
  auto c3 = ComputeChecksum(h, area);
  ASSERT_TRUE(c1.ok() && c2.ok() && c3.ok());
  EXPECT_EQ(c1->size(), 32u);
  EXPECT_NE(*c1, *c2);
  EXPECT_NE(*c1, *c3);
  h.seqid--;
  h.csum.fill(0xff);  // the stored checksum itself is not covered
  EXPECT_EQ(*ComputeChecksum(h, area), *c1);
}

}  // namespace
}  // namespace ds::luks2
