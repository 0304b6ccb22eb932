// One owner per device (io/device_claim.h): identities, the lock as other processes see it
// (util-linux flock(1) as the independent party), holders named, kernel use and read-only devices
// refused. Real loop devices and a real mount; root only for those.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <gtest/gtest.h>

#include "io/device_claim.h"
#include "testlib.h"

extern char** environ;

namespace ds {
namespace {

using test::TempDir;

std::string LockFile(const std::string& path) {
  auto id = IdentifyDevice(path);
  EXPECT_TRUE(id.ok()) << id.status().message();
  return DeviceClaim::LockDir() + "/" + (id.ok() ? id->key : "");
}

// Exit code of `flock -n MODE LOCKFILE true`: 0 when another process could take the lock now.
int TryFlock(const std::string& lock, const char* mode) {
  return test::Run({"flock", "-n", mode, lock, "true"}).exit_code;
}

using Loop = test::LoopDevice;

TEST(DeviceClaim, PathsOfOneFileAreOneIdentity) {
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  ASSERT_EQ(::symlink((dir / "img").c_str(), (dir / "link").c_str()), 0);
  ASSERT_EQ(::link((dir / "img").c_str(), (dir / "hard").c_str()), 0);
  test::MakeRandomImage(dir / "other", 1 << 20, 2);
  auto a = IdentifyDevice(dir / "img"), b = IdentifyDevice(dir / "link"), c = IdentifyDevice(dir / "hard"),
       d = IdentifyDevice(dir / "other");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(a->key, b->key);
  EXPECT_EQ(a->key, c->key);
  EXPECT_NE(a->key, d->key);
  EXPECT_FALSE(a->block);
  EXPECT_EQ(IdentifyDevice(dir / "missing").status().code(), Code::kNotFound);
  EXPECT_EQ(IdentifyDevice(dir.path()).status().code(), Code::kInvalidArgument);
  if (::geteuid() != 0) GTEST_SKIP() << "loop devices need root";
  Loop loop(dir / "img");
  auto l = IdentifyDevice(loop.dev());
  ASSERT_TRUE(l.ok()) << l.status().message();
  EXPECT_TRUE(l->block);
  EXPECT_EQ(l->key, a->key) << "a loop device and its backing file are one owner";
  EXPECT_EQ(l->backing, dir / "img");
}

TEST(DeviceClaim, ExclusiveKeepsOtherProcessesOutUntilReleased) {
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  const std::string lock = LockFile(dir / "img");
  {
    auto c = DeviceClaim::Acquire(dir / "img", {ClaimMode::kExclusive, true, {}});
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(TryFlock(lock, "-x"), 1);
    EXPECT_EQ(TryFlock(lock, "-s"), 1);
    {
      // The same process claiming again (a command that then opens a view) shares its lock.
      auto again = DeviceClaim::Acquire(dir / "img", {ClaimMode::kExclusive, false, {}});
      ASSERT_TRUE(again.ok()) << again.status().message();
    }
    EXPECT_EQ(TryFlock(lock, "-s"), 1) << "the first claim still holds it";
  }
  EXPECT_EQ(TryFlock(lock, "-x"), 0) << "released with the last claim";
}

TEST(DeviceClaim, SharedAdmitsReadersOnly) {
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  const std::string lock = LockFile(dir / "img");
  auto c = DeviceClaim::Acquire(dir / "img", {ClaimMode::kShared, false, {}});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(TryFlock(lock, "-s"), 0);
  EXPECT_EQ(TryFlock(lock, "-x"), 1);
  auto up = DeviceClaim::Acquire(dir / "img", {ClaimMode::kExclusive, false, {}});
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), Code::kBusy);
  EXPECT_NE(up.status().message().find(dir / "img"), std::string::npos) << up.status().message();
}

