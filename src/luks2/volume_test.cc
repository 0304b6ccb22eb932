#include "luks2/volume.h"

#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "io/mem_device.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::luks2 {
namespace {

class VolumeTest : public ::testing::Test {
 protected:
  std::string NewImage(uint64_t size = 24u << 20) {
    std::string p = dir_ / ("img" + std::to_string(n_++));
    test::WriteFile(p, std::string(size, '\0'));
    return p;
  }
  Volume Format(const std::string& path, FormatOptions o = test::FastFormat(), const std::string& header = "") {
    auto v = Volume::Format(*PosixEnv(), path, header, o, AsBytes("first pass"));
    EXPECT_TRUE(v.ok()) << v.status().message();
    return std::move(v).value();
  }
  Volume Load(const std::string& path, bool rw = true, const std::string& header = "") {
    auto v = Volume::Load(*PosixEnv(), path, header, rw);
    EXPECT_TRUE(v.ok()) << v.status().message();
    return std::move(v).value();
  }
  test::TempDir dir_;
  int n_ = 0;
};

TEST_F(VolumeTest, FormatUnlockAndWrongPassphrase) {
  std::string img = NewImage();
  Format(img);
  Volume v = Load(img, false);
  auto u = v.Unlock(AsBytes("first pass"));
  ASSERT_TRUE(u.ok()) << u.status().message();
  EXPECT_EQ(u->keyslot, 0);
  EXPECT_EQ(u->key.size(), 64u);
  auto bad = v.Unlock(AsBytes("wrong"));
  EXPECT_EQ(bad.status().code(), Code::kPermissionDenied);
  EXPECT_NE(bad.status().message().find("no key available"), std::string::npos);
  EXPECT_EQ(v.Unlock(AsBytes("first pass"), 3).status().code(), Code::kNotFound);
}

TEST_F(VolumeTest, EveryKdfUnlocks) {
  for (const char* kdf : {"pbkdf2", "argon2i", "argon2id"}) {
    std::string img = NewImage();
    FormatOptions o = test::FastFormat();
    o.pbkdf = test::FastPbkdf(kdf);
    Format(img, o);
    auto u = Load(img, false).Unlock(AsBytes("first pass"));
    EXPECT_TRUE(u.ok()) << kdf << ": " << u.status().message();
  }
}

TEST_F(VolumeTest, LayoutDefaultsMatchCryptsetup) {
  std::string img = NewImage();
  Volume v = Format(img);
  auto segs = Segments(v.metadata());
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].offset, 16u << 20);
  EXPECT_EQ(segs[0].sector_size, 4096u);  // 4 KiB-aligned data area
  EXPECT_EQ(v.metadata().keyslots_size(), 16744448u);
  auto ks = Keyslots(v.metadata());
  ASSERT_EQ(ks.size(), 1u);
  EXPECT_EQ(ks[0].area_offset, 32768u);
  EXPECT_EQ(ks[0].area_size, 258048u);
}

TEST_F(VolumeTest, KeyslotAddChangeRemove) {
  std::string img = NewImage();
  Format(img);
  Volume v = Load(img);
  auto u = v.Unlock(AsBytes("first pass"));
  ASSERT_TRUE(u.ok());
  auto id = v.AddKeyslot(*u, AsBytes("second"), test::FastPbkdf(), std::nullopt);
  ASSERT_TRUE(id.ok()) << id.status().message();
  EXPECT_EQ(*id, 1);
  EXPECT_EQ(v.AddKeyslot(*u, AsBytes("x"), test::FastPbkdf(), 1).status().code(), Code::kInvalidArgument);
  {
    Volume r = Load(img, false);
    auto u2 = r.Unlock(AsBytes("second"));
    ASSERT_TRUE(u2.ok());
    EXPECT_EQ(u2->keyslot, 1);
    EXPECT_TRUE(u2->key.Equals(u->key.span()));
  }
  // change keyslot 1: same slot number, old passphrase dead, new one works
  {
    Volume w = Load(img);
    auto u1 = w.Unlock(AsBytes("second"));
    ASSERT_TRUE(u1.ok());
    ASSERT_TRUE(w.ChangeKeyslot(*u1, AsBytes("third"), test::FastPbkdf()).ok());
    Volume r = Load(img, false);
    EXPECT_EQ(r.Unlock(AsBytes("second")).status().code(), Code::kPermissionDenied);
    auto u3 = r.Unlock(AsBytes("third"));
    ASSERT_TRUE(u3.ok());
    EXPECT_EQ(u3->keyslot, 1);
  }
  {
    Volume w = Load(img);
    ASSERT_TRUE(w.RemoveKeyslot(1, false).ok());
    EXPECT_EQ(Load(img, false).Unlock(AsBytes("third")).status().code(), Code::kPermissionDenied);
    // slot 0 is now the last one that unlocks the data
    Status s = w.RemoveKeyslot(0, false);
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
    EXPECT_NE(s.message().find("last one"), std::string::npos);
    EXPECT_EQ(w.RemoveKeyslot(7, false).code(), Code::kNotFound);
  }
}

