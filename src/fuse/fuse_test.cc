// The userspace view for real: a FUSE mount of a CryptDevice over an image file, driven with the
// kernel's loop driver, mkfs.ext4 and mount (root and /dev/fuse required, as on every CI host).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "crypto/crypto.h"
#include "fuse/daemon.h"
#include "fuse/file_server.h"
#include "fuse/run_dir.h"
#include "testlib.h"
#include "volume/crypt_device.h"

namespace ds::fuse {
namespace {

using test::RunResult;
using test::TempDir;

constexpr uint64_t kDataOffset = 1 << 20;  // the segment starts 1 MiB into the image
constexpr uint64_t kDataSize = 48 << 20;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

bool IsMounted(const std::string& path) {
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.find(" " + path + " ") != std::string::npos) return true;
  return false;
}

// A volume: an image file, a random key, and the plaintext view of one crypt segment.
class Volume {
 public:
  explicit Volume(const std::string& image) : key_(64) {
    EXPECT_TRUE(RandomBytes(key_.span()).ok());
    auto raw = PosixEnv()->Create(image, kDataOffset + kDataSize + (1 << 20));
    EXPECT_TRUE(raw.ok()) << raw.status().ToString();
    raw_ = std::move(*raw);
    image_ = image;
  }
  std::unique_ptr<CryptDevice> View() {
    auto c = SectorCipher::Create("aes-xts-plain64", key_.span());
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::make_unique<CryptDevice>(raw_.get(), kDataOffset, kDataSize, std::move(*c),
                                         4096, 0);
  }

 private:
  SecureBuffer key_;
  std::unique_ptr<BlockDevice> raw_;
  std::string image_;
};

class FuseViewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "these tests mount FUSE and loop devices: run as root";
    ASSERT_TRUE(CheckFuseAvailable().ok()) << CheckFuseAvailable().ToString();
    ASSERT_TRUE(run_.Prepare().ok());
    ::mkdir((dir_ / "mnt").c_str(), 0700);
  }
  void TearDown() override {
    // Leave nothing mounted or attached behind, even when an assertion failed mid-way.
    test::Run({"umount", dir_ / "mnt"});
    auto all = run_.List();
    if (all.ok())
      for (const auto& m : *all) {
        for (const auto& loop : LoopDevicesBackedBy(m.file)) test::Run({"losetup", "-d", loop});
        if (RunDir::IsAlive(m)) StopDaemon(run_, m).ok();
        run_.CleanupStale(m).ok();
      }
  }

  Mapping Start(const std::string& name, BlockDevice* view) {
    StartRequest req;
    req.name = name;
    req.device = image_;
    auto m = StartDaemon(run_, view, req);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : Mapping();
  }

  std::string Losetup(const std::string& file) {
    RunResult r = test::Run({"losetup", "-f", "--show", file});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return Trim(r.out);
  }

  TempDir dir_;
  std::string image_ = dir_ / "disk.img";
  RunDir run_{*PosixEnv(), dir_ / "run"};
};

