#include "engine/engine.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <utility>
#include <cstring>

#include "crypto/crypto.h"
#include "engine/datashift.h"
#include "engine/reencrypt_state.h"
#include "io/io_buffer.h"
#include "io/mem_device.h"
#include "luks2/header_io.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::engine {
namespace {

constexpr uint64_t kDataSize = 512u << 10;
constexpr uint64_t kHotzone = 64u << 10;

// Every crash point runs in the normal build. The sanitizer build runs several times slower and is
// there for memory errors, not for missed crash windows: scripts/test sets DISKSEAL_CRASH_STRIDE
// for it, and then every Nth point is tried.
uint64_t CrashStride() {
  static const uint64_t stride = [] {
    const char* s = std::getenv("DISKSEAL_CRASH_STRIDE");
    long v = s ? std::strtol(s, nullptr, 10) : 1;
    return uint64_t(v >= 1 && v <= 1000 ? v : 1);
  }();
  return stride;
}

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

// Options of an online run (in use, through `gate`) with the tests' hotzone limit.
EngineOptions OnlineOptions(ZoneGate* gate, unsigned threads = 0) {
  EngineOptions eo;
  eo.hotzone_bytes = kHotzone;
  eo.threads = threads;
  eo.in_use = true;
  eo.gate = gate;
  return eo;
}

// The plaintext volume `v` holds under `key` (empty, with a test failure, when it cannot be read).
Bytes PlainOf(luks2::Volume& v, const SecureBuffer& key) {
  auto plain = v.OpenData({{0, &key}});
  EXPECT_TRUE(plain.ok()) << plain.status().message();
  if (!plain.ok()) return {};
  Bytes out((*plain)->Size());
  EXPECT_TRUE((*plain)->ReadAt(0, out).ok());
  return out;
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

TEST(Engine, EveryOfferedChecksumHashIsRecordedAndFinishes) {
  // The default is the faster of md5 and sha256 here (see DefaultChecksumHash), chosen once.
  const std::string def = DefaultChecksumHash();
  EXPECT_TRUE(def == "md5" || def == "sha256") << def;
  EXPECT_EQ(DefaultChecksumHash(), def);
  EXPECT_EQ(ParseChecksumHash("crc32c").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseChecksumHash("SHA256").status().code(), Code::kInvalidArgument);  // cryptsetup's spelling only
  for (const char* hash : {"", "md5", "sha1", "sha256", "sha512", "blake2b-512", "blake2s-256"}) {
    SCOPED_TRACE(hash);
    test::TempDir dir;
    const Bytes plain = test::MakeRandomImage(dir / "data", kDataSize, 7);
    luks2::FormatOptions o = test::FastFormat();
    o.offset_sectors = 0;
    o.keyslots_size = 384u << 10;
    SecureBuffer key;
    auto hook = [&](luks2::Metadata& md, const SecureBuffer& k) {
      return InitEncrypt(md, k, Resilience::kChecksum, 1000, hash);
    };
    auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), hook, &key);
    ASSERT_TRUE(v.ok()) << v.status().message();
    auto st = ReadState(v->metadata(), kDataSize);
    ASSERT_TRUE(st.ok() && st->has_value());
    EXPECT_EQ((*st)->area.hash, *hash ? std::string(hash) : DefaultChecksumHash());
    std::string h = test::ReadFileOrDie(dir / "hdr"), d = test::ReadFileOrDie(dir / "data");
    EXPECT_EQ(FinishAndRead(Bytes(h.begin(), h.end()), Bytes(d.begin(), d.end()), key), plain);
  }
  test::TempDir dir;
  test::MakeRandomImage(dir / "data", kDataSize, 8);
  luks2::FormatOptions o = test::FastFormat();
  o.offset_sectors = 0;
  auto bad = [&](luks2::Metadata& md, const SecureBuffer& k) {
    return InitEncrypt(md, k, Resilience::kChecksum, 1000, "crc32c");
  };
  SecureBuffer key;
  EXPECT_EQ(luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), bad, &key).status().code(),
            Code::kInvalidArgument);
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

// A gate that checks the online protocol: every data write happens between a Hold and its
// Release, zones are held in order and cover the data exactly once, the header on disk says the
// zone is not yet done at Hold and done at Release.
class RecordingGate : public ZoneGate {
 public:
  RecordingGate(MemDevice& hdr, FaultDevice& data) : hdr_(hdr), data_(data) {}
  Status Hold(uint64_t off, uint64_t len, uint64_t done_after) override {
    EXPECT_FALSE(held_) << "a zone held twice";
    EXPECT_EQ(data_.ops(), ops_at_release_) << "data written outside a held zone";
    held_ = true;
    zones.emplace_back(off, len);
    auto st = StateOnDisk();
    EXPECT_TRUE(st && st->done + len == done_after) << "header progress at Hold";
    done_after_ = done_after;
    return Status::Ok();
  }
  Status Release(const luks2::Metadata&) override {
    EXPECT_TRUE(held_);
    held_ = false;
    ops_at_release_ = data_.ops();
    auto st = StateOnDisk();
    EXPECT_TRUE(!st || st->done >= done_after_) << "Release before the done commit";
    if (st) {
      EXPECT_FALSE(st->hotzone_len.has_value());
    }
    return Status::Ok();
  }
  std::vector<std::pair<uint64_t, uint64_t>> zones;

 private:
  std::optional<State> StateOnDisk() {
    auto read = luks2::ReadHeader(hdr_);
    EXPECT_TRUE(read.ok());
    if (!read.ok()) return std::nullopt;
    auto st = ReadState(read->md, data_.Size());
    EXPECT_TRUE(st.ok());
    return st.ok() ? *st : std::nullopt;
  }
  MemDevice& hdr_;
  FaultDevice& data_;
  bool held_ = false;
  uint64_t ops_at_release_ = 0, done_after_ = 0;
};

