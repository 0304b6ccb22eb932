// `diskseal enable` / `disable` / `status` end to end on this host: real ext4 and xfs filesystems
// on loop devices, mounted, with files; encrypted in place, opened through the userspace view
// (the host kernel has no device-mapper) and mounted again at the same place; crypttab/fstab
// written into a test etc directory; killed with SIGKILL mid-encryption at a known point and run
// again; decrypted back. Never touches the real /etc or /var/lib/diskseal: every run gets
// --state-dir, --etc-dir, --run-dir and --only under a temp directory.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/reencrypt_state.h"
#include "luks2/volume.h"
#include "testlib.h"
#include "vault_testutil.h"

extern char** environ;

namespace ds::test {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string MountedSource(const std::string& mp) {
  std::ifstream f("/proc/self/mountinfo");
  std::string line, src;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::vector<std::string> w;
    for (std::string x; in >> x;) w.push_back(x);
    if (w.size() < 10 || w[4] != mp) continue;
    size_t dash = 0;
    while (dash < w.size() && w[dash] != "-") ++dash;
    if (dash + 2 < w.size()) src = w[dash + 2];
  }
  return src;
}

// A diskseal run in the background (for kill -9 and lock contention); output to files.
struct Background {
  pid_t pid = -1;
  std::string out, err;
  ~Background() { Kill(); }
  void Kill() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    int st;
    ::waitpid(pid, &st, 0);
    pid = -1;
  }
};

class EnableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "mounts filesystems, loop devices and FUSE: run as root";
    for (const auto& d : {etc_, state_parent_}) ASSERT_EQ(::mkdir(d.c_str(), 0755), 0);
  }
  void TearDown() override {
    bg_.Kill();
    for (const auto& mp : mounts_)
      for (int i = 0; i < 4 && !MountedSource(mp).empty(); ++i) RunProgram({"umount", mp});
    auto r = Diskseal({"list", "--json", "--run-dir", run_});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_array())
      for (auto& e : j) {
        for (int i = 0; i < 4; ++i) {
          // a loop device over the served file may still be releasing it
          if (Diskseal({"close", "--run-dir", run_, e["name"].get<std::string>()}).exit_code == 0) break;
        }
      }
    for (const auto& img : images_) {
      auto l = RunProgram({"losetup", "-j", img});
      std::istringstream in(l.out);
      for (std::string line; std::getline(in, line);)
        if (auto c = line.find(':'); c != std::string::npos) RunProgram({"losetup", "-d", line.substr(0, c)});
    }
  }

  // A filesystem of `fstype` on a loop device mounted at <dir>/<name>, with files; returns the
  // mount point. xfs needs 300 MB unless mkfs is told it runs under fstests.
  std::string MakeVolume(const std::string& name, const std::string& fstype, const std::string& size) {
    const std::string img = dir_ / (name + ".img"), mp = dir_ / name;
    images_.push_back(img);
    EXPECT_EQ(RunProgram({"truncate", "-s", size, img}).exit_code, 0);
    RunResult mk = fstype == "xfs"
                       ? RunProgram({"env", "TEST_DIR=" + dir_.path(), "TEST_DEV=" + img, "QA_CHECK_FS=1",
                                     "mkfs.xfs", "-q", img})
                       : RunProgram({"mkfs.ext4", "-q", img});
    EXPECT_EQ(mk.exit_code, 0) << mk.err;
    RunResult lo = RunProgram({"losetup", "-f", "--show", img});
    EXPECT_EQ(lo.exit_code, 0) << lo.err;
    const std::string dev = Trim(lo.out);
    ::mkdir(mp.c_str(), 0755);
    mounts_.push_back(mp);
    RunResult m = RunProgram({"mount", "-o", "noatime", dev, mp});
    EXPECT_EQ(m.exit_code, 0) << m.err;
    for (int i = 0; i < 3; ++i) {
      Bytes data = RandomData(size_t(1 + i) << 20, uint64_t(i) * 7 + name.size());
      WriteFile(mp + "/file" + std::to_string(i), std::string(data.begin(), data.end()));
    }
    ::mkdir((mp + "/sub dir").c_str(), 0755);
    WriteFile(mp + "/sub dir/note.txt", "written before encryption\n");
    devices_[mp] = dev;
    return mp;
  }
  std::string Sums(const std::string& mp) {
    return RunProgram({"sh", "-c", "cd '" + mp + "' && sha256sum file0 file1 file2 'sub dir/note.txt'"}).out;
  }

  std::vector<std::string> Common(const std::vector<std::string>& mps) {
    std::vector<std::string> a = {"--state-dir", state_, "--etc-dir", etc_, "--run-dir", run_};
    for (const auto& m : mps) {
      a.push_back("--only");
      a.push_back(m);
    }
    return a;
  }
  // Without `escrow` the run says --no-escrow (the caller adds --vault ... otherwise).
  std::vector<std::string> EnableArgs(const std::vector<std::string>& mps, bool escrow = false) {
    // Doctor runs first. This host is shared with other builds and test runs (their diskseal
    // encrypt or apt processes are not in the way of these loop devices), so that one check is
    // ignored; every other check applies.
    std::vector<std::string> a = {"enable", "--volume-type", "Data", "--json", "--pbkdf", "pbkdf2",
                                  "--pbkdf-force-iterations", "1000", "--hotzone-size", "1M",
                                  "--ignore", "concurrent-tools"};
    if (!escrow) a.push_back("--no-escrow");
    for (auto& s : Common(mps)) a.push_back(s);
    return a;
  }
  nlohmann::json Status(const std::string& root = "/") {
    RunResult r = Diskseal({"status", "--json", "--state-dir", state_, "--etc-dir", etc_, "--root", root});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j;
  }
  static const nlohmann::json* VolumeAt(const nlohmann::json& st, const std::string& mp) {
    for (const auto& v : st["volumes"])
      if (v["mountpoint"] == mp) return &v;
    return nullptr;
  }
  std::vector<std::string> DisableArgs(const std::vector<std::string>& mps) {
    std::vector<std::string> a = {"disable", "--volume-type", "Data", "--json", "--hotzone-size", "1M"};
    for (auto& s : Common(mps)) a.push_back(s);
    return a;
  }
  // Starts enable (or disable) in the background; it stops itself (SIGSTOP) at `percent`. Waits
  // for that stop.
  void StartFrozen(const std::vector<std::string>& mps, int percent, bool disable = false) {
    std::vector<std::string> argv = {DISKSEAL_BIN};
    for (auto& s : disable ? DisableArgs(mps) : EnableArgs(mps)) argv.push_back(s);
    argv.push_back("--test-freeze-at-percent");
    argv.push_back(std::to_string(percent));
    std::vector<char*> args;
    for (auto& s : argv) args.push_back(s.data());
    args.push_back(nullptr);
    bg_.out = dir_ / "bg.out";
    bg_.err = dir_ / "bg.err";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, bg_.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, bg_.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_EQ(posix_spawn(&bg_.pid, args[0], &fa, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int st = 0;
    ASSERT_EQ(::waitpid(bg_.pid, &st, WUNTRACED), bg_.pid);
    if (!WIFSTOPPED(st)) {
      bg_.pid = -1;
      FAIL() << "enable ended before reaching " << percent << "%: " << ReadFileOrDie(bg_.err);
    }
  }
  // The engine's own committed progress for the volume, read as status must read it.
  double HeaderPercent(const nlohmann::json& vol) {
    const std::string name = vol["name"].get<std::string>();
    auto v = luks2::Volume::Load(*PosixEnv(), devices_[vol["mountpoint"].get<std::string>()],
                                 state_ + "/headers/" + name + ".luks2", false);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    auto st = engine::ReadState(v->metadata(), v->data_device().Size());
    EXPECT_TRUE(st.ok() && st->has_value());
    return std::floor(1000.0 * double((*st)->done) / double((*st)->data_size)) / 10;
  }

  TempDir dir_;
  std::string etc_ = dir_ / "etc", state_parent_ = dir_ / "var", state_ = dir_ / "var/diskseal",
              run_ = dir_ / "run";
  std::vector<std::string> mounts_, images_;
  std::map<std::string, std::string> devices_;
  Background bg_;
};

// The main story: two data volumes (ext4 with an fstab line, xfs without), status before, enable
// with escrow in a real vault, status after, files read back through the new mounts, crypttab and
// fstab as ADE writes them with backups; then disable back to plaintext on the original devices.
TEST_F(EnableTest, EnableExt4AndXfsEndToEndThenDisable) {
  const std::string e4 = MakeVolume("e4", "ext4", "32M"), xf = MakeVolume("xf", "xfs", "64M");
  const std::string fstab0 = "# static file system information\nUUID=root-uuid / ext4 errors=remount-ro 0 1\n" +
                             devices_[e4] + " " + e4 + " ext4 defaults,noatime 0 2\n";
  WriteFile(etc_ + "/fstab", fstab0);
  const std::string sums4 = Sums(e4), sumsx = Sums(xf);

  auto before = Status();
  ASSERT_NE(VolumeAt(before, e4), nullptr) << before.dump();
  EXPECT_EQ((*VolumeAt(before, e4))["state"], "NotEncrypted");
  EXPECT_EQ((*VolumeAt(before, xf))["state"], "NotEncrypted");

  VaultProcess vp(dir_ / "vault");
  vp.Start();
  const std::string tok = vp.Token("host", "secrets:get,secrets:set");
  auto args = EnableArgs({e4, xf}, true);
  // Data only: `All` would run the OS flow on this machine's own root (tests/vm/os_enable_vm_test.cc
  // runs it in a guest).
  for (const auto& s : {std::string("--vault"), vp.url(), std::string("--vault-token-file"), tok,
                        std::string("--vault-ca"), vp.ca()})
    args.push_back(s);
  RunResult en = Diskseal(args);
  ASSERT_EQ(en.exit_code, 0) << en.err;
  auto out = nlohmann::json::parse(en.out);
  EXPECT_TRUE(out["os_volume"].is_null()) << en.out;
  ASSERT_EQ(out["volumes"].size(), 2u) << en.out;
  for (const auto& v : out["volumes"]) {
    EXPECT_EQ(v["result"], "Encrypted");
    EXPECT_NE(v["secret_id"].get<std::string>().find("/secrets/diskseal-" + v["name"].get<std::string>()), std::string::npos);
    struct stat st;
    ASSERT_EQ(::stat(v["key_file"].get<std::string>().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0400u);
    // Escrowed as ADE does: contentType BEK, tagged with the volume.
    auto bundle = Diskseal({"vault", "secret", "get", "--json", "diskseal-" + v["name"].get<std::string>(),
                            "--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()});
    ASSERT_EQ(bundle.exit_code, 0) << bundle.err;
    auto b = nlohmann::json::parse(bundle.out);
    EXPECT_EQ(b["contentType"], "BEK");
    EXPECT_EQ(b["tags"]["LuksUuid"], v["name"]);
    EXPECT_FALSE(b["tags"]["MachineName"].get<std::string>().empty());
    // and what rebuilds its header: the final one, escrowed once the engine finished
    auto hdr = Diskseal({"vault", "secret", "get", "--json", "diskseal-" + v["name"].get<std::string>() + "-header",
                         "--vault", vp.url(), "--vault-token-file", tok, "--vault-ca", vp.ca()});
    ASSERT_EQ(hdr.exit_code, 0) << hdr.err;
    EXPECT_EQ(nlohmann::json::parse(hdr.out)["tags"]["DisksealHeaderState"], "final");
    // The detached header knows its device (engine/binding.h): size and the plaintext's filesystem.
    auto dump = Diskseal({"dump", "--json", devices_[v["mountpoint"].get<std::string>()], "--header",
                          v["header"].get<std::string>()});
    ASSERT_EQ(dump.exit_code, 0) << dump.err;
    bool bound = false;
    const auto header = nlohmann::json::parse(dump.out);
    for (const auto& t : header["tokens"])
      if (t["type"] == "diskseal-device") {
        bound = true;
        EXPECT_EQ(t["json"]["fs"]["type"], v["mountpoint"] == e4 ? "ext4" : "xfs") << t.dump();
      }
    EXPECT_TRUE(bound) << dump.out;
  }
  // Mounted again from the plaintext view, same place, same options, same files.
  for (const auto& mp : {e4, xf}) {
    EXPECT_NE(MountedSource(mp), devices_[mp]);
    EXPECT_EQ(MountedSource(mp).rfind("/dev/loop", 0), 0u) << MountedSource(mp);
  }
  EXPECT_EQ(Sums(e4), sums4);
  EXPECT_EQ(Sums(xf), sumsx);
  EXPECT_NE(RunProgram({"findmnt", "-no", "OPTIONS", e4}).out.find("noatime"), std::string::npos);
  // The raw device holds ciphertext now: the ext4 magic is gone.
  EXPECT_EQ(RunProgram({"blkid", "-p", "-s", "TYPE", "-o", "value", devices_[e4]}).out, "");

  const std::string crypttab = ReadFileOrDie(etc_ + "/crypttab"), fstab = ReadFileOrDie(etc_ + "/fstab");
  for (const auto& v : out["volumes"]) {
    const std::string n = v["name"].get<std::string>(), mp = v["mountpoint"].get<std::string>();
    // a loop device has no by-id or PARTUUID link: crypttab names it by its path
    EXPECT_NE(crypttab.find(n + " " + devices_[mp] + " " + v["key_file"].get<std::string>() +
                            " luks,nofail,header=" + v["header"].get<std::string>() + "\n"),
              std::string::npos) << crypttab;
    const std::string opts = mp == e4 ? "defaults,noatime,nofail 0 2" : "defaults,nofail 0 2";
    EXPECT_NE(fstab.find("/dev/mapper/" + n + " " + mp + " " + (mp == e4 ? "ext4 " : "xfs ") + opts + "\n"),
              std::string::npos) << fstab;
  }
  EXPECT_EQ(fstab.find(devices_[e4] + " "), std::string::npos) << fstab;  // the plaintext line replaced
  EXPECT_NE(fstab.find("UUID=root-uuid / ext4 errors=remount-ro 0 1\n"), std::string::npos);
  EXPECT_EQ(ReadFileOrDie(etc_ + "/fstab.diskseal.bak"), fstab0);
  EXPECT_EQ(ReadFileOrDie(etc_ + "/crypttab.diskseal.bak"), "");

  auto after = Status();
  EXPECT_EQ((*VolumeAt(after, e4))["state"], "Encrypted") << after.dump();
  EXPECT_EQ((*VolumeAt(after, xf))["state"], "Encrypted");
  EXPECT_EQ((*VolumeAt(after, xf))["percent"], 100.0);
  EXPECT_EQ(after["DataVolumesEncrypted"], "Encrypted") << after.dump();
  EXPECT_EQ(after["ProgressMessage"], "Encryption succeeded for data volumes");

  // Running enable again changes nothing and says so.
  RunResult again = Diskseal(EnableArgs({e4, xf}));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(ReadFileOrDie(etc_ + "/fstab"), fstab);
  EXPECT_EQ(Sums(e4), sums4);

  // Disable: plaintext again on the original devices, etc files as they were.
  RunResult dis = Diskseal(DisableArgs({e4, xf}));
  ASSERT_EQ(dis.exit_code, 0) << dis.err;
  EXPECT_EQ(MountedSource(e4), devices_[e4]);
  EXPECT_EQ(MountedSource(xf), devices_[xf]);
  EXPECT_EQ(Sums(e4), sums4);
  EXPECT_EQ(Sums(xf), sumsx);
  EXPECT_EQ(Trim(RunProgram({"blkid", "-p", "-s", "TYPE", "-o", "value", devices_[e4]}).out), "ext4");
  EXPECT_EQ(ReadFileOrDie(etc_ + "/fstab"), fstab0);
  EXPECT_EQ(ReadFileOrDie(etc_ + "/crypttab"), "");
  for (const auto& v : out["volumes"]) EXPECT_FALSE(::access(v["key_file"].get<std::string>().c_str(), F_OK) == 0);
  auto end = Status();
  EXPECT_EQ((*VolumeAt(end, e4))["state"], "NotEncrypted") << end.dump();
  EXPECT_EQ(end["ProgressMessage"], "Decryption succeeded");
  // The OS volume was never encrypted by diskseal here: disable of it says so and changes nothing.
  RunResult os = Diskseal({"disable", "--volume-type", "OS", "--state-dir", state_, "--etc-dir", etc_});
  EXPECT_EQ(os.exit_code, 0) << os.err;
  EXPECT_NE(os.err.find("The OS volume is not encrypted by diskseal"), std::string::npos) << os.err;
}

// kill -9 in the middle: the run stops itself at 40% (a known engine commit), status from another
// process sees the engine's percent and the live rate, a second run with --no-wait is refused
// naming the PID; then SIGKILL; status after the crash still says EncryptionInProgress at the
// same percent; enable again finishes with the data intact.
TEST_F(EnableTest, EnableKilledMidwayThenResumedLockAndStatusDuring) {
  const std::string mp = MakeVolume("vol", "ext4", "32M");
  const std::string sums = Sums(mp);
  StartFrozen({mp}, 40);

  auto during = Status();
  const nlohmann::json* v = VolumeAt(during, mp);
  ASSERT_NE(v, nullptr) << during.dump();
  EXPECT_EQ((*v)["state"], "EncryptionInProgress");
  EXPECT_EQ((*v)["step"], "encrypting");
  const double pct = HeaderPercent(*v);
  EXPECT_GE(pct, 40.0);
  EXPECT_LT(pct, 100.0);
  EXPECT_EQ((*v)["percent"], pct);
  EXPECT_EQ((*v)["pid"], bg_.pid);
  EXPECT_GT((*v)["mib_s"].get<double>(), 0.0);
  EXPECT_TRUE((*v)["eta_s"].is_number());
  EXPECT_EQ(during["DataVolumesEncrypted"], "EncryptionInProgress");
  EXPECT_EQ(during["ProgressMessage"], "Encrypting data volume 1/1: " + std::to_string(int(pct)) + "%");

  auto second = EnableArgs({mp});
  second.push_back("--no-wait");
  RunResult busy = Diskseal(second);
  EXPECT_EQ(busy.exit_code, 5) << busy.err;
  EXPECT_NE(busy.err.find("pid " + std::to_string(bg_.pid) + " (diskseal enable"), std::string::npos) << busy.err;

  bg_.Kill();
  auto crashed = Status();
  v = VolumeAt(crashed, mp);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ((*v)["state"], "EncryptionInProgress");
  EXPECT_EQ((*v)["percent"], pct);
  EXPECT_TRUE((*v)["mib_s"].is_null());  // nobody is encrypting now
  EXPECT_NE(crashed["ProgressMessage"].get<std::string>().find("interrupted at " + std::to_string(int(pct)) + "%"),
            std::string::npos) << crashed.dump();

  // The next run resumes; it too is stopped, at 70%, and a third run (without --no-wait) waits for
  // it, saying which PID it waits for; when the holder is killed the waiter takes over and
  // finishes.
  StartFrozen({mp}, 70);
  const pid_t holder = bg_.pid;
  Background waiter;
  waiter.err = dir_ / "waiter.err";
  {
    std::vector<std::string> argv = {DISKSEAL_BIN};
    for (auto& a : EnableArgs({mp})) argv.push_back(a);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, waiter.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_EQ(posix_spawn(&waiter.pid, args[0], &fa, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  // The waiter says it waits before it blocks: read its stderr until the line is complete.
  // It names the holder by its whole command (paths only): the command that continues the run.
  const std::string want = "held by pid " + std::to_string(holder) + " (diskseal enable --volume-type Data --state-dir " +
                           state_ + " --etc-dir " + etc_ + " --run-dir " + run_ + " --only " + mp + " --no-escrow)\n";
  std::string said;
  while (said.find(want) == std::string::npos) {
    int st;
    ASSERT_EQ(::waitpid(waiter.pid, &st, WNOHANG), 0) << "the waiter ended: " << ReadFileOrDie(waiter.err);
    said = ReadFileOrDie(waiter.err);
    ::usleep(2000);  // polling a file for a line, not waiting for time to pass
  }
  bg_.Kill();
  int wst = 0;
  ASSERT_EQ(::waitpid(waiter.pid, &wst, 0), waiter.pid);
  waiter.pid = -1;
  ASSERT_TRUE(WIFEXITED(wst) && WEXITSTATUS(wst) == 0) << ReadFileOrDie(waiter.err);
  EXPECT_EQ(Sums(mp), sums);
  EXPECT_EQ(MountedSource(mp).rfind("/dev/loop", 0), 0u);
  EXPECT_NE(MountedSource(mp), devices_[mp]);
  auto done = Status();
  EXPECT_EQ((*VolumeAt(done, mp))["state"], "Encrypted") << done.dump();
}

// Disable killed mid-way: status says DecryptionInProgress with the engine's percent; disable
// again finishes back to plaintext on the original device with the files intact.
// Issue 10: SIGINT stops enable at the engine's next commit; the error and the status name the
// command that continues (the message's command, run as printed, finishes with the data intact);
// the progress lines end "stopped", never "done".
TEST_F(EnableTest, EnableInterruptedBySigintNamesTheCommandThatContinues) {
  const std::string mp = MakeVolume("ivol", "ext4", "32M");
  const std::string sums = Sums(mp);
  StartFrozen({mp}, 30);
  ASSERT_EQ(::kill(bg_.pid, SIGINT), 0);  // pending while stopped: handled when it continues
  ASSERT_EQ(::kill(bg_.pid, SIGCONT), 0);
  int st = 0;
  ASSERT_EQ(::waitpid(bg_.pid, &st, 0), bg_.pid);
  bg_.pid = -1;
  const std::string err = ReadFileOrDie(bg_.err);
  ASSERT_TRUE(WIFEXITED(st)) << err;
  EXPECT_EQ(WEXITSTATUS(st), 9) << err;
  EXPECT_EQ(err.find("\"event\":\"done\""), std::string::npos) << err;
  EXPECT_NE(err.find("\"event\":\"stopped\""), std::string::npos) << err;
  EXPECT_NE(err.find(mp + " stays unmounted until it finishes"), std::string::npos) << err;
  const size_t at = err.find("continue with `");
  ASSERT_NE(at, std::string::npos) << err;
  const std::string cmd = err.substr(at + 15, err.find('`', at + 15) - at - 15);
  EXPECT_EQ(cmd.rfind("diskseal enable --volume-type Data --state-dir " + state_, 0), 0u) << cmd;

  auto now = Status();
  const nlohmann::json* v = VolumeAt(now, mp);
  ASSERT_NE(v, nullptr) << now.dump();
  EXPECT_EQ((*v)["state"], "EncryptionInProgress");
  EXPECT_NE(now["ProgressMessage"].get<std::string>().find("interrupted at " + std::to_string(int(HeaderPercent(*v))) +
                                                          "%: run `diskseal enable` to resume"),
            std::string::npos) << now.dump();

  // the named command, word for word
  std::vector<std::string> args;
  std::istringstream words(cmd.substr(std::string("diskseal ").size()));
  for (std::string w; words >> w;) args.push_back(w);
  RunResult again = Diskseal(args);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(Sums(mp), sums);
  EXPECT_EQ(MountedSource(mp).rfind("/dev/loop", 0), 0u) << MountedSource(mp);
}

TEST_F(EnableTest, DisableKilledMidwayThenResumed) {
  const std::string mp = MakeVolume("dvol", "ext4", "32M");
  WriteFile(etc_ + "/fstab", devices_[mp] + " " + mp + " ext4 defaults 0 2\n");
  const std::string fstab0 = ReadFileOrDie(etc_ + "/fstab");
  const std::string sums = Sums(mp);
  RunResult en = Diskseal(EnableArgs({mp}));
  ASSERT_EQ(en.exit_code, 0) << en.err;
  StartFrozen({mp}, 50, /*disable=*/true);
  auto during = Status();
  const nlohmann::json* v = VolumeAt(during, mp);
  ASSERT_NE(v, nullptr) << during.dump();
  EXPECT_EQ((*v)["state"], "DecryptionInProgress");
  const double pct = HeaderPercent(*v);
  EXPECT_GE(pct, 50.0);
  EXPECT_LT(pct, 100.0);
  EXPECT_EQ((*v)["percent"], pct);
  EXPECT_EQ(during["DataVolumesEncrypted"], "DecryptionInProgress");
  EXPECT_EQ(during["ProgressMessage"], "Decrypting data volume 1/1: " + std::to_string(int(pct)) + "%");
  bg_.Kill();
  // enable refuses to run over a half-done disable rather than guess.
  EXPECT_EQ(Diskseal(EnableArgs({mp})).exit_code, 5);
  RunResult dis = Diskseal(DisableArgs({mp}));
  ASSERT_EQ(dis.exit_code, 0) << dis.err;
  EXPECT_EQ(MountedSource(mp), devices_[mp]);
  EXPECT_EQ(Sums(mp), sums);
  EXPECT_EQ(ReadFileOrDie(etc_ + "/fstab"), fstab0);
  EXPECT_EQ(Status()["ProgressMessage"], "Decryption succeeded");
}

// A busy mount point is refused with the holder named, and nothing is changed: first by doctor
// (open-files) before anything is recorded, then, with that check ignored, by enable's own unmount.
TEST_F(EnableTest, EnableRefusesABusyMountNamingTheHolder) {
  const std::string mp = MakeVolume("busy", "ext4", "32M");
  const std::string sums = Sums(mp);
  int fd = ::open((mp + "/file0").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  const std::string me = "pid " + std::to_string(::getpid());
  RunResult doc = Diskseal(EnableArgs({mp}));
  EXPECT_EQ(doc.exit_code, 5) << doc.err;
  EXPECT_NE(doc.err.find("open-files"), std::string::npos) << doc.err;
  EXPECT_NE(doc.err.find(me), std::string::npos) << doc.err;
  EXPECT_EQ((*VolumeAt(Status(), mp))["step"], nullptr);  // nothing recorded
  auto args = EnableArgs({mp});
  args.push_back("--ignore");
  args.push_back("open-files");
  RunResult r = Diskseal(args);
  ::close(fd);
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_NE(r.err.find(me), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("target is busy"), std::string::npos) << r.err;
  EXPECT_EQ(MountedSource(mp), devices_[mp]);
  EXPECT_EQ(Sums(mp), sums);
  auto st = Status();
  EXPECT_EQ((*VolumeAt(st, mp))["state"], "NotEncrypted");  // planned, nothing written
  EXPECT_EQ(st["ProgressMessage"].get<std::string>().rfind("Failed to encrypt data volume 1/1", 0), 0u) << st.dump();
  EXPECT_NE((*VolumeAt(st, mp))["last_error"].get<std::string>().find("target is busy"), std::string::npos);
  // Once the holder is gone the same command does the job.
  RunResult ok = Diskseal(EnableArgs({mp}));
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(Sums(mp), sums);
}

// Without a vault nothing is escrowed: enable asks for that by name (--no-escrow), one line,
// exit 1, before it looks at any volume.
TEST_F(EnableTest, EnableWithoutAVaultAsksForNoEscrowByName) {
  RunResult r = Diskseal({"enable", "--volume-type", "Data", "--state-dir", state_, "--etc-dir", etc_, "--run-dir", run_});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("--no-escrow"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(::access((state_ + "/lock").c_str(), F_OK), 0);  // the state directory was not even prepared
  RunResult both = Diskseal({"enable", "--volume-type", "Data", "--state-dir", state_, "--no-escrow", "--vault",
                             "https://127.0.0.1:1", "--vault-token-file", "/nonexistent"});
  EXPECT_EQ(both.exit_code, 1) << both.err;
}

// The OS volume's key comes from the vault at every boot: without one, enable of it (or All) is
// refused before anything is looked at or written, whatever this machine's root is. (The flow
// itself runs in a Debian guest: tests/vm/os_enable_vm_test.cc.)
TEST_F(EnableTest, EnableOsVolumeNeedsAVault) {
  for (const char* type : {"OS", "All"}) {
    RunResult r = Diskseal({"enable", "--volume-type", type, "--no-escrow", "--state-dir", state_, "--etc-dir", etc_});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("the OS volume needs a vault"), std::string::npos) << r.err;
    EXPECT_FALSE(::access(state_.c_str(), F_OK) == 0);  // nothing was started
  }
}

// One owner per device (README "Device ownership"): while enable encrypts a volume (frozen at 40%)
// and, once done, while its userspace view serves it, encrypt or decrypt of the same device, by
// its loop device or by its image file, is refused naming enable; status still runs; the files
// are intact through the new mount.
TEST_F(EnableTest, EnableOwnsTheDeviceWhileItWorksAndWhileItsViewServes) {
  const std::string mp = MakeVolume("own", "ext4", "32M");
  const std::string sums = Sums(mp);
  const std::string dev = devices_[mp], img = dir_ / "own.img";
  auto refused = [&](const std::vector<std::string>& args, pid_t holder) {
    RunResult r = Diskseal(args);
    EXPECT_EQ(r.exit_code, 5) << r.err;
    EXPECT_NE(r.err.find("in use by diskseal enable --volume-type Data"), std::string::npos) << r.err;
    if (holder > 0) {
      EXPECT_NE(r.err.find("(pid " + std::to_string(holder) + ")"), std::string::npos) << r.err;
    }
    EXPECT_FALSE(::access((dir_ / "other.hdr").c_str(), F_OK) == 0);
  };
  StartFrozen({mp}, 40);
  for (const std::string& d : {dev, img})
    refused({"encrypt", d, "--header", dir_ / "other.hdr", "-d", dir_ / "no-key", "--pbkdf", "pbkdf2",
             "--pbkdf-force-iterations", "1000"}, bg_.pid);
  EXPECT_EQ(Diskseal({"status", "--json", "--state-dir", state_, "--etc-dir", etc_}).exit_code, 0);
  bg_.Kill();
  RunResult done = Diskseal(EnableArgs({mp}));
  ASSERT_EQ(done.exit_code, 0) << done.err;
  // The view's daemon (forked by enable) holds the device now.
  for (const std::string& d : {dev, img})
    refused({"decrypt", d, "--header", dir_ / "other.hdr", "-d", dir_ / "no-key"}, -1);
  EXPECT_EQ(Sums(mp), sums);
}

}  // namespace
}  // namespace ds::test