TEST_F(FuseViewTest, Ext4ThroughLoopSurvivesCloseAndReopen) {
  Volume vol(image_);
  auto view = vol.View();
  Mapping m = Start("vol1", view.get());
  ASSERT_EQ(m.file, dir_ / "run/vol1");
  struct stat st;
  ASSERT_EQ(::stat(m.file.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(uint64_t(st.st_size), kDataSize);

  std::string loop = Losetup(m.file);
  ASSERT_EQ(test::Run({"mkfs.ext4", "-q", "-F", loop}).exit_code, 0);
  const std::string mnt = dir_ / "mnt";
  ASSERT_EQ(test::Run({"mount", loop, mnt}).exit_code, 0);
  test::MakeRandomImage(mnt + "/big", 5 << 20, 7);
  test::WriteFile(mnt + "/small", "hello through FUSE\n");
  std::string big_sum = test::Sha256File(mnt + "/big");

  // Mounted: close must refuse and name the loop device.
  Status busy = StopDaemon(run_, m);
  EXPECT_EQ(busy.code(), Code::kBusy) << busy.ToString();
  EXPECT_NE(busy.message().find(loop), std::string::npos) << busy.message();

  ASSERT_EQ(test::Run({"umount", mnt}).exit_code, 0);
  Status closed = StopDaemon(run_, m);
  ASSERT_TRUE(closed.ok()) << closed.ToString();
  EXPECT_TRUE(LoopDevicesBackedBy(m.file).empty());
  EXPECT_FALSE(IsMounted(m.file));
  EXPECT_FALSE(std::filesystem::exists(m.file));
  auto rec = run_.Find("vol1");
  ASSERT_TRUE(rec.ok());
  EXPECT_FALSE(rec->has_value());

  // What reached the image is ciphertext: the ext4 magic shows only through the cipher.
  uint8_t magic[2];
  auto raw = PosixEnv()->Open(image_, {});
  ASSERT_TRUE(raw.ok());
  ASSERT_TRUE((*raw)->ReadAt(kDataOffset + 1024 + 56, magic).ok());
  EXPECT_FALSE(magic[0] == 0x53 && magic[1] == 0xEF);
  auto check = vol.View();
  ASSERT_TRUE(check->ReadAt(1024 + 56, magic).ok());
  EXPECT_EQ(magic[0], 0x53);
  EXPECT_EQ(magic[1], 0xEF);

  // Reopen, verify, write more, close, reopen, verify everything.
  for (int round = 0; round < 2; ++round) {
    auto v = vol.View();
    Mapping m2 = Start("vol1", v.get());
    loop = Losetup(m2.file);
    ASSERT_EQ(test::Run({"mount", loop, mnt}).exit_code, 0);
    EXPECT_EQ(test::Sha256File(mnt + "/big"), big_sum);
    EXPECT_EQ(test::ReadFileOrDie(mnt + "/small"), "hello through FUSE\n");
    if (round == 0) {
      test::WriteFile(mnt + "/more", std::string(100000, 'x'));
    } else {
      EXPECT_EQ(test::ReadFileOrDie(mnt + "/more"), std::string(100000, 'x'));
    }
    ASSERT_EQ(test::Run({"umount", mnt}).exit_code, 0);
    ASSERT_TRUE(StopDaemon(run_, m2).ok());
  }
  RunResult fsck = test::Run({"e2fsck", "-fn", image_});  // the raw image is not a filesystem
  EXPECT_NE(fsck.exit_code, 0);
}

// Several threads write unaligned, overlapping-sector pieces at once; every byte must land.
TEST_F(FuseViewTest, ConcurrentUnalignedWritesAllLand) {
  Volume vol(image_);
  auto view = vol.View();
  Mapping m = Start("conc", view.get());
  constexpr int kThreads = 4;
  constexpr size_t kPiece = 1000;  // not a multiple of the sector size: read-modify-write
  Bytes expect(kThreads * 64 * kPiece);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      int fd = ::open(m.file.c_str(), O_RDWR | O_DIRECT);
      if (fd < 0) fd = ::open(m.file.c_str(), O_RDWR);
      ASSERT_GE(fd, 0) << std::strerror(errno);
      for (int i = 0; i < 64; ++i) {
        // Interleave threads so neighbouring pieces (same 4K sector) belong to different threads.
        size_t idx = size_t(i) * kThreads + size_t(t);
        Bytes piece = test::RandomData(kPiece, idx + 1);
        std::copy(piece.begin(), piece.end(), expect.begin() + long(idx * kPiece));
        ASSERT_EQ(::pwrite(fd, piece.data(), kPiece, off_t(idx * kPiece)), ssize_t(kPiece));
      }
      ASSERT_EQ(::fsync(fd), 0);
      ::close(fd);
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE(StopDaemon(run_, m).ok());
  Bytes got(expect.size());
  ASSERT_TRUE(vol.View()->ReadAt(0, got).ok());
  EXPECT_TRUE(got == expect);
}

TEST_F(FuseViewTest, NameInUseIsBusy) {
  Volume vol(image_);
  auto view = vol.View();
  Mapping m = Start("dup", view.get());
  StartRequest req;
  req.name = "dup";
  req.device = image_;
  auto again = StartDaemon(run_, view.get(), req);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kBusy) << again.status().ToString();
  EXPECT_TRUE(StopDaemon(run_, m).ok());
}

TEST_F(FuseViewTest, ReadOnlyViewRefusesWrites) {
  Volume vol(image_);
  auto view = vol.View();
  StartRequest req;
  req.name = "ro";
  req.device = image_;
  req.read_only = true;
  auto m = StartDaemon(run_, view.get(), req);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  int fd = ::open(m->file.c_str(), O_RDWR);
  EXPECT_LT(fd, 0);
  if (fd >= 0) ::close(fd);
  fd = ::open(m->file.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char buf[4096];
  EXPECT_EQ(::pread(fd, buf, sizeof buf, 0), ssize_t(sizeof buf));
  ::close(fd);
  EXPECT_TRUE(StopDaemon(run_, *m).ok());
}

// kill -9 of the daemon leaves a dead mount and a record: both are recognised as stale and
// cleaned, and the name can be used again.
TEST_F(FuseViewTest, CrashedDaemonIsStaleAndCleanedUp) {
  Volume vol(image_);
  auto view = vol.View();
  Mapping m = Start("crash", view.get());
  std::string loop = Losetup(m.file);
  ASSERT_EQ(::kill(pid_t(m.pid), SIGKILL), 0);
  // The daemon is this test's child (the CLI's parent exits; here the test is the parent): reap it.
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid_t(m.pid), &wstatus, 0), pid_t(m.pid));
  EXPECT_FALSE(RunDir::IsAlive(m));
  // The connection died with the daemon (attributes may still be cached; opening asks it).
  EXPECT_LT(::open(m.file.c_str(), O_RDONLY), 0);
  EXPECT_EQ(errno, ENOTCONN);

  Status s = StopDaemon(run_, m);  // close of a stale mapping cleans it
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(IsMounted(m.file));
  EXPECT_FALSE(std::filesystem::exists(m.file));
  EXPECT_TRUE(LoopDevicesBackedBy(m.file).empty()) << loop;
  auto rec = run_.Find("crash");
  ASSERT_TRUE(rec.ok());
  EXPECT_FALSE(rec->has_value());

  Mapping again = Start("crash", view.get());
  EXPECT_TRUE(RunDir::IsAlive(again));
  EXPECT_TRUE(StopDaemon(run_, again).ok());
}