TEST(Engine, OnlineGateWrapsEveryHotzoneAndUntilDoneStopsAtAZoneEnd) {
  for (bool decrypt : {false, true}) {
    Fixture f = decrypt ? MakeDecryptInitialised(Resilience::kChecksum, 4096) : MakeInitialised(Resilience::kChecksum, 4096);
    MemDevice h("hdr", f.header);
    FaultDevice d("data", f.data);
    auto v = Open(&h, &d);
    ASSERT_TRUE(v.ok());
    RecordingGate gate(h, d);
    EngineOptions eo = OnlineOptions(&gate, 2);  // online: one buffer, zones of the whole bound
    // First only three zones: the run stops ok with exactly that much done, nothing flagged.
    eo.until_done = 3 * kHotzone;
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
    auto st = ReadState(v->metadata(), d.Size());
    ASSERT_TRUE(st.ok() && st->has_value());
    EXPECT_EQ((*st)->done, 3 * kHotzone);
    EXPECT_FALSE((*st)->hotzone_len.has_value());
    EXPECT_EQ(gate.zones.size(), 3u);
    eo.until_done = 0;
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
    ASSERT_EQ(gate.zones.size(), kDataSize / kHotzone);
    for (size_t i = 0; i < gate.zones.size(); ++i) {
      const uint64_t want = decrypt ? kDataSize - (i + 1) * kHotzone : i * kHotzone;  // backward when decrypting
      EXPECT_EQ(gate.zones[i], std::make_pair(want, kHotzone)) << i;
    }
    EXPECT_EQ(PlainOf(*v, f.key), f.plain) << (decrypt ? "decrypt" : "encrypt");
  }
}

// A gate that asks for zones of varying lengths (not multiples of the checksum block, some
// below one block): the engine rounds each down to whole blocks (at least one), the zones still
// cover the data exactly once in order, and the result is right both ways.
class ShrinkingGate : public RecordingGate {
 public:
  using RecordingGate::RecordingGate;
  uint64_t ZoneLength(uint64_t offset, uint64_t max, bool backward) override {
    static constexpr uint64_t kAsk[] = {5000, 100, 3 * 4096 + 7, 1u << 30};
    asked_max.push_back(max);
    asked_at.push_back(backward ? offset + max : offset);
    asked_backward.push_back(backward);
    return kAsk[calls_++ % 4];
  }
  std::vector<uint64_t> asked_max;
  std::vector<uint64_t> asked_at;  // the end the zone keeps: its start, or its end when backward
  std::vector<bool> asked_backward;

 private:
  size_t calls_ = 0;
};

TEST(Engine, OnlineGateMayShortenZonesToWholeBlocks) {
  for (bool decrypt : {false, true}) {
    Fixture f = decrypt ? MakeDecryptInitialised(Resilience::kChecksum, 4096) : MakeInitialised(Resilience::kChecksum, 4096);
    MemDevice h("hdr", f.header);
    FaultDevice d("data", f.data);
    auto v = Open(&h, &d);
    ASSERT_TRUE(v.ok());
    ShrinkingGate gate(h, d);
    EngineOptions eo = OnlineOptions(&gate, 2);
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
    uint64_t covered = 0;
    for (size_t i = 0; i < gate.zones.size(); ++i) {
      const auto [off, len] = gate.zones[i];
      EXPECT_EQ(len % 4096, 0u) << i;
      EXPECT_LE(len, kHotzone) << i;
      EXPECT_EQ(off, decrypt ? kDataSize - covered - len : covered) << i;
      covered += len;
    }
    EXPECT_EQ(covered, kDataSize);
    // The lengths asked for: 5000 -> 4096, 100 -> 4096, 12295 -> 12288, 1 GiB -> the limit.
    ASSERT_GE(gate.zones.size(), 4u);
    EXPECT_EQ(gate.zones[0].second, 4096u);
    EXPECT_EQ(gate.zones[1].second, 4096u);
    EXPECT_EQ(gate.zones[2].second, 3 * 4096u);
    EXPECT_EQ(gate.zones[3].second, kHotzone);
    for (uint64_t m : gate.asked_max) EXPECT_LE(m, kHotzone);
    // The gate is told where each zone will lie: the end it keeps is the zone's.
    ASSERT_EQ(gate.asked_at.size(), gate.zones.size());
    for (size_t i = 0; i < gate.zones.size(); ++i) {
      const auto [off, len] = gate.zones[i];
      EXPECT_EQ(gate.asked_backward[i], decrypt) << i;
      EXPECT_EQ(gate.asked_at[i], decrypt ? off + len : off) << i;
    }
    EXPECT_EQ(PlainOf(*v, f.key), f.plain) << (decrypt ? "decrypt" : "encrypt");
  }
}

// Records which reads and writes went around the page cache (BlockDevice::ReadAtUncached,
// WriteAtUncached), forwarding everything to a FaultDevice (so RecordingGate still sees every
// write).
class UncachedRecorder final : public BlockDevice {
 public:
  explicit UncachedRecorder(FaultDevice& d) : d_(d) {}
  Status ReadAt(uint64_t o, std::span<uint8_t> b) override {
    Note(cached_reads, o, b.size());
    return d_.ReadAt(o, b);
  }
  Status ReadAtUncached(uint64_t o, std::span<uint8_t> b) override {
    Note(uncached_reads, o, b.size());
    return d_.ReadAt(o, b);
  }
  Status WriteAt(uint64_t o, std::span<const uint8_t> b) override {
    Note(cached, o, b.size());
    return d_.WriteAt(o, b);
  }
  Status WriteAtUncached(uint64_t o, std::span<const uint8_t> b) override {
    Note(uncached, o, b.size());
    return d_.WriteAt(o, b);
  }
  Status Sync() override { return d_.Sync(); }
  uint64_t Size() const override { return d_.Size(); }
  const std::string& name() const override { return d_.name(); }
  bool writable() const override { return true; }
  std::vector<std::pair<uint64_t, uint64_t>> cached, uncached, cached_reads, uncached_reads;

 private:
  void Note(std::vector<std::pair<uint64_t, uint64_t>>& v, uint64_t o, uint64_t n) {
    std::lock_guard<std::mutex> l(mu_);  // the engine writes from several threads
    v.emplace_back(o, n);
  }
  std::mutex mu_;
  FaultDevice& d_;
};

