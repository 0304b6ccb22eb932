// Online in-place operations without device-mapper (README "Online without device-mapper"): the
// daemon serving the userspace view runs encrypt, decrypt and reencrypt while an ext4 filesystem
// on it (a loop device over the served file) stays mounted and a workload writes, fsyncs and
// re-reads checksummed files. Real FUSE, real loop devices, real ext4, cryptsetup as the oracle.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testlib.h"

namespace ds::test {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

constexpr size_t kFileBytes = 192 << 10;

// Writes files one after another, the i-th as w<i mod 64>.bin with contents seeded by i (the
// filesystem does not fill up), each written, fsynced, read back and compared; Durable() maps
// each file slot to the last i whose fsync and check passed. Stops when asked, or at the
// first error (after a daemon is killed, errors are expected).
class Workload {
 public:
  explicit Workload(std::string dir) : dir_(std::move(dir)) {}
  ~Workload() { Stop(); }
  void Start(int first) {
    thread_ = std::thread([this, first] {
      for (int i = first; !stop_.load(); ++i) {
        if (std::string why = One(i); !why.empty()) {
          std::lock_guard l(mu_);
          why_ = "w" + std::to_string(i) + ": " + why;
          failed_.store(true);
          return;
        }
        std::lock_guard l(mu_);
        durable_[i % kSlots] = i;
        ++count_;
      }
    });
  }
  // Waits until at least `n` more files are durable than when called (bounded: the workload may
  // have failed, which the caller checks).
  void WaitForMore(size_t n) {
    size_t start = Count();
    while (Count() < start + n && !failed_.load()) std::this_thread::yield();
  }
  size_t Count() {
    std::lock_guard l(mu_);
    return count_;
  }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  std::map<int, int> Durable() {
    std::lock_guard l(mu_);
    return durable_;
  }
  bool failed() const { return failed_.load(); }
  std::string why() {
    std::lock_guard l(mu_);
    return why_;
  }
  static constexpr int kSlots = 64;
  static std::string Name(int i) { return "w" + std::to_string(i % kSlots) + ".bin"; }
  std::string Path(int i) const { return dir_ + "/" + Name(i); }
  static Bytes Contents(int i) { return RandomData(kFileBytes, 1000 + uint64_t(i)); }

