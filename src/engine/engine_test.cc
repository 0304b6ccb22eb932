#include "engine/engine.h"

#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "engine/reencrypt_state.h"
#include "io/mem_device.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::engine {
namespace {

constexpr uint64_t kDataSize = 512u << 10;
constexpr uint64_t kHotzone = 64u << 10;

// A detached-header volume right after `encrypt` initialised it (nothing done yet).
struct Fixture {
  Bytes plain, header, data;
  SecureBuffer key;
};

Fixture MakeInitialised(Resilience res, uint32_t sector) {
  test::TempDir dir;
  Fixture f;
  f.plain = test::MakeRandomImage(dir / "data", kDataSize, sector + uint64_t(res));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = sector;
  o.offset_sectors = 0;
  o.keyslots_size = 384u << 10;  // a small reencryption area keeps the crash loop fast
  auto hook = [&](luks2::Metadata& md, const SecureBuffer& k) { return InitEncrypt(md, k, res, 1000); };
  auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), hook, &f.key);
  EXPECT_TRUE(v.ok()) << v.status().message();
  std::string h = test::ReadFileOrDie(dir / "hdr"), d = test::ReadFileOrDie(dir / "data");
  f.header.assign(h.begin(), h.end());
  f.data.assign(d.begin(), d.end());
  return f;
}

// An encrypted detached-header volume right after `decrypt` initialised it (backward).
Fixture MakeDecryptInitialised(Resilience res, uint32_t sector) {
  test::TempDir dir;
  Fixture f;
  f.plain = test::RandomData(kDataSize, 100 + sector + uint64_t(res));
  test::WriteFile(dir / "data", std::string(kDataSize, '\0'));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = sector;
  o.offset_sectors = 0;
  o.keyslots_size = 384u << 10;
  {
    auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), nullptr, &f.key);
    EXPECT_TRUE(v.ok()) << v.status().message();
  }
  auto v = luks2::Volume::Load(*PosixEnv(), dir / "data", dir / "hdr", true);
  EXPECT_TRUE(v.ok());
  auto data = v->OpenData({{0, &f.key}});
  EXPECT_TRUE(data.ok() && (*data)->WriteAt(0, f.plain).ok() && (*data)->Sync().ok());
  EXPECT_TRUE(InitDecrypt(v->mutable_metadata(), f.key, res, 1000).ok());
  EXPECT_TRUE(v->Commit().ok());
  std::string h = test::ReadFileOrDie(dir / "hdr"), d = test::ReadFileOrDie(dir / "data");
  f.header.assign(h.begin(), h.end());
  f.data.assign(d.begin(), d.end());
  return f;
}

// A volume right after `reencrypt` initialised it: old key (digest 0), new key (digest 1) whose
// keyslot opens with the same passphrase; 512-byte sectors become 4096-byte ones.
struct ReencFixture : Fixture {
  SecureBuffer new_key;
};
ReencFixture MakeReencryptInitialised(Resilience res) {
  ReencFixture f;
  Fixture base = MakeDecryptInitialised(Resilience::kChecksum, 512);  // encrypted data + header
  f.plain = base.plain;
  f.key = std::move(base.key);
  // undo the decrypt initialisation: rebuild a plain header on a copy
  test::TempDir dir;
  test::WriteFile(dir / "data", std::string(kDataSize, '\0'));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = 512;
  o.offset_sectors = 0;
  o.keyslots_size = 640u << 10;
  {
    auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), nullptr, &f.key);
    EXPECT_TRUE(v.ok()) << v.status().message();
  }
  auto v = luks2::Volume::Load(*PosixEnv(), dir / "data", dir / "hdr", true);
  EXPECT_TRUE(v.ok());
  auto data = v->OpenData({{0, &f.key}});
  EXPECT_TRUE(data.ok() && (*data)->WriteAt(0, f.plain).ok() && (*data)->Sync().ok());
  f.new_key = SecureBuffer(64);
  EXPECT_TRUE(RandomBytes(f.new_key.span()).ok());
  auto kdf = luks2::ChooseKdf(test::FastPbkdf());
  EXPECT_TRUE(kdf.ok());
  Status s = InitReencrypt(v->mutable_metadata(), v->metadata_device(), f.key, f.new_key, AsBytes("pw"), *kdf,
                           "aes-xts-plain64", 4096, res, 1000);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(v->Commit().ok());
  std::string h = test::ReadFileOrDie(dir / "hdr"), d = test::ReadFileOrDie(dir / "data");
  f.header.assign(h.begin(), h.end());
  f.data.assign(d.begin(), d.end());
  return f;
}