TEST(DeviceClaim, RefusalNamesTheHolderWhateverPathItUsed) {
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  ASSERT_EQ(::symlink((dir / "img").c_str(), (dir / "link").c_str()), 0);
  const std::string lock = LockFile(dir / "img");
  std::filesystem::create_directories(DeviceClaim::LockDir());
  // Another process holds the lock: flock(1) running `cat`, which waits for its stdin to close.
  int in[2];
  ASSERT_EQ(::pipe(in), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  std::vector<std::string> argv = {"flock", "-x", lock, "cat"};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(posix_spawnp(&pid, "flock", &fa, nullptr, args.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  struct stat st {};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline &&
         (::stat(lock.c_str(), &st) != 0 || FlockHolderPids(st.st_dev, st.st_ino).empty()))
    ::usleep(1000);
  auto c = DeviceClaim::Acquire(dir / "link", {ClaimMode::kShared, false, {}});
  ::close(in[1]);  // cat ends, flock releases
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kBusy);
  const std::string& m = c.status().message();
  EXPECT_EQ(m.rfind(dir / "link", 0), 0u) << m;
  EXPECT_NE(m.find("in use by flock -x " + lock + " cat (pid " + std::to_string(pid) + ")"), std::string::npos) << m;
  EXPECT_TRUE(DeviceClaim::Acquire(dir / "img", {ClaimMode::kExclusive, true, {}}).ok()) << "free again";
}

// An online run forks a guardian that inherits its lock: the refusal names the run once, not
// the run and its own fork as two owners. Here a process takes the lock and forks a copy of itself.
TEST(DeviceClaim, RefusalNamesAHolderNotItsForkedCopy) {
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  const std::string lock = LockFile(dir / "img");
  std::filesystem::create_directories(DeviceClaim::LockDir());
  int ready[2], hold[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(hold), 0);
  const pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    ::close(ready[0]);
    ::close(hold[1]);
    const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) ::_exit(1);
    const pid_t copy = ::fork();  // keeps the locked descriptor, as the guardian does
    if (copy < 0) ::_exit(1);
    const pid_t me = ::getpid();
    if (::write(ready[1], &me, sizeof me) != sizeof me) ::_exit(1);
    char c;
    while (::read(hold[0], &c, 1) > 0) {
    }
    if (copy > 0) ::waitpid(copy, nullptr, 0);
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(hold[0]);
  pid_t pids[2] = {};
  ASSERT_EQ(::read(ready[0], &pids[0], sizeof(pid_t)), ssize_t(sizeof(pid_t)));
  ASSERT_EQ(::read(ready[0], &pids[1], sizeof(pid_t)), ssize_t(sizeof(pid_t)));
  const pid_t copy = pids[0] == holder ? pids[1] : pids[0];
  auto c = DeviceClaim::Acquire(dir / "img", {ClaimMode::kShared, false, {}});
  ::close(hold[1]);
  ::close(ready[0]);
  ::waitpid(holder, nullptr, 0);
  ASSERT_FALSE(c.ok());
  const std::string& m = c.status().message();
  EXPECT_NE(m.find("(pid " + std::to_string(holder) + ")"), std::string::npos) << m;
  EXPECT_EQ(m.find("(pid " + std::to_string(copy) + ")"), std::string::npos) << m;
  EXPECT_EQ(m.find(", "), std::string::npos) << "one owner named: " << m;
}

TEST(DeviceClaim, MountedLoopRefusesItAndItsBackingFile) {
  if (::geteuid() != 0) GTEST_SKIP() << "loop devices and mounts need root";
  TempDir dir;
  const std::string img = dir / "img", mnt = dir / "mnt";
  ASSERT_EQ(test::Run({"truncate", "-s", "16M", img}).exit_code, 0);
  ASSERT_EQ(test::Run({"mkfs.ext4", "-q", img}).exit_code, 0);
  ::mkdir(mnt.c_str(), 0700);
  Loop idle(img);  // a second loop over the same file, not mounted
  {
    Loop used(img);
    ASSERT_EQ(test::Run({"mount", used.dev(), mnt}).exit_code, 0);
    for (const std::string& p : {img, idle.dev()}) {
      auto c = DeviceClaim::Acquire(p, {ClaimMode::kExclusive, true, {}});
      ASSERT_FALSE(c.ok()) << p;
      EXPECT_EQ(c.status().code(), Code::kBusy);
      EXPECT_NE(c.status().message().find(used.dev() + ", which is mounted on " + mnt), std::string::npos)
          << c.status().message();
    }
    auto direct = DeviceClaim::Acquire(used.dev(), {ClaimMode::kShared, false, {}});
    ASSERT_FALSE(direct.ok());
    EXPECT_EQ(direct.status().message(), used.dev() + ": mounted on " + mnt + "; refusing to touch it");
    auto why = KernelUse(img);
    ASSERT_TRUE(why.ok());
    EXPECT_EQ(*why, "backs " + used.dev() + ", which is mounted on " + mnt);
    ASSERT_EQ(test::Run({"umount", mnt}).exit_code, 0);
  }
  // Attached but unused loop devices do not make the file busy.
  auto c = DeviceClaim::Acquire(img, {ClaimMode::kExclusive, true, {}});
  EXPECT_TRUE(c.ok()) << c.status().message();
}

TEST(DeviceClaim, ReadOnlyDeviceRefusedForWriters) {
  if (::geteuid() != 0) GTEST_SKIP() << "loop devices need root";
  TempDir dir;
  test::MakeRandomImage(dir / "img", 1 << 20, 1);
  {
    Loop ro(dir / "img", true);
    auto w = DeviceClaim::Acquire(ro.dev(), {ClaimMode::kExclusive, true, {}});
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), Code::kPermissionDenied);
    EXPECT_EQ(w.status().message().rfind(ro.dev() + ": the device is read-only", 0), 0u) << w.status().message();
    // A reader, or a command that writes only a detached header, may use it.
    EXPECT_TRUE(DeviceClaim::Acquire(ro.dev(), {ClaimMode::kExclusive, false, {}}).ok());
  }
  Loop rw(dir / "img");
  ASSERT_EQ(test::Run({"blockdev", "--setro", rw.dev()}).exit_code, 0);
  auto w = DeviceClaim::Acquire(rw.dev(), {ClaimMode::kExclusive, true, {}});
  EXPECT_EQ(w.status().code(), Code::kPermissionDenied) << w.status().message();
  ASSERT_EQ(test::Run({"blockdev", "--setrw", rw.dev()}).exit_code, 0);
  EXPECT_TRUE(DeviceClaim::Acquire(rw.dev(), {ClaimMode::kExclusive, true, {}}).ok());
}

}  // namespace
}  // namespace ds
