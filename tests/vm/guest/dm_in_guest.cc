// Runs INSIDE the QEMU guest (tests/vm/dm_vm_test.cc copies it in): the dm part against the real
// kernel. Convention set by the guest script: /dev/vda is a scratch disk; /dev/vdb holds a LUKS2
// volume cryptsetup formatted (uuid, sector size 4096, data at 16 MiB) whose volume key is in
// /tmp/vk.hex and whose passphrase is in /tmp/pw.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "dm/dm.h"
#include "online/zone_heat.h"
#include "testlib.h"
#include "volume/crypt_device.h"

namespace ds::dm {
namespace {

constexpr char kLuksUuid[] = "6b8a7c2e-3f41-4d0e-9a5b-1c2d3e4f5a6b";

// Reads or writes a device with O_DIRECT so the page cache cannot hide what the kernel did.
class DirectFile {
 public:
  DirectFile(const std::string& path, bool write) {
    fd_ = ::open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    EXPECT_GE(fd_, 0) << path << ": " << std::strerror(errno);
  }
  ~DirectFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void Write(uint64_t off, const Bytes& data) {
    void* p = nullptr;
    ASSERT_EQ(posix_memalign(&p, 4096, data.size()), 0);
    std::memcpy(p, data.data(), data.size());
    EXPECT_EQ(::pwrite(fd_, p, data.size(), off_t(off)), ssize_t(data.size()));
    EXPECT_EQ(::fsync(fd_), 0);
    free(p);
  }
  Bytes Read(uint64_t off, size_t n) {
    void* p = nullptr;
    EXPECT_EQ(posix_memalign(&p, 4096, n), 0);
    EXPECT_EQ(::pread(fd_, p, n, off_t(off)), ssize_t(n));
    Bytes out(static_cast<uint8_t*>(p), static_cast<uint8_t*>(p) + n);
    free(p);
    return out;
  }

 private:
  int fd_ = -1;
};

void FlushBuffers(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::ioctl(fd, BLKFLSBUF, 0), 0) << std::strerror(errno);
  ::close(fd);
}

dev_t DevOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_rdev;
}

TEST(DmInGuest, Available) { ASSERT_TRUE(Available()); }

