#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "io/block_device.h"
#include "io/io_buffer.h"
#include "io/mem_device.h"
#include "testlib.h"

namespace ds {
namespace {

TEST(PosixEnv, ReadWriteSyncAndBounds) {
  test::TempDir dir;
  auto dev = PosixEnv()->Create(dir / "img", 8192);
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  Bytes data(4096, 0xab);
  ASSERT_TRUE((*dev)->WriteAt(4096, data).ok());
  ASSERT_TRUE((*dev)->Sync().ok());
  Bytes back(4096);
  ASSERT_TRUE((*dev)->ReadAt(4096, back).ok());
  EXPECT_EQ(back, data);
  EXPECT_EQ((*dev)->ReadAt(4097, back).code(), Code::kIOError);  // past the end
  EXPECT_EQ((*dev)->WriteAt(8000, data).code(), Code::kIOError);
}

// Create reserves the space: a file that does not fit fails at once, and leaves nothing behind
// (a detached header on a full filesystem is refused before anything else is written).
TEST(PosixEnv, CreateReservesSpaceOrFailsWithoutLeavingAFile) {
  test::TempDir dir;
  {
    auto dev = PosixEnv()->Create(dir / "zeros", 3 << 20);
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    Bytes back(3 << 20, 1);
    ASSERT_TRUE((*dev)->ReadAt(0, back).ok());
    EXPECT_EQ(back, Bytes(3 << 20, 0));
    (*dev)->StartWriteback(0, 4096);  // a hint: harmless on a clean file
  }
  if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  const std::string mnt = dir / "small";
  ASSERT_EQ(test::Run({"mkdir", mnt}).exit_code, 0);
  ASSERT_EQ(test::Run({"mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt}).exit_code, 0);
  auto dev = PosixEnv()->Create(mnt + "/hdr", 4 << 20);
  EXPECT_FALSE(dev.ok());
  EXPECT_NE(dev.status().message().find("reserve"), std::string::npos) << dev.status().message();
  EXPECT_FALSE(PosixEnv()->Exists(mnt + "/hdr"));
  EXPECT_EQ(test::Run({"umount", mnt}).exit_code, 0);
}

TEST(PosixEnv, ReadOnlyOpenRefusesWrites) {
  test::TempDir dir;
  test::WriteFile(dir / "f", std::string(1024, 'x'));
  auto dev = PosixEnv()->Open(dir / "f", OpenOptions{});
  ASSERT_TRUE(dev.ok());
  Bytes b(1, 0);
  EXPECT_FALSE((*dev)->WriteAt(0, b).ok());
  EXPECT_EQ(PosixEnv()->Open(dir / "missing", OpenOptions{}).status().code(), Code::kNotFound);
}

TEST(PosixEnv, AtomicFileWrite) {
  test::TempDir dir;
  ASSERT_TRUE(PosixEnv()->WriteFileAtomic(dir / "state", "one").ok());
  ASSERT_TRUE(PosixEnv()->WriteFileAtomic(dir / "state", "two").ok());
  auto r = PosixEnv()->ReadFile(dir / "state", 100);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "two");
  EXPECT_EQ(PosixEnv()->ReadFile(dir / "state", 2).status().code(), Code::kInvalidArgument);
}

TEST(PosixEnv, ListDirReadLinkStatFs) {
  test::TempDir dir;
  test::WriteFile(dir / "a", "x");
  ASSERT_EQ(::symlink("/no/such/target", (dir / "link").c_str()), 0);
  auto names = PosixEnv()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  std::sort(names->begin(), names->end());
  EXPECT_EQ(*names, (std::vector<std::string>{"a", "link"}));
  EXPECT_EQ(PosixEnv()->ListDir(dir / "missing").status().code(), Code::kNotFound);
  auto target = PosixEnv()->ReadLink(dir / "link");  // dangling links read as stored
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(*target, "/no/such/target");
  EXPECT_FALSE(PosixEnv()->ReadLink(dir / "a").ok());
  auto space = PosixEnv()->StatFs(dir.path());
  ASSERT_TRUE(space.ok());
  EXPECT_GT(space->total_bytes, 0u);
  EXPECT_LE(space->avail_bytes, space->total_bytes);
}

// Writes `b` at `off` of block device `dev` around its page cache (as a user's write through a
// device-mapper table over the medium reaches it).
void WriteDirect(const std::string& dev, uint64_t off, const Bytes& b) {
  const int fd = ::open(dev.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << dev;
  IoBuffer buf(b.size());
  std::copy(b.begin(), b.end(), buf.data());
  EXPECT_EQ(::pwrite(fd, buf.data(), b.size(), off_t(off)), ssize_t(b.size()));
  ::close(fd);
}

// Two loop devices over one file: `mine` is the data device the engine opens, `users` stands in
// for a device-mapper table over it, whose writes bypass mine's page cache. What the online
// engine relies on (engine.h, users_bypass_cache): a page of mine's cache goes stale when users
// write part of it; DropCache of any part of a page drops the whole page; a buffered write of
// part of a stale cached page writes the whole page back, the users' bytes as they were before
// (the danger), and WriteAtUncached writes only its own bytes; ReadAtUncached reads the medium's.
TEST(PosixEnv, PagesSharedWithWritesThroughAnotherDevice) {
  if (::geteuid() != 0) GTEST_SKIP() << "loop devices need root";
  const uint64_t page = CachePageSize();
  test::TempDir dir;
  const Bytes orig = test::RandomData(4 * page, 1);
  test::WriteFile(dir / "img", std::string(orig.begin(), orig.end()));
  test::LoopDevice mine(dir / "img"), users(dir / "img");
  ASSERT_FALSE(mine.dev().empty());
  ASSERT_FALSE(users.dev().empty());
  auto d = PosixEnv()->Open(mine.dev(), {.write = true});
  ASSERT_TRUE(d.ok()) << d.status().message();
  BlockDevice& dev = **d;
  Bytes got(page);
  ASSERT_TRUE(dev.ReadAt(page, got).ok());  // page 1 is now in mine's cache
  const Bytes user = test::RandomData(512, 2);
  WriteDirect(users.dev(), page, user);
  Bytes first(512);
  ASSERT_TRUE(dev.ReadAt(page, first).ok());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), orig.begin() + long(page))) << "the cache did not go stale";
  // A read around the cache gets the medium's bytes (and leaves the stale page as it is).
  Bytes medium(512);
  ASSERT_TRUE(dev.ReadAtUncached(page, medium).ok());
  EXPECT_EQ(medium, user);
  // The same into a block-aligned place inside an IoBuffer (no copy on the way).
  IoBuffer inside(2 * 512);
  ASSERT_TRUE(dev.ReadAtUncached(page, inside.span().subspan(512, 512)).ok());
  EXPECT_TRUE(std::equal(user.begin(), user.end(), inside.data() + 512));
  // Dropping only the page's last sector drops the page: its first sector is read anew.
  dev.DropCache(2 * page - 512, 512);
  ASSERT_TRUE(dev.ReadAt(page, first).ok());
  EXPECT_EQ(first, user);

  // Page 2 cached, a user writes its first sector, mine writes its last sector buffered: the
  // user's sector is lost.
  ASSERT_TRUE(dev.ReadAt(2 * page, got).ok());
  WriteDirect(users.dev(), 2 * page, user);
  const Bytes last = test::RandomData(512, 3);
  ASSERT_TRUE(dev.WriteAt(3 * page - 512, last).ok());
  ASSERT_TRUE(dev.Sync().ok());
  // Page 3 the same, written around the cache: both writes stay.
  ASSERT_TRUE(dev.ReadAt(3 * page, got).ok());
  WriteDirect(users.dev(), 3 * page, user);
  ASSERT_TRUE(dev.WriteAtUncached(4 * page - 512, last).ok());
  ASSERT_TRUE(dev.Sync().ok());
  // The uncached write left no stale page behind: a cached read sees both writes.
  Bytes p3(page);
  ASSERT_TRUE(dev.ReadAt(3 * page, p3).ok());
  EXPECT_TRUE(std::equal(user.begin(), user.end(), p3.begin()));
  EXPECT_TRUE(std::equal(last.begin(), last.end(), p3.end() - 512));
  d->reset();
  const std::string img = test::ReadFileOrDie(dir / "img");
  auto at = [&](uint64_t off) { return Bytes(img.begin() + long(off), img.begin() + long(off + 512)); };
  EXPECT_NE(at(2 * page), user) << "a buffered partial-page write kept a user's sector it never read";
  EXPECT_EQ(at(2 * page), Bytes(orig.begin() + long(2 * page), orig.begin() + long(2 * page + 512)));
  EXPECT_EQ(at(3 * page - 512), last);
  EXPECT_EQ(at(3 * page), user);
  EXPECT_EQ(at(4 * page - 512), last);
}

TEST(FaultDevice, PowerCutDropsUnsyncedWrites) {
  FaultDevice dev("f", Bytes(4096, 0));
  Bytes a(512, 1), b(512, 2);
  ASSERT_TRUE(dev.WriteAt(0, a).ok());
  ASSERT_TRUE(dev.Sync().ok());
  ASSERT_TRUE(dev.WriteAt(512, b).ok());
  Bytes img = dev.PowerCut(FaultDevice::CutMode::kDropUnsynced, 1);
  EXPECT_EQ(img[0], 1);
  EXPECT_EQ(img[512], 0);
}

TEST(FaultDevice, CrashAfterOpsFailsEveryLaterOp) {
  FaultDevice dev("f", Bytes(4096, 0));
  Bytes a(512, 1);
  dev.CrashAfterOps(2);
  EXPECT_TRUE(dev.WriteAt(0, a).ok());
  EXPECT_FALSE(dev.Sync().ok());
  EXPECT_FALSE(dev.WriteAt(512, a).ok());
  Bytes r(512);
  EXPECT_FALSE(dev.ReadAt(0, r).ok());
  EXPECT_TRUE(dev.crashed());
}

TEST(FaultDevice, TearKeepsASectorAlignedPrefix) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    FaultDevice dev("f", Bytes(8192, 0));
    Bytes a(4096, 9);
    ASSERT_TRUE(dev.WriteAt(0, a).ok());
    Bytes img = dev.PowerCut(FaultDevice::CutMode::kTearOne, seed);
    size_t kept = 0;
    while (kept < 4096 && img[kept] == 9) ++kept;
    EXPECT_EQ(kept % 512, 0u);
    for (size_t i = kept; i < 4096; ++i) ASSERT_EQ(img[i], 0);
  }
}

TEST(FaultDevice, InjectedEio) {
  FaultDevice dev("f", Bytes(4096, 0));
  dev.FailReadAt(1024, 2048);
  Bytes r(512);
  EXPECT_TRUE(dev.ReadAt(0, r).ok());
  EXPECT_EQ(dev.ReadAt(1536, r).code(), Code::kIOError);
}

}  // namespace
}  // namespace ds
