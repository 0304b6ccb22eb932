#include "engine/binding.h"

#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "engine/reencrypt_state.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::engine {
namespace {

using luks2::Json;

constexpr uint64_t kSize = 512u << 10;

// Plaintext with an ext4 superblock (magic 0xEF53, UUID at 104) at 1024 and noise elsewhere.
Bytes Ext4Plain(uint8_t uuid_byte, uint64_t seed) {
  Bytes b = test::RandomData(kSize, seed);
  std::fill(b.begin() + 1024, b.begin() + 2048, 0);
  b[1024 + 56] = 0x53;
  b[1024 + 57] = 0xEF;
  b[1024 + 96] = 0x40;  // extents: ext4
  for (int i = 0; i < 16; ++i) b[1024 + 104 + i] = uint8_t(uuid_byte + i);
  return b;
}

luks2::Metadata WithTokens(const Json& tokens) {
  luks2::Metadata md;
  md.json = {{"tokens", tokens}};
  return md;
}

TEST(Binding, TokenRoundTripsAndReplacesOnlyItself) {
  luks2::Metadata md = WithTokens({{"0", {{"type", "clevis"}, {"keyslots", {"1"}}, {"x", 1}}}});
  Binding b{4096, {"wwn-0x5000"}, Signature{"ext4", "u-1"}};
  WriteBinding(md, b);
  ASSERT_TRUE(md.json["tokens"].contains("1"));
  EXPECT_EQ(md.json["tokens"]["1"]["type"], kBindingToken);
  EXPECT_EQ(md.json["tokens"]["1"]["keyslots"], Json::array());
  EXPECT_EQ(md.json["tokens"]["1"]["size"], "4096");
  auto r = ReadBinding(md);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ((*r)->size, 4096u);
  EXPECT_EQ((*r)->ids, std::vector<std::string>{"wwn-0x5000"});
  EXPECT_EQ((*r)->fs, (Signature{"ext4", "u-1"}));
  b.fs.reset();
  b.size = 8192;
  WriteBinding(md, b);  // replaced in place, the other token untouched
  EXPECT_EQ(md.json["tokens"].size(), 2u);
  EXPECT_EQ(md.json["tokens"]["1"]["size"], "8192");
  EXPECT_FALSE(md.json["tokens"]["1"].contains("fs"));
  EXPECT_EQ(md.json["tokens"]["0"]["x"], 1);
  md.json["tokens"]["1"].erase("size");
  EXPECT_EQ(ReadBinding(md).status().code(), Code::kCorrupt);
}

TEST(Binding, IdentityRefusesOnlyOnEvidence) {
  luks2::Metadata none = WithTokens(Json::object());
  EXPECT_TRUE(CheckIdentity(none, "h", "d", 1, {}, true).ok());  // cryptsetup's header: no token
  luks2::Metadata md = WithTokens(Json::object());
  WriteBinding(md, Binding{1000, {"wwn-0xa", "partuuid:p"}, std::nullopt});
  EXPECT_TRUE(CheckIdentity(md, "h", "d", 1000, {}, true).ok());
  EXPECT_TRUE(CheckIdentity(md, "h", "d", 2000, {}, false).ok());  // grown after the operation
  Status small = CheckIdentity(md, "b.hdr", "/dev/a", 999, {}, false);
  EXPECT_EQ(small.code(), Code::kCorrupt);
  EXPECT_NE(small.message().find("b.hdr"), std::string::npos);
  EXPECT_NE(small.message().find("/dev/a"), std::string::npos);
  EXPECT_EQ(CheckIdentity(md, "h", "d", 2000, {}, true).code(), Code::kCorrupt);  // offsets depend on it
  EXPECT_TRUE(CheckIdentity(md, "h", "d", 1000, {"partuuid:p"}, false).ok());
  EXPECT_EQ(CheckIdentity(md, "h", "d", 1000, {"wwn-0xb"}, false).code(), Code::kCorrupt);
}

TEST(Binding, FingerprintRules) {
  luks2::Metadata md = WithTokens(Json::object());
  const Signature mine{"ext4", "u-1"}, other{"ext4", "u-2"};
  EXPECT_TRUE(CheckFingerprint(md, "h", "d", {PlainView{std::nullopt, true}}).ok());  // nothing recorded
  WriteBinding(md, Binding{1000, {}, mine});
  EXPECT_TRUE(CheckFingerprint(md, "h", "d", {PlainView{mine, true}}).ok());
  EXPECT_TRUE(CheckFingerprint(md, "h", "d", {PlainView{std::nullopt, true}, PlainView{mine, false}}).ok());
  EXPECT_TRUE(CheckFingerprint(md, "h", "d", {}).ok());  // no view: no evidence
  // noise through the key: another device (or header)
  EXPECT_EQ(CheckFingerprint(md, "h", "d", {PlainView{std::nullopt, true}}).code(), Code::kCorrupt);
  // another filesystem read as plaintext (a linear segment): the other device's own
  EXPECT_EQ(CheckFingerprint(md, "h", "d", {PlainView{other, false}}).code(), Code::kCorrupt);
  // another filesystem through the key: made anew inside this volume
  EXPECT_TRUE(CheckFingerprint(md, "h", "d", {PlainView{other, true}}).ok());
}

TEST(Binding, StableIdsOfAFileAreNone) {
  test::TempDir dir;
  test::WriteFile(dir / "f", "x");
  EXPECT_TRUE(StableIds(*PosixEnv(), dir / "f").empty());
  EXPECT_TRUE(StableIds(*PosixEnv(), dir / "missing").empty());
}

// An encryption with a hotzone flagged in-reencryption over the superblock: whether the hotzone
// holds the old bytes or the new ones, the right device matches; the wrong key does not.
TEST(Binding, AHotzoneInFlightOverTheSuperblockIsNoFalseRefusal) {
  test::TempDir dir;
  const Bytes plain = Ext4Plain(0x10, 1);
  test::WriteFile(dir / "data", std::string(plain.begin(), plain.end()));
  auto fs = Signature{"ext4", ""};
  {
    auto d = PosixEnv()->Open(dir / "data", OpenOptions{});
    ASSERT_TRUE(d.ok());
    auto s = ProbeStart(**d);
    ASSERT_TRUE(s.ok() && *s);
    fs = **s;
    EXPECT_EQ(fs.type, "ext4");
  }
  luks2::FormatOptions o = test::FastFormat();
  o.offset_sectors = 0;
  o.keyslots_size = 384u << 10;
  SecureBuffer key;
  auto hook = [&](luks2::Metadata& md, const SecureBuffer& k) {
    DS_RETURN_IF_ERROR(InitEncrypt(md, k, Resilience::kChecksum, 1000));
    WriteBinding(md, Binding{kSize, {}, fs});
    return Status::Ok();
  };
  ASSERT_TRUE(luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), hook, &key).ok());
  auto v = luks2::Volume::Load(*PosixEnv(), dir / "data", dir / "hdr", true);
  ASSERT_TRUE(v.ok());
  const std::map<int, const SecureBuffer*> keys = {{0, &key}};
  EXPECT_TRUE(CheckBindingUnlocked(*v, "hdr", keys).ok());
  auto st = ReadState(v->metadata(), kSize);
  ASSERT_TRUE(st.ok() && *st);
  const luks2::Metadata initial = v->metadata();
  // 1. the hotzone flagged, its bytes still the old ones
  SetProgress(v->mutable_metadata(), **st, 0, 64u << 10);
  const luks2::Metadata flagged = v->metadata();
  ASSERT_TRUE(Json(flagged.json["segments"]).dump().find("in-reencryption") != std::string::npos);
  Status s = CheckBindingUnlocked(*v, "hdr", keys);
  EXPECT_TRUE(s.ok()) << s.message();
  // 2. its bytes already the new ones (written through the layout of "64 KiB done")
  SetProgress(v->mutable_metadata(), **st, 64u << 10, std::nullopt);
  {
    auto data = v->OpenData(keys);
    ASSERT_TRUE(data.ok()) << data.status().message();
    ASSERT_TRUE((*data)->WriteAt(0, std::span<const uint8_t>(plain).first(64u << 10)).ok());
    ASSERT_TRUE((*data)->Sync().ok());
  }
  v->mutable_metadata() = flagged;
  s = CheckBindingUnlocked(*v, "hdr", keys);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(v->metadata().json.dump(), flagged.json.dump());  // the probe leaves the header as it was
  // 3. another key (another header's): noise in the encrypted view, no match
  SecureBuffer other(key.size());
  ASSERT_TRUE(RandomBytes(other.span()).ok());
  s = CheckBindingUnlocked(*v, "hdr", {{0, &other}});
  EXPECT_EQ(s.code(), Code::kCorrupt) << s.message();
}