// Online under a dm table users write through (users_bypass_cache), 512-byte sectors, resumed
// where an earlier run stopped mid-page: every byte of every zone is read and written around the
// page cache (a cached page of the data device may be stale, and a buffered write of part of it
// would write users' bytes back as they were), in the lengths the gate asks (whole blocks, no
// page rounding needed), and the result is right both ways.
TEST(Engine, OnlineUnderATableEveryZoneByteGoesAroundTheCache) {
  for (bool decrypt : {false, true}) {
    Fixture f = decrypt ? MakeDecryptInitialised(Resilience::kChecksum, 512) : MakeInitialised(Resilience::kChecksum, 512);
    MemDevice h("hdr", f.header);
    FaultDevice d("data", f.data);
    // An earlier run (no users beside it) stopped after a zone of 4608 bytes: mid-page.
    {
      auto v = Open(&h, &d);
      ASSERT_TRUE(v.ok());
      ShrinkingGate gate(h, d);
      EngineOptions eo = OnlineOptions(&gate);
      eo.until_done = 4608;
      ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
      ASSERT_EQ(gate.zones.size(), 1u);
      EXPECT_EQ(gate.zones[0].second, 4608u);
    }
    FaultDevice d2("data", d.Current());
    UncachedRecorder rec(d2);
    auto v = Open(&h, &rec);
    ASSERT_TRUE(v.ok());
    rec.cached_reads.clear();  // (opening reads what it likes)
    ShrinkingGate gate(h, d2);
    EngineOptions eo = OnlineOptions(&gate, 2);
    eo.users_bypass_cache = true;
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
    ASSERT_GE(gate.zones.size(), 4u);
    // The gate's lengths, whole 512-byte blocks: 5000 -> 4608, 100 -> 512, 3*4096+7 -> 12288.
    EXPECT_EQ(gate.zones[0].second, 4608u);
    EXPECT_EQ(gate.zones[1].second, 512u);
    EXPECT_EQ(gate.zones[2].second, 3u * 4096);
    uint64_t covered = 4608;
    for (size_t i = 0; i < gate.zones.size(); ++i) {
      const auto [off, len] = gate.zones[i];
      EXPECT_EQ(off, decrypt ? kDataSize - covered - len : covered) << i;
      covered += len;
    }
    EXPECT_EQ(covered, kDataSize);
    EXPECT_TRUE(rec.cached.empty()) << rec.cached.size() << " buffered writes, the first at " << rec.cached[0].first;
    EXPECT_TRUE(rec.cached_reads.empty()) << rec.cached_reads.size() << " buffered reads";
    uint64_t written = 0, read = 0;
    for (const auto& [o, n] : rec.uncached) written += n;
    for (const auto& [o, n] : rec.uncached_reads) read += n;
    EXPECT_EQ(written, kDataSize - 4608);
    EXPECT_EQ(read, kDataSize - 4608);
    EXPECT_EQ(PlainOf(*v, f.key), f.plain) << (decrypt ? "decrypt" : "encrypt");
  }
}

// A gate that asks for zones of one length and, at its first Hold, runs `at_hold` (a user's
// write beside the zone).
class UserAtHoldGate : public ZoneGate {
 public:
  UserAtHoldGate(uint64_t len, std::function<void()> at_hold) : len_(len), at_hold_(std::move(at_hold)) {}
  uint64_t ZoneLength(uint64_t, uint64_t max, bool) override { return std::min(max, len_); }
  Status Hold(uint64_t, uint64_t, uint64_t) override {
    if (at_hold_) std::exchange(at_hold_, nullptr)();
    return Status::Ok();
  }
  Status Release(const luks2::Metadata&) override { return Status::Ok(); }

 private:
  uint64_t len_;
  std::function<void()> at_hold_;
};

// Online under a real page cache: the data device is a loop device and users write through a
// second loop device over the same file (as through the dm table: around the data device's page
// cache). An earlier run stopped mid-page, its buffered write left that page cached; when the
// next run holds its first zone, a user writes the done part of the page. The run must neither
// read the zone's part of the page from the stale cache nor write the page back whole: the
// user's sector stays, and every other byte is the volume's plaintext.
TEST(Engine, OnlineKeepsUsersBytesInAPageItsFirstZoneShares) {
  if (::geteuid() != 0) GTEST_SKIP() << "loop devices need root";
  const uint64_t page = CachePageSize();
  Fixture f = MakeInitialised(Resilience::kChecksum, 512);
  test::TempDir dir;
  test::WriteFile(dir / "data", std::string(f.data.begin(), f.data.end()));
  test::LoopDevice mine(dir / "data"), users(dir / "data");
  ASSERT_FALSE(mine.dev().empty());
  ASSERT_FALSE(users.dev().empty());
  auto data = PosixEnv()->Open(mine.dev(), {.write = true});
  ASSERT_TRUE(data.ok()) << data.status().message();
  MemDevice h("hdr", f.header);
  const uint64_t first = page + 512;  // where the earlier run stopped
  {
    auto v = Open(&h, data->get());
    ASSERT_TRUE(v.ok());
    UserAtHoldGate gate(first, nullptr);
    EngineOptions eo = OnlineOptions(&gate);
    eo.users_bypass_cache = false;  // an older diskseal: buffered, mid-page
    eo.until_done = first;
    ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
  }
  const Bytes user = test::RandomData(512, 5);
  auto v = Open(&h, data->get());
  ASSERT_TRUE(v.ok());
  UserAtHoldGate gate(kHotzone, [&] {
    const int fd = ::open(users.dev().c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    IoBuffer b(512);
    std::copy(user.begin(), user.end(), b.data());
    EXPECT_EQ(::pwrite(fd, b.data(), 512, off_t(page)), 512);
    ::close(fd);
  });
  EngineOptions eo = OnlineOptions(&gate, 2);
  eo.users_bypass_cache = true;
  ASSERT_TRUE(RunOperation(*v, {{0, &f.key}}, eo).ok());
  data->reset();
  const std::string img = test::ReadFileOrDie(dir / "data");
  EXPECT_EQ(Bytes(img.begin() + long(page), img.begin() + long(page + 512)), user) << "the user's sector was lost";
  MemDevice d("data", Bytes(img.begin(), img.end()));
  auto done = Open(&h, &d);
  ASSERT_TRUE(done.ok());
  const Bytes out = PlainOf(*done, f.key);
  Bytes want = f.plain;
  std::copy_n(out.begin() + long(page), 512, want.begin() + long(page));  // the user's sector
  EXPECT_EQ(out, want);
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
    for (uint64_t k = 1; k <= total; k += CrashStride()) {
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
    EXPECT_GT(points, 150 / int(CrashStride()));
  }
}


// ---- reencryption of a volume whose header is at the start (no data shift) ----

constexpr uint64_t kAttachedOffset = 1u << 20;  // header copies + two keyslots + the reencrypt area

// One device: a LUKS2 header at 0, kDataSize bytes of ciphertext at kAttachedOffset, right after
// `reencrypt` initialised it (old key digest 0, new key digest 1, 512 -> 4096-byte sectors).
struct AttachedFixture {
  Bytes plain, device;
  SecureBuffer key, new_key;
};
AttachedFixture MakeAttachedReencrypt(Resilience res) {
  AttachedFixture f;
  test::TempDir dir;
  f.plain = test::RandomData(kDataSize, 700 + uint64_t(res));
  test::WriteFile(dir / "dev", std::string(kAttachedOffset + kDataSize, '\0'));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = 512;
  o.offset_sectors = kAttachedOffset / 512;
  {
    auto v = luks2::Volume::Format(*PosixEnv(), dir / "dev", "", o, AsBytes("pw"), nullptr, &f.key);
    EXPECT_TRUE(v.ok()) << v.status().message();
  }
  auto v = luks2::Volume::Load(*PosixEnv(), dir / "dev", "", true);
  EXPECT_TRUE(v.ok());
  auto data = v->OpenData({{0, &f.key}});
  EXPECT_TRUE(data.ok() && (*data)->Size() == kDataSize);
  EXPECT_TRUE((*data)->WriteAt(0, f.plain).ok() && (*data)->Sync().ok());
  f.new_key = SecureBuffer(64);
  EXPECT_TRUE(RandomBytes(f.new_key.span()).ok());
  auto kdf = luks2::ChooseKdf(test::FastPbkdf());
  EXPECT_TRUE(kdf.ok());
  Status s = InitReencrypt(v->mutable_metadata(), v->metadata_device(), f.key, f.new_key, AsBytes("pw"), *kdf,
                           "aes-xts-plain64", 4096, res, 1000);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(v->Commit().ok());
  std::string d = test::ReadFileOrDie(dir / "dev");
  f.device.assign(d.begin(), d.end());
  return f;
}

Status RunAttached(BlockDevice& dev, const AttachedFixture& f) {
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::FromDevices("dev", std::make_unique<DeviceRef>(&dev), nullptr));
  EngineOptions eo;
  eo.hotzone_bytes = kHotzone;
  eo.threads = 2;
  return RunOperation(v, {{0, &f.key}, {1, &f.new_key}}, eo);
}