// A table like one in the middle of an in-place encryption: crypt (4K sectors), linear, crypt
// (512-byte sectors, iv offset continuing the plaintext position). What the kernel writes through
// it must be what CryptDevice reads from the raw disk, and the other way round.
TEST(DmInGuest, MixedTableMatchesCryptDevice) {
  SecureBuffer key(64);
  ASSERT_TRUE(RandomBytes(key.span()).ok());
  const uint64_t base = 2048;  // segments start 1 MiB into the disk
  Segment a, b, c;
  a.cipher = c.cipher = "aes-xts-plain64";
  a.sectors = 8192;
  a.device_sector = base;
  a.sector_size = 4096;
  a.iv_offset = 0;
  b.type = Segment::Type::kLinear;
  b.sectors = 4096;
  b.device_sector = base + 8192;
  c.sectors = 4096;
  c.device_sector = base + 8192 + 4096;
  c.sector_size = 512;
  c.iv_offset = 8192 + 4096;
  Activation act;
  act.name = "mixed";
  act.luks_uuid = kLuksUuid;
  act.device = "/dev/vda";
  a.key = c.key = key.span();
  act.segments = {a, b, c};
  Status s = Create(act);
  ASSERT_TRUE(s.ok()) << s.ToString();

  auto info = Find("mixed");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ASSERT_TRUE(info->has_value());
  const MappingInfo& m = **info;
  EXPECT_EQ(m.uuid, MakeUuid(kLuksUuid, "mixed"));
  EXPECT_TRUE(IsLuks2(m));
  EXPECT_FALSE(IsStale(m));
  EXPECT_EQ(m.target_types, (std::vector<std::string>{"crypt", "linear", "crypt"}));
  ASSERT_EQ(m.deps.size(), 1u);
  EXPECT_EQ(m.deps[0], DevOf("/dev/vda"));
  auto holders = Holders(DevOf("/dev/vda"));
  ASSERT_TRUE(holders.ok());
  ASSERT_EQ(holders->size(), 1u);

  const size_t total = size_t(8192 + 4096 + 4096) * 512;
  Bytes plain = test::RandomData(total, 42);
  {
    DirectFile mapped("/dev/mapper/mixed", true);
    mapped.Write(0, plain);
  }
  auto raw = PosixEnv()->Open("/dev/vda", {.write = true, .exclusive = false, .direct = false});
  ASSERT_TRUE(raw.ok());
  auto view = [&](const Segment& seg) {
    std::unique_ptr<SectorCipher> ci;
    if (seg.type == Segment::Type::kCrypt) {
      auto cc = SectorCipher::Create(seg.cipher, key.span());
      EXPECT_TRUE(cc.ok());
      ci = std::move(*cc);
    }
    return std::make_unique<CryptDevice>(raw->get(), seg.device_sector * 512, seg.sectors * 512,
                                         std::move(ci), seg.sector_size, seg.iv_offset);
  };
  // dm wrote below /dev/vda's page cache: drop it before reading the disk through it.
  FlushBuffers("/dev/vda");
  uint64_t pos = 0;
  for (const Segment& seg : act.segments) {
    Bytes got(seg.sectors * 512);
    Bytes ondisk(got.size());
    ASSERT_TRUE((*raw)->ReadAt(seg.device_sector * 512, ondisk).ok());
    auto v = view(seg);
    ASSERT_TRUE(v->ReadAt(0, got).ok());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), plain.begin() + long(pos)))
        << "segment at plaintext sector " << pos / 512;
    if (seg.type == Segment::Type::kCrypt) {
      EXPECT_FALSE(std::equal(ondisk.begin(), ondisk.end(), plain.begin() + long(pos)));
    }
    pos += got.size();
  }
  // And back: CryptDevice writes, the kernel reads.
  Bytes plain2 = test::RandomData(total, 43);
  pos = 0;
  for (const Segment& seg : act.segments) {
    auto v = view(seg);
    ASSERT_TRUE(v->WriteAt(0, std::span(plain2).subspan(pos, seg.sectors * 512)).ok());
    pos += seg.sectors * 512;
  }
  ASSERT_TRUE((*raw)->Sync().ok());
  raw->reset();
  {
    DirectFile mapped("/dev/mapper/mixed", false);
    EXPECT_TRUE(mapped.Read(0, total) == plain2);
  }
  ASSERT_TRUE(Remove("mixed").ok());
  auto gone = Find("mixed");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  EXPECT_EQ(Remove("mixed").code(), Code::kNotFound);
}

TEST(DmInGuest, BusyNameAndOpenDevice) {
  SecureBuffer key(64);
  ASSERT_TRUE(RandomBytes(key.span()).ok());
  Segment a;
  a.cipher = "aes-xts-plain64";
  a.sectors = 2048;
  a.device_sector = 2048;
  Activation act;
  act.name = "one";
  act.luks_uuid = kLuksUuid;
  act.device = "/dev/vda";
  a.key = key.span();
  act.segments = {a};
  ASSERT_TRUE(Create(act).ok());
  Status again = Create(act);
  EXPECT_EQ(again.code(), Code::kBusy) << again.ToString();
  {
    DirectFile held("/dev/mapper/one", false);  // an opener: removal must refuse
    Status busy = Remove("one");
    EXPECT_EQ(busy.code(), Code::kBusy) << busy.ToString();
  }
  EXPECT_TRUE(Remove("one").ok());
}