Result<luks2::Volume> Open(BlockDevice* hdr, BlockDevice* data) {
  return luks2::Volume::FromDevices("data", std::make_unique<DeviceRef>(hdr), std::make_unique<DeviceRef>(data));
}

// Completes the operation on the given images and returns the plaintext the volume now holds.
Bytes FinishAndRead(const Bytes& header, const Bytes& data, const SecureBuffer& key,
                    const SecureBuffer* new_key = nullptr) {
  MemDevice h("hdr", header), d("data", data);
  auto v = Open(&h, &d);
  EXPECT_TRUE(v.ok()) << v.status().message();
  if (!v.ok()) return {};
  EngineOptions eo;
  eo.hotzone_bytes = kHotzone;
  eo.threads = 2;
  std::map<int, const SecureBuffer*> keys{{0, &key}};
  if (new_key) keys[1] = new_key;
  Status s = RunOperation(*v, keys, eo);
  EXPECT_TRUE(s.ok()) << s.message();
  auto st = ReadState(v->metadata(), d.Size());
  EXPECT_TRUE(st.ok() && !st->has_value()) << "operation not finished";
  auto plain = v->OpenData({{new_key ? 1 : 0, new_key ? new_key : &key}});
  EXPECT_TRUE(plain.ok()) << plain.status().message();
  if (!plain.ok()) return {};
  Bytes out((*plain)->Size());
  EXPECT_TRUE((*plain)->ReadAt(0, out).ok());
  return out;
}

TEST(Engine, EncryptsInPlaceToTheSameBytes) {
  for (auto res : {Resilience::kChecksum, Resilience::kJournal, Resilience::kNone}) {
    Fixture f = MakeInitialised(res, 4096);
    Bytes out = FinishAndRead(f.header, f.data, f.key);
    EXPECT_EQ(out, f.plain) << ResilienceName(res);
  }
}

TEST(Engine, ProgressIsRecordedInCryptsetupsLayout) {
  Fixture f = MakeInitialised(Resilience::kChecksum, 512);
  MemDevice h("hdr", f.header), d("data", f.data);
  auto v = Open(&h, &d);
  ASSERT_TRUE(v.ok());
  auto st = ReadState(v->metadata(), d.Size());
  ASSERT_TRUE(st.ok() && st->has_value());
  EXPECT_EQ((*st)->done, 0u);
  EXPECT_EQ((*st)->data_size, kDataSize);
  EXPECT_EQ(v->metadata().requirements(), std::vector<std::string>{"online-reencrypt-v2"});
  EXPECT_TRUE(CheckVerificationDigest(v->metadata(), **st, nullptr, &f.key).ok());
  SecureBuffer other(64);
  ASSERT_TRUE(RandomBytes(other.span()).ok());
  EXPECT_EQ(CheckVerificationDigest(v->metadata(), **st, nullptr, &other).code(), Code::kCorrupt);
  // stop after the first commit point: the header says what was done
  std::atomic<bool> stop{false};
  EngineOptions eo;
  eo.hotzone_bytes = kHotzone;
  eo.stop = &stop;
  stop = true;
  EXPECT_EQ(RunOperation(*v, {{0, &f.key}}, eo).code(), Code::kInterrupted);
  luks2::Metadata md = v->metadata();
  SetProgress(md, **st, 3 * kHotzone, kHotzone);
  auto again = ReadState(md, d.Size());
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ((*again)->done, 3 * kHotzone);
  EXPECT_EQ((*again)->hotzone_len, kHotzone);
  EXPECT_TRUE(luks2::Validate(md).ok());
}

