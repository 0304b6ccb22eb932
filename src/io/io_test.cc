#include <unistd.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "io/block_device.h"
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