// The header and the data share one device: the reencryption area sits in the header's keyslots
// area, in front of the data it protects. A power cut at every write and sync resumes to the
// original plaintext under the new key, and the old key's keyslot is gone.
TEST(Engine, AttachedReencryptPowerCutAtEveryInstantResumesToTheOriginalBytes) {
  using C = FaultDevice::CutMode;
  const std::vector<std::pair<Resilience, std::vector<C>>> cases = {
      {Resilience::kChecksum, {C::kDropUnsynced, C::kKeepSome}},
      {Resilience::kJournal, {C::kDropUnsynced, C::kTearOne}},
  };
  for (const auto& [res, cuts] : cases) {
    AttachedFixture f = MakeAttachedReencrypt(res);
    uint64_t total;
    {
      FaultDevice d("dev", f.device);
      ASSERT_TRUE(RunAttached(d, f).ok());
      total = d.ops();
    }
    ASSERT_GT(total, 60u);
    int points = 0;
    for (uint64_t k = 1; k <= total; k += CrashStride()) {
      for (auto cut : cuts) {
        SCOPED_TRACE(std::string("attached reencrypt/") + ResilienceName(res) + " crash at op " + std::to_string(k) +
                     " cut " + std::to_string(int(cut)));
        FaultDevice d("dev", f.device);
        d.CrashAfterOps(k);
        (void)RunAttached(d, f);
        MemDevice m("dev", d.PowerCut(cut, k * 11 + 3));
        Status s = RunAttached(m, f);
        ASSERT_TRUE(s.ok()) << s.message();
        auto v = luks2::Volume::FromDevices("dev", std::make_unique<DeviceRef>(&m), nullptr);
        ASSERT_TRUE(v.ok());
        auto st = ReadState(v->metadata(), m.Size());
        ASSERT_TRUE(st.ok() && !st->has_value()) << "operation not finished";
        auto segs = luks2::Segments(v->metadata());
        ASSERT_EQ(segs.size(), 1u);
        EXPECT_EQ(segs[0].offset, kAttachedOffset);
        EXPECT_EQ(segs[0].sector_size, 4096u);
        EXPECT_EQ(luks2::Keyslots(v->metadata()).size(), 1u);  // the old key's keyslot is gone
        auto u = v->Unlock(AsBytes("pw"));
        ASSERT_TRUE(u.ok()) << u.status().message();
        EXPECT_TRUE(std::equal(u->key.data(), u->key.data() + u->key.size(), f.new_key.data()));
        auto plain = v->OpenData({{1, &f.new_key}});
        ASSERT_TRUE(plain.ok()) << plain.status().message();
        Bytes out(kDataSize);
        ASSERT_TRUE((*plain)->ReadAt(0, out).ok());
        ASSERT_EQ(out, f.plain);
        ++points;
      }
    }
    EXPECT_GT(points, 100 / int(CrashStride()));
  }
}

// ---- encryption with the header at the start (data shift) ----

constexpr uint64_t kShift = 320u << 10;                    // the header image: header + one keyslot
constexpr uint64_t kShiftData = 4 * kShift + (64u << 10);  // three full hotzones, a short one, the moved copy
constexpr uint64_t kShiftDevice = kShiftData + 2 * kShift;

// A device whose first kShiftData bytes are the data (the rest is free), and the header image
// `encrypt --reduce-device-size` would place on it.
struct ShiftFixture {
  Bytes plain, device, image;
  SecureBuffer key;
};