TEST(Engine, TamperedReencryptionMetadataIsRefusedBeforeAnyWrite) {
  Fixture f = MakeInitialised(Resilience::kChecksum, 4096);
  MemDevice h("hdr", f.header);
  FaultDevice d("data", f.data);
  auto v = Open(&h, &d);
  ASSERT_TRUE(v.ok());
  for (auto& [k, ks] : v->mutable_metadata().json["keyslots"].items())
    if (ks["type"] == "reencrypt") ks["area"]["type"] = "none";
  Status s = RunOperation(*v, {{0, &f.key}}, EngineOptions{});
  EXPECT_EQ(s.code(), Code::kCorrupt) << s.message();
  EXPECT_EQ(d.ops(), 0u);
}

TEST(Engine, EioMidWayStopsCleanlyAndResumes) {
  Fixture f = MakeInitialised(Resilience::kChecksum, 4096);
  auto clock = std::make_shared<FaultClock>();
  FaultDevice h("hdr", f.header, clock), d("data", f.data, clock);
  d.FailWriteAt(kDataSize / 2, kDataSize / 2 + 1);
  {
    auto v = Open(&h, &d);
    ASSERT_TRUE(v.ok());
    EngineOptions eo;
    eo.hotzone_bytes = kHotzone;
    Status s = RunOperation(*v, {{0, &f.key}}, eo);
    EXPECT_EQ(s.code(), Code::kIOError);
    EXPECT_NE(s.message().find("Input/output error"), std::string::npos) << s.message();
  }
  d.ClearFaults();
  EXPECT_EQ(FinishAndRead(h.Current(), d.Current(), f.key), f.plain);
}

struct CrashCase {
  Resilience res;
  uint32_t sector;
  std::vector<FaultDevice::CutMode> cuts;
  bool decrypt = false;
  bool reencrypt = false;
};

TEST(Engine, ReencryptsToANewKeyAndSectorSize) {
  ReencFixture f = MakeReencryptInitialised(Resilience::kChecksum);
  EXPECT_EQ(FinishAndRead(f.header, f.data, f.key, &f.new_key), f.plain);
  MemDevice h("hdr", f.header), d("data", f.data);
  auto v = Open(&h, &d);
  ASSERT_TRUE(v.ok());
  EngineOptions eo;
  ASSERT_TRUE(RunOperation(*v, {{0, &f.key}, {1, &f.new_key}}, eo).ok());
  auto ks = luks2::Keyslots(v->metadata());
  ASSERT_EQ(ks.size(), 1u);  // the old key's keyslot is gone
  auto u = v->Unlock(AsBytes("pw"));
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(u->key.Equals(f.new_key.span()));
  EXPECT_EQ(luks2::Segments(v->metadata())[0].sector_size, 4096u);
  EXPECT_EQ(RunOperation(*v, {{0, &f.key}}, eo).code(), Code::kOk);  // nothing left to do
}

TEST(Engine, DecryptsBackwardInPlace) {
  for (auto res : {Resilience::kChecksum, Resilience::kJournal}) {
    Fixture f = MakeDecryptInitialised(res, 4096);
    EXPECT_NE(Bytes(f.data.begin(), f.data.begin() + 4096), Bytes(f.plain.begin(), f.plain.begin() + 4096));
    MemDevice h("hdr", f.header), d("data", f.data);
    auto v = Open(&h, &d);
    ASSERT_TRUE(v.ok());
    auto st = ReadState(v->metadata(), d.Size());
    ASSERT_TRUE(st.ok() && st->has_value()) << st.status().message();
    EXPECT_TRUE((*st)->backward);
    EngineOptions eo;
    eo.hotzone_bytes = kHotzone;
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
    EXPECT_EQ(d.Snapshot(), f.plain) << ResilienceName(res);  // the device holds plaintext again
  }
}