TEST(RunDirTest, NamesAreChecked) {
  EXPECT_TRUE(ValidateVolumeName("data_1.crypt+x-y").ok());
  for (const char* bad : {"", ".hidden", "-opt", "a/b", "sp ace", "\xc3\xa9"})
    EXPECT_EQ(ValidateVolumeName(bad).code(), Code::kInvalidArgument) << bad;
  EXPECT_EQ(ValidateVolumeName(std::string(128, 'a')).code(), Code::kInvalidArgument);
  EXPECT_TRUE(ValidateVolumeName(std::string(127, 'a')).ok());
}

TEST(RunDirTest, RecordsRoundTripAndListSkipsJunk) {
  TempDir dir;
  RunDir run(*PosixEnv(), dir / "run");
  ASSERT_TRUE(run.Prepare().ok());
  Mapping m;
  m.name = "b";
  m.device = "/dev/sdz";
  m.file = run.FilePath("b");
  m.pid = ::getpid();
  m.pid_start = ProcessStartTime(m.pid);
  m.size = 12345;
  ASSERT_TRUE(run.Save(m).ok());
  EXPECT_TRUE(RunDir::IsAlive(m));
  m.name = "a";
  m.pid_start += 1;  // same pid, other start time: a reused pid is not our daemon
  ASSERT_TRUE(run.Save(m).ok());
  EXPECT_FALSE(RunDir::IsAlive(m));
  test::WriteFile(run.StatePath("junk"), "{not json");
  std::vector<std::string> bad;
  auto all = run.List(&bad);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "a");
  EXPECT_EQ((*all)[1].size, 12345u);
  EXPECT_EQ(bad, std::vector<std::string>{"junk"});
  ASSERT_TRUE(run.Forget("a").ok());
  auto gone = run.Find("a");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
}

// list/close find views of other run directories through mountinfo: only diskseal's FUSE mounts
// count, a mount point's directory is the run directory, mountinfo's octal escapes are undone.
TEST(MountedRunDirsTest, FindsDisksealViewsOnly) {
  const std::string mi =
      "24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
      "44 26 0:39 / /run/diskseal/data rw,nosuid,nodev,relatime - fuse.diskseal diskseal:data rw,user_id=0\n"
      "45 26 0:40 / /tmp/my\\040runs/v rw,nosuid,nodev shared:7 master:2 - fuse.diskseal diskseal:v rw\n"
      "46 26 0:41 / /run/diskseal/other rw - fuse.diskseal diskseal:other rw\n"
      "47 26 0:42 / /mnt/sshfs rw - fuse.sshfs host:/ rw\n"
      "48 26 0:43 / /x/y rw - fuse.diskseal notours rw\n"
      "garbage\n";
  EXPECT_EQ(MountedRunDirs(mi), (std::vector<std::string>{"/run/diskseal", "/tmp/my runs"}));
  EXPECT_TRUE(MountedRunDirs("").empty());
}

}  // namespace
}  // namespace ds::fuse