ShiftFixture MakeShift(uint32_t sector) {
  test::TempDir dir;
  ShiftFixture f;
  f.device = test::RandomData(kShiftDevice, 300 + sector);
  f.plain.assign(f.device.begin(), f.device.begin() + kShiftData);
  test::WriteFile(dir / "data", std::string(f.device.begin(), f.device.end()));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = sector;
  o.offset_sectors = kShift / 512;
  o.keyslots_size = kShift - 2 * o.metadata_size;
  auto hook = [&](luks2::Metadata& md, const SecureBuffer& k) {
    return InitEncryptShift(md, k, kShift, kShiftData, kShiftDevice, 1000);
  };
  auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), hook, &f.key);
  EXPECT_TRUE(v.ok()) << v.status().message();
  std::string h = test::ReadFileOrDie(dir / "hdr");
  f.image.assign(h.begin(), h.end());
  f.image.resize(kShift, 0);
  return f;
}

// What `diskseal encrypt DEV --reduce-device-size` does on a device it may have worked on before:
// finish an interrupted header placement, or place the header, then run the operation.
Status RunShift(BlockDevice& dev, const ShiftFixture& f, unsigned threads = 2) {
  DS_ASSIGN_OR_RETURN(ShiftStart start, RecoverShiftHeader(dev, kShift));
  if (start == ShiftStart::kNothing) DS_RETURN_IF_ERROR(PlaceShiftHeader(dev, f.image, kShift));
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::FromDevices("dev", std::make_unique<DeviceRef>(&dev), nullptr));
  EngineOptions eo;
  eo.threads = threads;
  return RunOperation(v, {{0, &f.key}}, eo);
}

// Resumes on the bytes a crash left and returns the plaintext of the finished volume.
Bytes FinishShiftAndRead(const Bytes& device, const ShiftFixture& f) {
  MemDevice d("dev", device);
  Status s = RunShift(d, f);
  EXPECT_TRUE(s.ok()) << s.message();
  auto v = luks2::Volume::FromDevices("dev", std::make_unique<DeviceRef>(&d), nullptr);
  EXPECT_TRUE(v.ok()) << v.status().message();
  if (!v.ok()) return {};
  auto st = ReadState(v->metadata(), d.Size());
  EXPECT_TRUE(st.ok() && !st->has_value()) << "operation not finished";
  auto plain = v->OpenData({{0, &f.key}});
  EXPECT_TRUE(plain.ok()) << plain.status().message();
  if (!plain.ok()) return {};
  EXPECT_EQ((*plain)->Size(), kShiftDevice - kShift);
  EXPECT_EQ(v->metadata().json["tokens"].size(), 0u);  // the moved copy's wipe is done
  Bytes tail(kShift);
  EXPECT_TRUE(d.ReadAt(kShiftDevice - kShift, tail).ok());
  EXPECT_NE(tail, Bytes(f.plain.begin(), f.plain.begin() + kShift));
  Bytes out(kShiftData);
  EXPECT_TRUE((*plain)->ReadAt(0, out).ok());
  return out;
}

TEST(Engine, DatashiftEncryptsWithTheHeaderAtTheStartInCryptsetupsLayout) {
  ShiftFixture f = MakeShift(4096);
  MemDevice d("dev", f.device);
  ASSERT_TRUE(PlaceShiftHeader(d, f.image, kShift).ok());
  {
    auto v = luks2::Volume::FromDevices("dev", std::make_unique<DeviceRef>(&d), nullptr);
    ASSERT_TRUE(v.ok()) << v.status().message();
    auto st = ReadState(v->metadata(), d.Size());
    ASSERT_TRUE(st.ok() && st->has_value()) << st.status().message();
    EXPECT_TRUE((*st)->backward);
    EXPECT_EQ((*st)->shift, kShift);
    EXPECT_EQ((*st)->data_size, kShiftData);
    EXPECT_EQ((*st)->done, 0u);
    ASSERT_TRUE((*st)->moved.has_value());
    EXPECT_EQ((*st)->moved->offset, kShiftDevice - kShift);
    Bytes copy(kShift);
    ASSERT_TRUE(d.ReadAt(kShiftDevice - kShift, copy).ok());
    EXPECT_EQ(copy, Bytes(f.plain.begin(), f.plain.begin() + kShift));  // the moved copy
    EXPECT_TRUE(CheckVerificationDigest(v->metadata(), **st, nullptr, &f.key).ok());
    // progress in cryptsetup's layout: moved copy, old linear, hotzone, new crypt (fixed size)
    luks2::Metadata md = v->metadata();
    SetProgress(md, **st, kShift, kShift);
    EXPECT_TRUE(luks2::Validate(md).ok());
    auto segs = luks2::Segments(md);
    ASSERT_EQ(segs.size(), 7u);
    EXPECT_EQ(segs[0].offset, kShiftDevice - kShift);
    EXPECT_EQ(segs[1].type, "linear");
    EXPECT_EQ(segs[1].offset, kShift);
    EXPECT_EQ(*segs[1].size, kShiftData - 3 * kShift);
    EXPECT_TRUE(segs[2].has_flag("in-reencryption"));
    EXPECT_EQ(segs[2].offset, kShift + kShiftData - 2 * kShift);
    EXPECT_EQ(segs[3].size, kShift);
    auto again = ReadState(md, d.Size());
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ((*again)->done, kShift);
    EXPECT_EQ((*again)->hotzone_len, kShift);
  }
  EXPECT_EQ(FinishShiftAndRead(d.Snapshot(), f), f.plain);
  // the plaintext copy at the end is wiped
  MemDevice done("dev", d.Snapshot());
  ASSERT_TRUE(RunShift(done, f).ok());
  Bytes tail(kShift);
  ASSERT_TRUE(done.ReadAt(kShiftDevice - kShift, tail).ok());
  EXPECT_NE(tail, Bytes(f.plain.begin(), f.plain.begin() + kShift));
}

TEST(Engine, DatashiftEioMidWayStopsCleanlyAndResumes) {
  ShiftFixture f = MakeShift(4096);
  for (uint64_t at : {uint64_t(100), kShiftDevice - kShift / 2, kShift + kShiftData / 2}) {
    SCOPED_TRACE("EIO at " + std::to_string(at));
    FaultDevice d("dev", f.device);
    d.FailWriteAt(at, at + 1);
    Status s = RunShift(d, f);
    EXPECT_EQ(s.code(), Code::kIOError) << s.message();
    d.ClearFaults();
    EXPECT_EQ(FinishShiftAndRead(d.Current(), f), f.plain);
  }
}