// The online gate's view of where users work (online/zone_heat.h) from the kernel's own I/O
// statistics: a write through the mapping makes its area busy and no other; the window moves
// with the zones; the regions are found and deleted by program id.
TEST(DmInGuest, ZoneHeatSeesWhereUsersWrite) {
  constexpr uint64_t kMiB = 1u << 20;
  Segment lin;
  lin.type = Segment::Type::kLinear;
  lin.sectors = 64 * 2048;  // 64 MiB of /dev/vda
  Activation act;
  act.name = "heat";
  act.luks_uuid = kLuksUuid;
  act.device = "/dev/vda";
  act.segments = {lin};
  ASSERT_TRUE(Create(act).ok());
  const auto regions = [] {
    auto l = Message("heat", std::string("@stats_list ") + online::kStatsProgram);
    EXPECT_TRUE(l.ok()) << l.status().message();
    return l.ok() ? online::ParseStatsList(*l, online::kStatsProgram).size() : size_t(99);
  };
  {
    online::ZoneHeat heat("heat", 64 * kMiB, kMiB, 16);
    const auto memory = std::chrono::seconds(3600);
    ASSERT_TRUE(heat.Sample(0, 8 * kMiB, false, online::ZoneHeat::Clock::now()).ok());
    EXPECT_EQ(regions(), 1u);
    EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, false, online::ZoneHeat::Clock::now(), memory), 8 * kMiB);
    DirectFile("/dev/mapper/heat", true).Write(3 * kMiB + 4096, Bytes(4096, 0x5a));
    ASSERT_TRUE(heat.Sample(0, 8 * kMiB, false, online::ZoneHeat::Clock::now()).ok());
    const auto now = online::ZoneHeat::Clock::now();
    EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, false, now, memory), 3 * kMiB);
    EXPECT_EQ(heat.ColdRun(3 * kMiB, 8 * kMiB, false, now, memory), 0u);
    EXPECT_EQ(heat.ColdRun(4 * kMiB, 8 * kMiB, false, now, memory), 8 * kMiB);
    EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, true, now, memory), 4 * kMiB);
    // Further on: a new window (one region still), which sees a read there too.
    ASSERT_TRUE(heat.Sample(40 * kMiB, 8 * kMiB, false, online::ZoneHeat::Clock::now()).ok());
    EXPECT_EQ(regions(), 1u);
    (void)DirectFile("/dev/mapper/heat", false).Read(45 * kMiB, 4096);
    ASSERT_TRUE(heat.Sample(40 * kMiB, 8 * kMiB, false, online::ZoneHeat::Clock::now()).ok());
    EXPECT_EQ(heat.ColdRun(40 * kMiB, 8 * kMiB, false, online::ZoneHeat::Clock::now(), memory), 5 * kMiB);
  }
  // Another program's region survives the cleanup.
  ASSERT_TRUE(Message("heat", "@stats_create - /4 someone-else").ok());
  online::DeleteHeatRegions("heat");
  EXPECT_EQ(regions(), 0u);
  auto all = Message("heat", "@stats_list");
  ASSERT_TRUE(all.ok());
  EXPECT_NE(all->find("someone-else"), std::string::npos) << *all;
  EXPECT_TRUE(Remove("heat").ok());
}

// A mapping a crash left half made (created, never loaded) is recognised as stale and removable.
TEST(DmInGuest, HalfMadeMappingIsStale) {
  auto r = test::Run({"dmsetup", "create", "half", "--notable", "-u",
                      MakeUuid(kLuksUuid, "half")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = Find("half");
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m->has_value());
  EXPECT_TRUE(IsStale(**m));
  EXPECT_TRUE(Remove("half").ok());
}

// A mapping made from a cryptsetup volume's key and layout: cryptsetup recognises it as LUKS2,
// and data written through it is what cryptsetup's own mapping reads back.
TEST(DmInGuest, CryptsetupRecognisesAndAgrees) {
  std::ifstream f("/tmp/vk.hex");
  std::string hex;
  ASSERT_TRUE(std::getline(f, hex)) << "/tmp/vk.hex missing";
  auto vk = HexDecode(hex);
  ASSERT_TRUE(vk.has_value());
  SecureBuffer key(*vk);
  Segment a;
  a.cipher = "aes-xts-plain64";
  a.device_sector = 32768;
  a.sectors = (40ull << 20) / 512 - 32768;
  a.sector_size = 4096;
  Activation act;
  act.name = "ours";
  act.luks_uuid = kLuksUuid;
  act.device = "/dev/vdb";
  a.key = key.span();
  act.segments = {a};
  ASSERT_TRUE(Create(act).ok());
  auto st = test::Run({"cryptsetup", "status", "ours"});
  EXPECT_EQ(st.exit_code, 0) << st.out << st.err;
  EXPECT_NE(st.out.find("type:    LUKS2"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("sector size:  4096"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("offset:  32768 sectors"), std::string::npos) << st.out;
  Bytes data = test::RandomData(1 << 20, 7);
  {
    DirectFile mapped("/dev/mapper/ours", true);
    mapped.Write(4096, data);
  }
  ASSERT_TRUE(Remove("ours").ok());
  auto op = test::Run({"cryptsetup", "open", "--key-file", "/tmp/pw", "/dev/vdb", "theirs"});
  ASSERT_EQ(op.exit_code, 0) << op.err;
  {
    DirectFile theirs("/dev/mapper/theirs", false);
    EXPECT_TRUE(theirs.Read(4096, data.size()) == data);
  }
  EXPECT_EQ(test::Run({"cryptsetup", "close", "theirs"}).exit_code, 0);
}

}  // namespace
}  // namespace ds::dm