// The header of one device used with another whose start is still plaintext (an encryption
// that has not reached it): the other device's own filesystem shows, and it is not ours.
TEST(Binding, AnotherDevicesPlaintextIsRefused) {
  test::TempDir dir;
  const Bytes mine = Ext4Plain(0x10, 2), theirs = Ext4Plain(0x20, 3);
  test::WriteFile(dir / "a", std::string(mine.begin(), mine.end()));
  test::WriteFile(dir / "b", std::string(theirs.begin(), theirs.end()));
  luks2::FormatOptions o = test::FastFormat();
  o.offset_sectors = 0;
  o.keyslots_size = 384u << 10;
  SecureBuffer key;
  std::optional<Signature> fs;
  {
    auto d = PosixEnv()->Open(dir / "a", OpenOptions{});
    ASSERT_TRUE(d.ok());
    auto s = ProbeStart(**d);
    ASSERT_TRUE(s.ok());
    fs = *s;
  }
  auto hook = [&](luks2::Metadata& md, const SecureBuffer& k) {
    DS_RETURN_IF_ERROR(InitEncrypt(md, k, Resilience::kChecksum, 1000));
    WriteBinding(md, Binding{kSize, {}, fs});
    return Status::Ok();
  };
  ASSERT_TRUE(luks2::Volume::Format(*PosixEnv(), dir / "a", dir / "hdr", o, AsBytes("pw"), hook, &key).ok());
  auto right = luks2::Volume::Load(*PosixEnv(), dir / "a", dir / "hdr", false);
  auto wrong = luks2::Volume::Load(*PosixEnv(), dir / "b", dir / "hdr", false);
  ASSERT_TRUE(right.ok() && wrong.ok());
  EXPECT_TRUE(CheckBindingUnlocked(*right, "hdr", {{0, &key}}).ok());
  Status s = CheckBindingUnlocked(*wrong, "hdr", {{0, &key}});
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_NE(s.message().find(dir / "b"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace ds::engine