// A power cut at every write and sync of the header placement and the whole operation, in every
// cut mode; after each, running the command again finishes and the plaintext is the original.
TEST(Engine, DatashiftPowerCutAtEveryInstantResumesToTheOriginalBytes) {
  using C = FaultDevice::CutMode;
  for (uint32_t sector : {4096u, 512u}) {
    ShiftFixture f = MakeShift(sector);
    uint64_t total;
    {
      FaultDevice d("dev", f.device);
      ASSERT_TRUE(RunShift(d, f).ok());
      total = d.ops();
    }
    ASSERT_GT(total, 60u);
    int points = 0;
    for (uint64_t k = 1; k <= total; k += CrashStride()) {
      for (auto cut : {C::kDropUnsynced, C::kKeepSome, C::kTearOne}) {
        SCOPED_TRACE("datashift/" + std::to_string(sector) + " crash at op " + std::to_string(k) + " cut " +
                     std::to_string(int(cut)));
        FaultDevice d("dev", f.device);
        d.CrashAfterOps(k);
        (void)RunShift(d, f);
        Bytes after = d.PowerCut(cut, k * 11 + 3);
        ASSERT_EQ(FinishShiftAndRead(after, f), f.plain);
        ++points;
      }
    }
    EXPECT_GT(points, 180 / int(CrashStride()));
  }
}

// Recovery is repeatable: a second power cut at every write and sync of the run that resumes
// (including one that finishes a header placement) still ends with the original bytes.
TEST(Engine, DatashiftPowerCutDuringRecoveryResumesToTheOriginalBytes) {
  using C = FaultDevice::CutMode;
  ShiftFixture f = MakeShift(4096);
  uint64_t total;
  {
    FaultDevice d("dev", f.device);
    ASSERT_TRUE(RunShift(d, f).ok());
    total = d.ops();
  }
  int points = 0;
  for (uint64_t k = 1; k <= total; k += 4) {
    FaultDevice first("dev", f.device);
    first.CrashAfterOps(k);
    (void)RunShift(first, f);
    const Bytes after_first = first.PowerCut(C::kTearOne, k);
    uint64_t resume_ops;
    {
      FaultDevice d("dev", after_first);
      ASSERT_TRUE(RunShift(d, f).ok());
      resume_ops = d.ops();
    }
    for (uint64_t j = 1; j <= resume_ops; j += CrashStride()) {
      SCOPED_TRACE("first crash at op " + std::to_string(k) + ", second at op " + std::to_string(j));
      FaultDevice d("dev", after_first);
      d.CrashAfterOps(j);
      (void)RunShift(d, f);
      ASSERT_EQ(FinishShiftAndRead(d.PowerCut(j % 2 ? C::kKeepSome : C::kTearOne, j * 5 + k), f), f.plain);
      ++points;
    }
  }
  EXPECT_GT(points, 500 / int(CrashStride()));
}

// Decryption of a volume whose header was at the start (cryptsetup 2.6.1's `reencrypt --decrypt
// --header NEWFILE`): the header has been exported to its own device with the operation recorded
// (the CLI does that in a temp file it renames), the device's [0, S) will receive the copy of the
// ciphertext at [S, 2S), then the data moves back to offset 0.
constexpr uint64_t kDecShiftDevice = 5 * kShift + (64u << 10);  // rest: three full hotzones and a short one

struct DecShiftFixture {
  Bytes plain, header, device;
  SecureBuffer key;
};

DecShiftFixture MakeDecryptShift(uint32_t sector) {
  test::TempDir dir;
  DecShiftFixture f;
  f.plain = test::RandomData(kDecShiftDevice - kShift, 400 + sector);
  test::WriteFile(dir / "data", std::string(kDecShiftDevice, '\0'));
  luks2::FormatOptions o = test::FastFormat();
  o.sector_size = sector;
  o.offset_sectors = kShift / 512;
  o.keyslots_size = kShift - 2 * o.metadata_size;
  {
    auto v = luks2::Volume::Format(*PosixEnv(), dir / "data", dir / "hdr", o, AsBytes("pw"), nullptr, &f.key);
    EXPECT_TRUE(v.ok()) << v.status().message();
  }
  auto v = luks2::Volume::Load(*PosixEnv(), dir / "data", dir / "hdr", true);
  EXPECT_TRUE(v.ok());
  auto data = v->OpenData({{0, &f.key}});
  EXPECT_TRUE(data.ok() && (*data)->WriteAt(0, f.plain).ok() && (*data)->Sync().ok());
  Status s = InitDecryptShift(v->mutable_metadata(), f.key, kDecShiftDevice, 1000);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(v->Commit().ok());
  std::string h = test::ReadFileOrDie(dir / "hdr"), d = test::ReadFileOrDie(dir / "data");
  f.header.assign(h.begin(), h.end());
  f.device.assign(d.begin(), d.end());
  std::fill(f.device.begin(), f.device.begin() + kShift, 0x5a);  // where the header was
  return f;
}

// One run of the command: the front copy unless the header is already "renamed into place"
// (`placed`, set only once the copy is durable, as the rename follows the sync), then the engine.
Status RunDecShift(BlockDevice& hdr, BlockDevice& dev, bool& placed, const SecureBuffer& key) {
  if (!placed) {
    DS_RETURN_IF_ERROR(CopyMovedSegmentToFront(dev, kShift));
    placed = true;
  }
  DS_ASSIGN_OR_RETURN(luks2::Volume v, Open(&hdr, &dev));
  EngineOptions eo;
  eo.threads = 2;
  return RunOperation(v, {{0, &key}}, eo);
}

