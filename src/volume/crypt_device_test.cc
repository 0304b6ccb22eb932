#include "volume/crypt_device.h"

#include <gtest/gtest.h>

#include "io/mem_device.h"
#include "testlib.h"

namespace ds {
namespace {

std::unique_ptr<SectorCipher> MakeCipher(uint8_t seed) {
  Bytes key(64);
  for (size_t i = 0; i < key.size(); ++i) key[i] = uint8_t(seed + i * 7);
  return std::move(SectorCipher::Create("aes-xts-plain64", key)).value();
}

TEST(CryptDevice, RoundTripsAlignedAndUnaligned) {
  for (uint32_t ss : {512u, 4096u}) {
    MemDevice raw("raw", 1 << 20);
    CryptDevice dev(&raw, 65536, (1 << 20) - 65536, MakeCipher(1), ss, 0);
    Bytes data = test::RandomData(100000, ss);
    ASSERT_TRUE(dev.WriteAt(12345, data).ok());
    Bytes back(data.size());
    ASSERT_TRUE(dev.ReadAt(12345, back).ok());
    EXPECT_EQ(back, data);
    // what is on disk is not the plaintext
    Bytes on_disk(4096);
    ASSERT_TRUE(raw.ReadAt(65536 + 16384, on_disk).ok());
    EXPECT_FALSE(std::equal(on_disk.begin(), on_disk.end(), data.begin() + (16384 - 12345)));
  }
}

TEST(CryptDevice, MatchesDirectSectorEncryption) {
  MemDevice raw("raw", 1 << 16);
  CryptDevice dev(&raw, 4096, 1 << 15, MakeCipher(2), 4096, 100);
  Bytes plain = test::RandomData(8192, 3);
  ASSERT_TRUE(dev.WriteAt(8192, plain).ok());
  Bytes expect = plain;
  ASSERT_TRUE(MakeCipher(2)->Encrypt(expect, 100 + 8192 / 512, 4096).ok());
  Bytes got(8192);
  ASSERT_TRUE(raw.ReadAt(4096 + 8192, got).ok());
  EXPECT_EQ(got, expect);
}

TEST(CryptDevice, BoundsAreEnforced) {
  MemDevice raw("raw", 1 << 16);
  CryptDevice dev(&raw, 4096, 8192, MakeCipher(1), 512, 0);
  Bytes b(1024);
  EXPECT_EQ(dev.ReadAt(8000, b).code(), Code::kIOError);
  EXPECT_EQ(dev.WriteAt(7681, b).code(), Code::kIOError);
}

TEST(CryptDevice, LinearIsPlaintext) {
  MemDevice raw("raw", 1 << 16);
  CryptDevice dev(&raw, 1024, 4096, nullptr, 512, 0);
  Bytes data(100, 0x5a);
  ASSERT_TRUE(dev.WriteAt(7, data).ok());
  Bytes got(100);
  ASSERT_TRUE(raw.ReadAt(1031, got).ok());
  EXPECT_EQ(got, data);
}

}  // namespace
}  // namespace ds
