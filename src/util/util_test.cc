#include <gtest/gtest.h>

#include "util/bytes.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds {
namespace {

TEST(Bytes, Base64RoundTripAllLengths) {
  for (size_t n = 0; n < 70; ++n) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) b[i] = uint8_t(i * 37 + n);
    EXPECT_EQ(*Base64Decode(Base64Encode(b)), b);
    EXPECT_EQ(*Base64UrlDecode(Base64UrlEncode(b)), b);
  }
  EXPECT_EQ(Base64Encode(AsBytes("foobar")), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode(AsBytes("fo")), "Zm8=");
  EXPECT_FALSE(Base64Decode("Zm9v*mFy"));
  EXPECT_FALSE(Base64Decode("Z"));
}

TEST(Bytes, StrictDecimalAndSizes) {
  EXPECT_EQ(ParseU64("18446744073709551615"), UINT64_MAX);
  EXPECT_FALSE(ParseU64("18446744073709551616"));
  EXPECT_FALSE(ParseU64("-1"));
  EXPECT_FALSE(ParseU64("+1"));
  EXPECT_FALSE(ParseU64("1x"));
  EXPECT_FALSE(ParseU64(""));
  EXPECT_EQ(ParseSize("16M"), 16u << 20);
  EXPECT_EQ(ParseSize("4k"), 4096u);
  EXPECT_EQ(ParseSize("2048"), 2048u);
  EXPECT_FALSE(ParseSize("M"));
}

TEST(Bytes, BigEndian) {
  uint8_t b[8];
  PutBe64(b, 0x0102030405060708ull);
  EXPECT_EQ(b[0], 1);
  EXPECT_EQ(GetBe64(b), 0x0102030405060708ull);
  PutBe16(b, 0xbabe);
  EXPECT_EQ(GetBe16(b), 0xbabe);
}

TEST(SecureBuffer, MovesAndWipesOnTruncate) {
  SecureBuffer a(AsBytes("secret passphrase"));
  SecureBuffer b(std::move(a));
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.view(), "secret passphrase");
  b.Truncate(6);
  EXPECT_EQ(b.view(), "secret");
  EXPECT_EQ(b.data()[6], 0);  // the cut tail is wiped, not just hidden
  EXPECT_TRUE(b.Equals(AsBytes("secret")));
  EXPECT_FALSE(b.Equals(AsBytes("secreT")));
}

TEST(Status, PosixErrorMapsErrnoOnce) {
  EXPECT_EQ(PosixError("x", ENOENT).code(), Code::kNotFound);
  EXPECT_EQ(PosixError("x", EBUSY).code(), Code::kBusy);
  EXPECT_EQ(PosixError("x", EIO).code(), Code::kIOError);
  EXPECT_EQ(ExitCode(PermissionDenied("bad key")), 2);
  EXPECT_EQ(ExitCode(Corrupt("bad header")), 4);
  EXPECT_EQ(PosixError("disk.img", EIO).message(), "disk.img: Input/output error");
}

}  // namespace
}  // namespace ds