Bytes FinishDecShiftAndRead(const Bytes& header, const Bytes& device, bool placed, const SecureBuffer& key) {
  MemDevice h("hdr", header), d("data", device);
  Status s = RunDecShift(h, d, placed, key);
  EXPECT_TRUE(s.ok()) << s.message();
  auto v = Open(&h, &d);
  EXPECT_TRUE(v.ok()) << v.status().message();
  if (!v.ok()) return {};
  auto st = ReadState(v->metadata(), d.Size());
  EXPECT_TRUE(st.ok() && !st->has_value()) << "operation not finished";
  auto segs = luks2::Segments(v->metadata());
  EXPECT_TRUE(segs.size() == 1 && segs[0].type == "linear" && segs[0].offset == 0);
  EXPECT_TRUE(v->metadata().requirements().empty());
  Bytes out(kDecShiftDevice - kShift);
  EXPECT_TRUE(d.ReadAt(0, out).ok());
  return out;
}

TEST(Engine, DatashiftDecryptsBackToOffsetZeroInCryptsetupsLayout) {
  DecShiftFixture f = MakeDecryptShift(4096);
  MemDevice h("hdr", f.header), d("data", f.device);
  {
    auto v = Open(&h, &d);
    ASSERT_TRUE(v.ok());
    auto st = ReadState(v->metadata(), d.Size());
    ASSERT_TRUE(st.ok() && st->has_value()) << st.status().message();
    EXPECT_TRUE((*st)->decrypt_shift());
    EXPECT_EQ((*st)->shift, kShift);
    EXPECT_EQ((*st)->data_size, kDecShiftDevice - kShift);
    EXPECT_EQ((*st)->done, 0u);
    EXPECT_EQ(v->metadata().requirements(), std::vector<std::string>{"online-reencrypt-v3"});
    EXPECT_TRUE(CheckVerificationDigest(v->metadata(), **st, &f.key, nullptr).ok());
    // a hotzone of the rest under way, then the moved segment under way: cryptsetup's segments
    luks2::Metadata md = v->metadata();
    SetProgress(md, **st, kShift, kShift);
    auto segs = luks2::Segments(md);
    ASSERT_GE(segs.size(), 4u);
    EXPECT_EQ(segs[0].type, "crypt");
    EXPECT_EQ(segs[0].offset, 0u);
    EXPECT_EQ(segs[1].type, "linear");
    EXPECT_EQ(segs[1].offset, kShift);
    EXPECT_TRUE(segs[2].has_flag("in-reencryption"));
    EXPECT_EQ(segs[2].offset, 2 * kShift);
    EXPECT_EQ(segs[3].offset, 4 * kShift);
    EXPECT_EQ(segs[3].iv_tweak, 3 * kShift / 512);
    auto again = ReadState(md, d.Size());
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ((*again)->done, kShift);
    EXPECT_EQ((*again)->hotzone_len, kShift);
    EXPECT_EQ((*again)->StepOffset(kShift, kShift), 2 * kShift);
    const uint64_t rest = kDecShiftDevice - 2 * kShift;
    SetProgress(md, **st, rest, kShift);
    auto last = ReadState(md, d.Size());
    ASSERT_TRUE(last.ok()) << last.status().message();
    EXPECT_EQ((*last)->done, rest);
    EXPECT_EQ((*last)->hotzone_len, kShift);
    EXPECT_EQ((*last)->StepOffset(rest, kShift), 0u);
    EXPECT_TRUE(luks2::Validate(md).ok());
  }
  EXPECT_EQ(FinishDecShiftAndRead(f.header, f.device, false, f.key), f.plain);
}

TEST(Engine, DatashiftDecryptEioMidWayStopsCleanlyAndResumes) {
  DecShiftFixture f = MakeDecryptShift(4096);
  for (uint64_t at : {uint64_t(100), 2 * kShift + 100, kShift / 2}) {
    SCOPED_TRACE("EIO at " + std::to_string(at));
    MemDevice h("hdr", f.header);
    FaultDevice d("data", f.device);
    bool placed = at != 100;  // at 100: during the front copy
    if (placed) {
      ASSERT_TRUE(CopyMovedSegmentToFront(d, kShift).ok());
    }
    d.FailWriteAt(at, at + 1);
    Status s = RunDecShift(h, d, placed, f.key);
    EXPECT_EQ(s.code(), Code::kIOError) << s.message();
    d.ClearFaults();
    EXPECT_EQ(FinishDecShiftAndRead(h.Snapshot(), d.Current(), placed, f.key), f.plain);
  }
}

// A power cut at every write and sync of the front copy and the whole operation, in every cut
// mode (with 4 KiB sectors the in-place moved hotzone assumes 4 KiB writes are atomic, as
// checksum mode does); after each, running the command again gives back the original bytes.
TEST(Engine, DatashiftDecryptPowerCutAtEveryInstantResumesToTheOriginalBytes) {
  using C = FaultDevice::CutMode;
  struct Case {
    uint32_t sector;
    std::vector<C> cuts;
  };
  for (const Case& c : {Case{512, {C::kDropUnsynced, C::kKeepSome, C::kTearOne}},
                        Case{4096, {C::kDropUnsynced, C::kKeepSome}}}) {
    DecShiftFixture f = MakeDecryptShift(c.sector);
    uint64_t total;
    {
      auto clock = std::make_shared<FaultClock>();
      FaultDevice h("hdr", f.header, clock), d("data", f.device, clock);
      bool placed = false;
      ASSERT_TRUE(RunDecShift(h, d, placed, f.key).ok());
      total = h.ops();
    }
    ASSERT_GT(total, 40u);
    int points = 0;
    for (uint64_t k = 1; k <= total; k += CrashStride()) {
      for (auto cut : c.cuts) {
        SCOPED_TRACE("decrypt-shift/" + std::to_string(c.sector) + " crash at op " + std::to_string(k) + " cut " +
                     std::to_string(int(cut)));
        auto clock = std::make_shared<FaultClock>();
        FaultDevice h("hdr", f.header, clock), d("data", f.device, clock);
        h.CrashAfterOps(k);
        bool placed = false;
        (void)RunDecShift(h, d, placed, f.key);
        Bytes hdr_after = h.PowerCut(cut, k * 7 + 1);
        Bytes data_after = d.PowerCut(cut, k * 13 + 5);
        ASSERT_EQ(FinishDecShiftAndRead(hdr_after, data_after, placed, f.key), f.plain);
        ++points;
      }
    }
    EXPECT_GT(points, 80 / int(CrashStride()));
  }
}