TEST_F(VolumeTest, TokensAreKeptExactly) {
  std::string img = NewImage();
  Format(img);
  Volume v = Load(img);
  const std::string clevis =
      R"({"type":"clevis","keyslots":["0"],"jwe":{"ciphertext":"","encrypted_key":"","iv":"","protected":"eyJhbGciOiJFQ0RILUVTIn0","tag":""},"zeta":[1,2.5,-3,"é"],"alpha":{}})";
  auto id = v.ImportToken(Json::parse(clevis), std::nullopt, false);
  ASSERT_TRUE(id.ok()) << id.status().message();
  EXPECT_EQ(*id, 0);
  Volume r = Load(img, false);
  auto t = r.ExportToken(0);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(SerializeJson(*t), clevis);
  EXPECT_EQ(v.ImportToken(Json::parse(clevis), 0, false).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(v.ImportToken(Json::parse(R"({"type":"luks2-bogus","keyslots":[]})"), std::nullopt, false).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(v.ImportToken(Json::parse(R"({"type":"x","keyslots":["9"]})"), std::nullopt, false).status().code(),
            Code::kInvalidArgument);
  ASSERT_TRUE(v.RemoveToken(0).ok());
  EXPECT_EQ(v.RemoveToken(0).code(), Code::kNotFound);
}

TEST_F(VolumeTest, UnknownRequirementRefusesUnlockButNotDump) {
  std::string img = NewImage();
  Format(img);
  Volume v = Load(img);
  v.mutable_metadata().json["config"]["requirements"] = {{"mandatory", {"future-feature-x"}}};
  ASSERT_TRUE(v.Commit().ok());
  Volume r = Load(img, false);  // reading the header still works
  auto u = r.Unlock(AsBytes("first pass"));
  EXPECT_EQ(u.status().code(), Code::kUnsupported);
  EXPECT_NE(u.status().message().find("future-feature-x"), std::string::npos);
}

TEST_F(VolumeTest, BadFormatOptionsLeaveTheDeviceUntouched) {
  std::string img = NewImage();
  const std::string before = test::Sha256File(img);
  auto try_format = [&](auto mutate) {
    FormatOptions o = test::FastFormat();
    mutate(o);
    return Volume::Format(*PosixEnv(), img, "", o, AsBytes("p")).status();
  };
  EXPECT_EQ(try_format([](FormatOptions& o) { o.cipher = "serpent-xts-plain64"; }).code(), Code::kUnsupported);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.key_size_bits = 384; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.sector_size = 1000; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.metadata_size = 8192; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.keyslots_size = 4097; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.label = std::string(60, 'l'); }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.uuid = "not-a-uuid"; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.offset_sectors = 8; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.pbkdf.force_iterations = 10; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(try_format([](FormatOptions& o) { o.pbkdf.type = "scrypt"; }).code(), Code::kInvalidArgument);
  EXPECT_EQ(test::Sha256File(img), before);
  // too small for the header
  std::string tiny = NewImage(1u << 20);
  EXPECT_EQ(Volume::Format(*PosixEnv(), tiny, "", test::FastFormat(), AsBytes("p")).status().code(), Code::kInvalidArgument);
  // an existing LUKS header is not overwritten without force
  Format(img);
  const std::string luks = test::Sha256File(img);
  EXPECT_EQ(Volume::Format(*PosixEnv(), img, "", test::FastFormat(), AsBytes("p")).status().code(), Code::kBusy);
  EXPECT_EQ(test::Sha256File(img), luks);
}

TEST_F(VolumeTest, DetachedHeaderDataRoundTrip) {
  std::string img = NewImage(8u << 20);
  std::string hdr = dir_ / "hdr";
  Bytes plain = test::MakeRandomImage(img, 8u << 20, 42);
  Format(img, test::FastFormat(), hdr);
  EXPECT_EQ(test::ReadFileOrDie(img), std::string(plain.begin(), plain.end()));  // data untouched
  Volume v = Load(img, true, hdr);
  auto u = v.Unlock(AsBytes("first pass"));
  ASSERT_TRUE(u.ok());
  auto data = v.OpenData({{u->digest, &u->key}});
  ASSERT_TRUE(data.ok()) << data.status().message();
  EXPECT_EQ((*data)->Size(), 8u << 20);
  ASSERT_TRUE((*data)->WriteAt(0, plain).ok());
  Bytes back(plain.size());
  ASSERT_TRUE((*data)->ReadAt(0, back).ok());
  EXPECT_EQ(back, plain);
  EXPECT_NE(test::ReadFileOrDie(img), std::string(plain.begin(), plain.end()));  // ciphertext now
}

TEST_F(VolumeTest, InterruptedOperationMustBeResumedBeforeOpening) {
  std::string img = NewImage();
  Format(img);
  Volume v = Load(img);
  v.mutable_metadata().json["segments"]["0"]["flags"] = {"in-reencryption"};
  ASSERT_TRUE(v.Commit().ok());
  Volume r = Load(img, false);
  auto u = r.Unlock(AsBytes("first pass"));
  ASSERT_TRUE(u.ok());
  auto d = r.OpenData({{u->digest, &u->key}});
  EXPECT_EQ(d.status().code(), Code::kBusy);
  EXPECT_NE(d.status().message().find("resume"), std::string::npos);
}

}  // namespace
}  // namespace ds::luks2
