#include "crypto/crypto.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "testlib.h"

namespace ds {
namespace {

TEST(Pbkdf2, Rfc7914Vector) {
  Bytes out(64);
  ASSERT_TRUE(Pbkdf2("sha256", AsBytes("passwd"), AsBytes("salt"), 1, out).ok());
  EXPECT_EQ(HexEncode(out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
            "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783");
}

TEST(Pbkdf2, UnknownHashIsUnsupported) {
  Bytes out(32);
  EXPECT_EQ(Pbkdf2("nohash", AsBytes("a"), AsBytes("b"), 1000, out).code(), Code::kUnsupported);
}

TEST(Argon2, ReferenceVectors) {
  // From the Argon2 reference implementation's test suite (version 0x13, t=2, m=2^16, p=1).
  Bytes out(32);
  ASSERT_TRUE(Argon2(Argon2Type::kArgon2i, AsBytes("password"), AsBytes("somesalt"), 2, 1 << 16, 1,
                     out).ok());
  EXPECT_EQ(HexEncode(out), "c1628832147d9720c5bd1cfd61367078729f6dfb6f8fea9ff98158e0d7816ed0");
  ASSERT_TRUE(Argon2(Argon2Type::kArgon2id, AsBytes("password"), AsBytes("somesalt"), 2, 1 << 16,
                     1, out).ok());
  EXPECT_EQ(HexEncode(out), "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7");
}

TEST(SectorCipher, Ieee1619Vector4) {
  // IEEE P1619 XTS-AES-128 vector 4: data unit 0, plaintext 00..ff twice.
  auto key = HexDecode("2718281828459045235360287471352631415926535897932384626433832795");
  ASSERT_TRUE(key);
  auto c = SectorCipher::Create("aes-xts-plain64", *key);
  ASSERT_TRUE(c.ok()) << c.status().message();
  Bytes data(512);
  for (size_t i = 0; i < 512; ++i) data[i] = uint8_t(i);
  ASSERT_TRUE((*c)->Encrypt(data, 0, 512).ok());
  EXPECT_EQ(HexEncode(std::span<const uint8_t>(data.data(), 32)),
            "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c");
  ASSERT_TRUE((*c)->Decrypt(data, 0, 512).ok());
  for (size_t i = 0; i < 512; ++i) ASSERT_EQ(data[i], uint8_t(i));
}

TEST(SectorCipher, LargeSectorsUse512ByteIvUnits) {
  Bytes key(64);
  ASSERT_TRUE(RandomBytes(key).ok());
  auto c = SectorCipher::Create("aes-xts-plain64", key);
  ASSERT_TRUE(c.ok());
  Bytes a(8192, 7), b(4096, 7);
  ASSERT_TRUE((*c)->Encrypt(a, 0, 4096).ok());
  // the second 4096-byte sector's IV is 8 (its offset in 512-byte units)
  ASSERT_TRUE((*c)->Encrypt(b, 8, 4096).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), a.begin() + 4096));
}

TEST(SectorCipher, RejectsUnknownSpecAndBadKeySize) {
  Bytes key(64);
  EXPECT_EQ(SectorCipher::Create("serpent-xts-plain64", key).status().code(), Code::kUnsupported);
  Bytes k48(48);
  EXPECT_EQ(SectorCipher::Create("aes-xts-plain64", k48).status().code(), Code::kInvalidArgument);
}

TEST(Hasher, StreamedEqualsOneShotAndEndsAtFinal) {
  Bytes data = test::RandomData(3 << 20, 7);
  for (const char* hash : {"sha1", "sha256", "sha512"}) {
    auto h = Hasher::Create(hash);
    ASSERT_TRUE(h.ok());
    for (size_t at = 0; at < data.size(); at += 100000)
      ASSERT_TRUE(h->Update(std::span<const uint8_t>(data).subspan(at, std::min<size_t>(100000, data.size() - at))).ok());
    auto streamed = h->Final();
    ASSERT_TRUE(streamed.ok());
    auto whole = Hash(hash, data);
    ASSERT_TRUE(whole.ok());
    EXPECT_EQ(*streamed, *whole) << hash;
    EXPECT_FALSE(h->Update(data).ok());
    EXPECT_FALSE(h->Final().ok());
  }
  EXPECT_EQ(Hasher::Create("no-such-hash").status().code(), Code::kUnsupported);
}

// The AF diffusion hashes be32(i) || chunk per digest-sized chunk (LUKS1 af.c): pinned with a
// digest computed independently from Hash, so the faster Diffuse stays the same function.
TEST(AfSplitter, MergeOfKnownStripesMatchesTheDefinition) {
  // Two stripes of 40 bytes, sha256 (32-byte digests: a full chunk and an 8-byte tail).
  Bytes s0 = test::RandomData(40, 1), s1 = test::RandomData(40, 2);
  Bytes split = s0;
  split.insert(split.end(), s1.begin(), s1.end());
  Bytes expect(40);
  for (size_t i = 0; i < 2; ++i) {
    const size_t len = i == 0 ? 32 : 8;
    Bytes in = {0, 0, 0, uint8_t(i)};
    in.insert(in.end(), s0.begin() + i * 32, s0.begin() + i * 32 + len);
    auto h = Hash("sha256", in);
    ASSERT_TRUE(h.ok());
    for (size_t j = 0; j < len; ++j) expect[i * 32 + j] = (*h)[j] ^ s1[i * 32 + j];
  }
  Bytes key(40);
  ASSERT_TRUE(AfMerge(split, 2, "sha256", key).ok());
  EXPECT_EQ(key, expect);
}

TEST(AfSplitter, RoundTripAndDiffusion) {
  for (const char* hash : {"sha1", "sha256", "sha512"}) {
    Bytes key(64);
    ASSERT_TRUE(RandomBytes(key).ok());
    Bytes split(4000 * 64);
    ASSERT_TRUE(AfSplit(key, 4000, hash, split).ok());
    Bytes back(64);
    ASSERT_TRUE(AfMerge(split, 4000, hash, back).ok());
    EXPECT_EQ(back, key) << hash;
    split[12345] ^= 1;  // one flipped bit anywhere destroys the key
    ASSERT_TRUE(AfMerge(split, 4000, hash, back).ok());
    EXPECT_NE(back, key) << hash;
  }
}

}  // namespace
}  // namespace ds