// The tail check reads what each filesystem's superblock claims (cryptsetup checks nothing).
TEST(Engine, ProbeFilesystemReadsTheSizeEachSuperblockClaims) {
  auto le = [](Bytes& b, size_t at, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b[at + i] = uint8_t(v >> (8 * i));
  };
  {  // ext4, 64-bit block count, 4 KiB blocks
    Bytes b(1u << 20, 0);
    le(b, 1024 + 56, 0xEF53, 2);
    le(b, 1024 + 0x60, 0x80 | 0x40, 4);
    le(b, 1024 + 4, 0x10, 4);
    le(b, 1024 + 0x150, 0x1, 4);
    le(b, 1024 + 24, 2, 4);
    MemDevice d("d", b);
    auto fs = ProbeFilesystem(d);
    ASSERT_TRUE(fs.ok() && fs->has_value());
    EXPECT_EQ((*fs)->type, "ext4");
    EXPECT_EQ((*fs)->size, ((uint64_t(1) << 32) + 0x10) * 4096);
  }
  {  // ext2: no journal, no extents; 1 KiB blocks
    Bytes b(1u << 20, 0);
    le(b, 1024 + 56, 0xEF53, 2);
    le(b, 1024 + 4, 1000, 4);
    MemDevice d("d", b);
    auto fs = ProbeFilesystem(d);
    ASSERT_TRUE(fs.ok() && fs->has_value());
    EXPECT_EQ((*fs)->type, "ext2");
    EXPECT_EQ((*fs)->size, 1000u * 1024);
  }
  {  // xfs: big-endian blocksize and dblocks
    Bytes b(1u << 20, 0);
    std::memcpy(b.data(), "XFSB", 4);
    PutBe32(b.data() + 4, 4096);
    PutBe64(b.data() + 8, 81920);
    MemDevice d("d", b);
    auto fs = ProbeFilesystem(d);
    ASSERT_TRUE(fs.ok() && fs->has_value());
    EXPECT_EQ((*fs)->type, "xfs");
    EXPECT_EQ((*fs)->size, 81920u * 4096);
  }
  {  // btrfs: superblock at 64 KiB, total_bytes
    Bytes b(1u << 20, 0);
    std::memcpy(b.data() + 65536 + 0x40, "_BHRfS_M", 8);
    le(b, 65536 + 0x70, 123456789012ull, 8);
    MemDevice d("d", b);
    auto fs = ProbeFilesystem(d);
    ASSERT_TRUE(fs.ok() && fs->has_value());
    EXPECT_EQ((*fs)->type, "btrfs");
    EXPECT_EQ((*fs)->size, 123456789012ull);
  }
  MemDevice none("d", test::RandomData(1u << 20, 5));
  auto fs = ProbeFilesystem(none);
  ASSERT_TRUE(fs.ok());
  EXPECT_FALSE(fs->has_value());
}

// A staging record from another geometry, or over a moved copy that does not match, is never
// acted on: the front is then the original data and a fresh start is what is safe.
TEST(Engine, DatashiftStagingRecordIsOnlyTrustedWhenEverythingMatches) {
  ShiftFixture f = MakeShift(4096);
  FaultDevice d("dev", f.device);
  d.CrashAfterOps(6);  // step 1 durable, the front keyslot area written but not synced (torn)
  EXPECT_FALSE(PlaceShiftHeader(d, f.image, kShift).ok());
  const Bytes after = d.PowerCut(FaultDevice::CutMode::kTearOne, 9);
  {
    MemDevice m("dev", after);
    auto other = RecoverShiftHeader(m, kShift / 2);  // not the shift it was made for
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(*other, ShiftStart::kNothing);
  }
  {
    Bytes bad = after;
    bad[kShiftDevice - 1] ^= 1;  // the moved copy no longer matches its hash
    MemDevice m("dev", bad);
    auto s = RecoverShiftHeader(m, kShift);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(*s, ShiftStart::kNothing);
  }
  MemDevice m("dev", after);
  auto s = RecoverShiftHeader(m, kShift);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, ShiftStart::kRestored);
  EXPECT_EQ(FinishShiftAndRead(m.Snapshot(), f), f.plain);
}

// Records written before 2026-12 ("diskseal-dshift1") hashed the whole image, zeros included: an
// interrupted placement of that version is still finished.
TEST(Engine, DatashiftVersion1StagingRecordIsStillRecovered) {
  ShiftFixture f = MakeShift(4096);
  FaultDevice d("dev", f.device);
  d.CrashAfterOps(5);  // step 1 durable, the front not yet written
  EXPECT_FALSE(PlaceShiftHeader(d, f.image, kShift).ok());
  Bytes after = d.PowerCut(FaultDevice::CutMode::kDropUnsynced, 1);
  uint8_t* rec = after.data() + (kShiftDevice - 2 * kShift);
  ASSERT_EQ(std::string(reinterpret_cast<const char*>(rec), 16), "diskseal-dshift2");
  const uint64_t used = GetBe64(rec + 32);
  Bytes whole(after.begin() + (kShiftDevice - 2 * kShift) + 4096,
              after.begin() + (kShiftDevice - 2 * kShift) + 4096 + used);
  whole.resize(kShift, 0);
  auto whole_sum = Hash("sha256", whole);
  ASSERT_TRUE(whole_sum.ok());
  std::memcpy(rec, "diskseal-dshift1", 16);
  std::memcpy(rec + 72, whole_sum->data(), 32);
  auto self = Hash("sha256", std::span<const uint8_t>(rec, 104));
  ASSERT_TRUE(self.ok());
  std::memcpy(rec + 104, self->data(), 32);
  // The two versions' image sums differ, so only the version-1 rule accepts this record.
  auto prefix_sum = Hash("sha256", std::span<const uint8_t>(whole).first(used));
  ASSERT_TRUE(prefix_sum.ok());
  ASSERT_LT(used, kShift);
  EXPECT_NE(*prefix_sum, *whole_sum);
  MemDevice m("dev", after);
  auto s = RecoverShiftHeader(m, kShift);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(*s, ShiftStart::kRestored);
  EXPECT_EQ(FinishShiftAndRead(m.Snapshot(), f), f.plain);
}

}  // namespace
}  // namespace ds::engine