 private:
  // "" when the file went through, else what failed.
  std::string One(int i) {
    Bytes want = Contents(i);
    int fd = ::open(Path(i).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return std::string("open: ") + std::strerror(errno);
    if (::write(fd, want.data(), want.size()) != ssize_t(want.size())) {
      ::close(fd);
      return std::string("write: ") + std::strerror(errno);
    }
    if (::fsync(fd) != 0) {
      ::close(fd);
      return std::string("fsync: ") + std::strerror(errno);
    }
    if (::close(fd) != 0) return std::string("close: ") + std::strerror(errno);
    fd = ::open(Path(i).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::string("reopen: ") + std::strerror(errno);
    // Let go of the cached pages first, so that the re-read goes down through the view.
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    Bytes got(want.size());
    ssize_t n = ::read(fd, got.data(), got.size());
    int e = errno;
    ::close(fd);
    if (n != ssize_t(got.size())) return std::string("read: ") + (n < 0 ? std::strerror(e) : "short");
    return got == want ? "" : "read back different bytes";
  }
  std::string dir_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::mutex mu_;
  std::map<int, int> durable_;
  size_t count_ = 0;
  std::string why_;
};

class UserspaceOnlineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "mounts FUSE and loop devices: run as root";
    if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup (the oracle) is not installed";
    WriteFile(dir_ / "pw", "online sesame");
    ::mkdir(mnt_.c_str(), 0700);
    test::Run({"truncate", "-s", "96M", img_});
    RunResult r = test::Run({"losetup", "-f", "--show", img_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    dev_ = Trim(r.out);
  }
  void TearDown() override {
    test::Run({"umount", mnt_});
    if (!view_loop_.empty()) test::Run({"losetup", "-d", view_loop_});
    auto r = Diskseal({"list", "--json", "--run-dir", run_});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_array())
      for (auto& e : j) Diskseal({"close", "--run-dir", run_, e["name"].get<std::string>()});
    if (!dev_.empty()) test::Run({"losetup", "-d", dev_});
  }

  std::vector<std::string> Key() { return {"--key-file", dir_ / "pw"}; }
  std::vector<std::string> Cmd(std::vector<std::string> a, bool header = true) {
    a.insert(a.end(), {dev_});
    if (header) a.insert(a.end(), {"--header", hdr_});
    for (auto& k : Key()) a.push_back(k);
    return a;
  }
  int64_t Open() {
    std::vector<std::string> a = {"open", "--userspace", "--json", "--run-dir", run_, dev_, "v", "--header", hdr_};
    for (auto& k : Key()) a.push_back(k);
    RunResult o = Diskseal(a);
    EXPECT_EQ(o.exit_code, 0) << o.err;
    if (o.exit_code != 0) return 0;
    return nlohmann::json::parse(o.out)["pid"].get<int64_t>();
  }
  void Mount() {
    RunResult r = test::Run({"losetup", "-f", "--show", run_ + "/v"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    view_loop_ = Trim(r.out);
    r = test::Run({"mount", view_loop_, mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  void UnmountAndClose() {
    ASSERT_EQ(test::Run({"umount", mnt_}).exit_code, 0);
    view_loop_.clear();  // close detaches it
    RunResult c = Diskseal({"close", "--run-dir", run_, "v"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
  }
  // Every durable file of every workload so far reads back intact, through a fresh daemon, and
  // the filesystem is clean.
  void CheckFiles(const std::map<int, int>& files) {
    Open();
    Mount();
    for (const auto& [slot, i] : files) {
      Bytes b = Workload::Contents(i);
      EXPECT_EQ(ReadFileOrDie(mnt_ + "/" + Workload::Name(i)), std::string(b.begin(), b.end())) << "write " << i;
    }
    for (const auto& [name, data] : seeded_) EXPECT_EQ(ReadFileOrDie(mnt_ + "/" + name), data) << name;
    UnmountAndClose();
    Open();
    RunResult fsck = test::Run({"e2fsck", "-fn", run_ + "/v"});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
    ASSERT_EQ(Diskseal({"close", "--run-dir", run_, "v"}).exit_code, 0);
  }
  // cryptsetup (the oracle) reads the header; an encrypted one opens with the passphrase.
  void CryptsetupReads(bool encrypted) {
    RunResult d = test::Run({"cryptsetup", "luksDump", "--header", hdr_, dev_});
    ASSERT_EQ(d.exit_code, 0) << d.err;
    EXPECT_NE(d.out.find(encrypted ? "0: crypt" : "0: linear"), std::string::npos) << d.out;
    EXPECT_EQ(d.out.find("online-reencrypt"), std::string::npos) << d.out;  // finished: no requirement left
    if (!encrypted) return;
    RunResult t = test::Run({"cryptsetup", "open", "--test-passphrase", "--header", hdr_, dev_, "--key-file",
                             dir_ / "pw"});
    EXPECT_EQ(t.exit_code, 0) << t.err;
  }
  // Runs `args` (an in-place command, through the daemon) while the workload writes.
  RunResult RunUnderWorkload(const std::vector<std::string>& args, std::map<int, int>* durable) {
    Workload w(mnt_);
    w.Start(next_file_);
    w.WaitForMore(2);  // the workload is under way before the operation starts
    const size_t before = w.Count();
    RunResult r = Diskseal(args);
    // Files went through while the operation ran (its steps and the workload's fsyncs interleave).
    EXPECT_GT(w.Count(), before) << "no workload file completed while the operation ran";
    w.WaitForMore(2);  // and still works afterwards
    w.Stop();
    EXPECT_FALSE(w.failed()) << "workload: " << w.why();
    for (const auto& [slot, i] : w.Durable()) {
      (*durable)[slot] = i;
      next_file_ = std::max(next_file_, i + 1);
    }
    return r;
  }
  // A fresh ext4 with seeded files, on the plain device.
  void MakeFilesystem() {
    ASSERT_EQ(test::Run({"mkfs.ext4", "-q", dev_}).exit_code, 0);
    ASSERT_EQ(test::Run({"mount", dev_, mnt_}).exit_code, 0);
    for (int i = 0; i < 3; ++i) {
      Bytes b = RandomData(3 << 20, 7 + uint64_t(i));
      seeded_["s" + std::to_string(i)] = std::string(b.begin(), b.end());
      WriteFile(mnt_ + "/s" + std::to_string(i), seeded_["s" + std::to_string(i)]);
    }
    ASSERT_EQ(test::Run({"umount", mnt_}).exit_code, 0);
  }

  TempDir dir_;
  std::string run_ = dir_ / "run", mnt_ = dir_ / "mnt", img_ = dir_ / "data.img", hdr_ = dir_ / "data.hdr";
  std::string dev_, view_loop_;
  std::map<std::string, std::string> seeded_;
  int next_file_ = 0;
};

const std::vector<std::string> kPbkdf = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

// encrypt (initialised, then carried on by the daemon), reencrypt and decrypt of a mounted
// filesystem through the userspace view, each under the workload.
TEST_F(UserspaceOnlineTest, EncryptReencryptDecryptUnderAWorkload) {
  MakeFilesystem();
  std::vector<std::string> init = {"encrypt", dev_, "--header", hdr_, "--init-only", "--key-file", dir_ / "pw"};
  init.insert(init.end(), kPbkdf.begin(), kPbkdf.end());
  RunResult e = Diskseal(init);
  ASSERT_EQ(e.exit_code, 0) << e.err;
  Open();
  Mount();
  std::map<int, int> durable;
  RunResult r = RunUnderWorkload(Cmd({"resume", "--hotzone-size", "1M", "--progress-json", "--run-dir", run_}),
                                 &durable);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("runs online in the daemon serving " + run_ + "/v"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"event\":\"done\""), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("finished"), std::string::npos) << r.out;

  std::vector<std::string> re = Cmd({"reencrypt", "--hotzone-size", "1M", "--run-dir", run_});
  re.insert(re.end(), kPbkdf.begin(), kPbkdf.end());
  r = RunUnderWorkload(re, &durable);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("runs online in the daemon"), std::string::npos) << r.err;

  CryptsetupReads(true);  // the reencrypted header, read while the view serves
  r = RunUnderWorkload(Cmd({"decrypt", "--hotzone-size", "1M", "--run-dir", run_}), &durable);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("runs online in the daemon"), std::string::npos) << r.err;
  EXPECT_GE(next_file_, 12);
  UnmountAndClose();
  CryptsetupReads(false);
  CheckFiles(durable);
  // Decrypted: the device itself holds the filesystem again.
  EXPECT_EQ(Trim(test::Run({"blkid", "-p", "-o", "value", "-s", "TYPE", dev_}).out), "ext4");
}

// kill -9 of the daemon in the middle of the run: `open` (which recovers a flagged hotzone) and
// `resume` finish it, and every file whose fsync returned before the kill is intact.
TEST_F(UserspaceOnlineTest, DaemonKilledMidRunThenOpenAndResumeFinish) {
  MakeFilesystem();
  std::vector<std::string> init = {"encrypt", dev_, "--header", hdr_, "--init-only", "--key-file", dir_ / "pw"};
  init.insert(init.end(), kPbkdf.begin(), kPbkdf.end());
  ASSERT_EQ(Diskseal(init).exit_code, 0);
  const int64_t pid = Open();
  ASSERT_GT(pid, 0);
  Mount();
  Workload w(mnt_);
  w.Start(0);
  w.WaitForMore(2);
  RunResult resumed;
  std::thread run([&] {
    resumed = Diskseal(Cmd({"resume", "--hotzone-size", "256K", "--threads", "1", "--run-dir", run_}));
  });
  // Mid-run: the header records part of the data done and part not (bounded wait).
  bool mid = false;
  for (int i = 0; i < 20000 && !mid; ++i) {
    // The LUKS2 JSON area of the primary header (after its 4 KiB binary header); a read that
    // meets a commit half-written does not parse and is simply tried again.
    std::string h = ReadFileOrDie(hdr_);
    if (h.size() <= 4096) continue;
    auto d = nlohmann::json::parse(std::string(h.c_str() + 4096), nullptr, false);
    if (!d.is_object() || !d.contains("segments")) continue;
    std::set<std::string> kinds;
    for (auto& [id, seg] : d["segments"].items())
      if (!seg.contains("flags") || seg["flags"].dump().find("backup-") == std::string::npos)
        kinds.insert(seg["type"].get<std::string>());
    mid = kinds.count("crypt") && kinds.count("linear");
  }
  ASSERT_TRUE(mid) << "the operation was never seen under way";
  ASSERT_EQ(::kill(pid_t(pid), SIGKILL), 0);
  run.join();
  w.Stop();  // its last file may have failed (the view died); the durable ones count
  EXPECT_NE(resumed.exit_code, 0);
  EXPECT_NE(resumed.err.find("ended the connection"), std::string::npos) << resumed.err;
  std::map<int, int> durable = w.Durable();
  ASSERT_GE(durable.size(), 2u);
  for (const auto& [slot, i] : durable) next_file_ = std::max(next_file_, i + 1);
  // What the dead daemon left: the mount over its file fails now; take it down.
  test::Run({"umount", "-l", mnt_});
  test::Run({"losetup", "-d", view_loop_});
  view_loop_.clear();
  RunResult c = Diskseal({"close", "--run-dir", run_, "v"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("stale"), std::string::npos) << c.out;
  // open recovers a flagged hotzone (if the kill fell in one), then resume finishes online.
  Open();
  Mount();
  RunResult r = RunUnderWorkload(Cmd({"resume", "--hotzone-size", "1M", "--run-dir", run_}), &durable);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  UnmountAndClose();
  CryptsetupReads(true);
  CheckFiles(durable);
}

// SIGINT of the resume command: the daemon stops at the next commit point, exit 9 naming the
// command that continues; the view keeps serving, and resume finishes.
TEST_F(UserspaceOnlineTest, StopAtCommitPointThenResume) {
  MakeFilesystem();
  std::vector<std::string> init = {"encrypt", dev_, "--header", hdr_, "--init-only", "--key-file", dir_ / "pw"};
  init.insert(init.end(), kPbkdf.begin(), kPbkdf.end());
  ASSERT_EQ(Diskseal(init).exit_code, 0);
  Open();
  Mount();
  std::map<int, int> durable;
  RunResult r = RunUnderWorkload(Cmd({"resume", "--hotzone-size", "1M", "--stop-after", "8M", "--run-dir", run_}),
                                 &durable);
  ASSERT_EQ(r.exit_code, 9) << r.err;
  EXPECT_NE(r.err.find("continue with `diskseal resume " + dev_), std::string::npos) << r.err;
  std::vector<std::string> argv = {DISKSEAL_BIN};
  for (auto& a : Cmd({"resume", "--hotzone-size", "256K", "--threads", "1", "--run-dir", run_})) argv.push_back(a);
  // SIGINT once the run is under way (the header is rewritten at its first commit).
  struct stat before {};
  ::stat(hdr_.c_str(), &before);
  int code = RunAndSignalWhen(argv, [&] {
    struct stat now {};
    return ::stat(hdr_.c_str(), &now) == 0 && (now.st_mtim.tv_sec != before.st_mtim.tv_sec ||
                                               now.st_mtim.tv_nsec != before.st_mtim.tv_nsec);
  }, 0, SIGINT);
  EXPECT_EQ(code, 9);
  r = RunUnderWorkload(Cmd({"resume", "--hotzone-size", "1M", "--run-dir", run_}), &durable);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  UnmountAndClose();
  CryptsetupReads(true);
  CheckFiles(durable);
}

}  // namespace
}  // namespace ds::test