// A power cut at every write and sync of the whole operation, in every cut mode the resilience
// mode promises to survive; after each, resume completes and the plaintext is the original.
TEST(Engine, PowerCutAtEveryInstantResumesToTheOriginalBytes) {
  using C = FaultDevice::CutMode;
  const std::vector<CrashCase> cases = {
      // checksum blocks are encryption sectors: survives any sector-aligned tear
      {Resilience::kChecksum, 512, {C::kDropUnsynced, C::kKeepSome, C::kTearOne}},
      // with 4 KiB sectors, checksum mode assumes 4 KiB writes are atomic (as the device's)
      {Resilience::kChecksum, 4096, {C::kDropUnsynced, C::kKeepSome}},
      // the journal keeps a full copy: survives torn writes of any kind
      {Resilience::kJournal, 4096, {C::kDropUnsynced, C::kKeepSome, C::kTearOne}},
      {Resilience::kJournal, 512, {C::kDropUnsynced, C::kTearOne}},
      // decrypt runs backward, as cryptsetup's does
      {Resilience::kChecksum, 512, {C::kDropUnsynced, C::kTearOne}, true},
      {Resilience::kJournal, 4096, {C::kKeepSome, C::kTearOne}, true},
      // reencrypt: 512-byte sectors to 4096-byte ones, two keys
      {Resilience::kChecksum, 4096, {C::kDropUnsynced, C::kKeepSome}, false, true},
      {Resilience::kJournal, 4096, {C::kTearOne}, false, true},
  };
  for (const auto& c : cases) {
    ReencFixture f;
    if (c.reencrypt) {
      f = MakeReencryptInitialised(c.res);
    } else {
      Fixture b = c.decrypt ? MakeDecryptInitialised(c.res, c.sector) : MakeInitialised(c.res, c.sector);
      f.plain = std::move(b.plain);
      f.header = std::move(b.header);
      f.data = std::move(b.data);
      f.key = std::move(b.key);
    }
    std::map<int, const SecureBuffer*> keys{{0, &f.key}};
    if (c.reencrypt) keys[1] = &f.new_key;
    uint64_t total;
    {
      auto clock = std::make_shared<FaultClock>();
      FaultDevice h("hdr", f.header, clock), d("data", f.data, clock);
      auto v = Open(&h, &d);
      ASSERT_TRUE(v.ok());
      EngineOptions eo;
      eo.hotzone_bytes = kHotzone;
      ASSERT_TRUE(RunOperation(*v, keys, eo).ok());
      total = h.ops();
    }
    ASSERT_GT(total, 80u);
    int points = 0;
    for (uint64_t k = 1; k <= total; ++k) {
      for (auto cut : c.cuts) {
        SCOPED_TRACE(std::string(c.reencrypt ? "reencrypt/" : c.decrypt ? "decrypt/" : "encrypt/") + ResilienceName(c.res) + "/" + std::to_string(c.sector) +
                     " crash at op " + std::to_string(k) + " cut " + std::to_string(int(cut)));
        auto clock = std::make_shared<FaultClock>();
        FaultDevice h("hdr", f.header, clock), d("data", f.data, clock);
        h.CrashAfterOps(k);
        {
          auto v = Open(&h, &d);
          ASSERT_TRUE(v.ok());
          EngineOptions eo;
          eo.hotzone_bytes = kHotzone;
          eo.threads = 2;
          (void)RunOperation(*v, keys, eo);
        }
        Bytes hdr_after = h.PowerCut(cut, k * 7 + 1);
        Bytes data_after = d.PowerCut(cut, k * 13 + 5);
        Bytes out = FinishAndRead(hdr_after, data_after, f.key, c.reencrypt ? &f.new_key : nullptr);
        ASSERT_EQ(out, f.plain);
        ++points;
      }
    }
    EXPECT_GT(points, 150);
  }
}

}  // namespace
}  // namespace ds::engine
