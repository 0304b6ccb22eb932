// Issue 10's wrong-command cases, on real images and loop devices with real cryptsetup:
//  - a detached header used with another device is refused, naming both, before any write (and
//    the key-less evidence before the PBKDF), while the right device is never refused: not after
//    its filesystem was written through the volume, nor after a new filesystem was made in it;
//  - reencrypt keeps keyslots as cryptsetup 2.6.1 does (--key-slot, refusal with a key file,
//    every passphrase on a terminal) and no token points at a removed keyslot;
//  - format over a filesystem asks for YES on a terminal, refuses without one unless -q.
#include <gtest/gtest.h>

#include <poll.h>
#include <pty.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "testlib.h"

namespace ds::test {
namespace {

const std::vector<std::string> kFast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

std::vector<std::string> Cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Runs argv on a new pseudo-terminal and answers each prompt in turn: once `prompt` has appeared
// and the terminal's echo is off (the program is reading a passphrase; typed earlier, its
// TCSAFLUSH would discard it), `answer` and a newline are typed. Bounded: 60 s in all.
struct PtyResult {
  int exit_code = -1;
  std::string out;
};
PtyResult RunOnPty(const std::vector<std::string>& argv,
                   const std::vector<std::pair<std::string, std::string>>& dialog, bool wait_echo_off) {
  PtyResult res;
  int master = -1;
  pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
  if (pid < 0) return res;
  if (pid == 0) {
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  size_t step = 0, seen = 0;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    if (step < dialog.size() && res.out.find(dialog[step].first, seen) != std::string::npos) {
      struct termios t;
      if (!wait_echo_off || (tcgetattr(master, &t) == 0 && !(t.c_lflag & ECHO))) {
        const std::string line = dialog[step].second + "\n";
        if (write(master, line.data(), line.size()) != ssize_t(line.size())) break;
        seen = res.out.find(dialog[step].first, seen) + dialog[step].first.size();
        ++step;
        continue;
      }
    }
    struct pollfd p = {master, POLLIN, 0};
    int n = poll(&p, 1, 10);
    if (n > 0) {
      ssize_t k = read(master, buf, sizeof buf);
      if (k <= 0) break;  // EIO: the program closed the terminal (exited)
      res.out.append(buf, size_t(k));
    }
  }
  close(master);
  int status = 0;
  if (waitpid(pid, &status, 0) == pid && WIFEXITED(status)) res.exit_code = WEXITSTATUS(status);
  return res;
}

class BindingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveProgram("cryptsetup") || !HaveProgram("mkfs.ext4")) GTEST_SKIP() << "cryptsetup-bin or e2fsprogs missing";
    WriteFile(dir_ / "key", "same passphrase for both");
    WriteFile(dir_ / "key2", "a recovery passphrase");
    WriteFile(dir_ / "bad", "wrong");
  }
  void TearDown() override {
    for (const auto& l : loops_) RunProgram({"losetup", "-d", l});
  }
  // An image of `mib` MiB holding ext4 with a few files (made without mounting: mkfs -d).
  void MakeExt4(const std::string& img, int mib, uint64_t seed) {
    const std::string files = img + ".files";
    std::filesystem::create_directories(files);
    MakeRandomImage(files + "/data.bin", 2u << 20, seed);
    WriteFile(files + "/note.txt", "file of " + img + "\n");
    ASSERT_EQ(RunProgram({"truncate", "-s", std::to_string(mib) + "M", img}).exit_code, 0);
    ASSERT_EQ(RunProgram({"mkfs.ext4", "-q", "-F", "-d", files, img}).exit_code, 0);
  }
  std::string Loop(const std::string& img) {
    RunResult r = RunProgram({"losetup", "-f", "--show", img});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string dev = r.out.substr(0, r.out.find('\n'));
    loops_.push_back(dev);
    return dev;
  }
  RunResult Encrypt(const std::string& dev, const std::string& hdr, std::vector<std::string> extra = {}) {
    return Diskseal(Cat(Cat({"encrypt", dev, "--header", hdr, "-d", dir_ / "key", "--hotzone-size", "1M"}, kFast),
                        extra));
  }
  // The ext4 filesystem on `img` is clean and holds its files (e2fsck -n reads, never writes).
  void ExpectIntactExt4(const std::string& img) {
    RunResult r = RunProgram({"e2fsck", "-f", "-n", img});
    EXPECT_EQ(r.exit_code, 0) << img << ": " << r.out << r.err;
    RunResult cat = RunProgram({"debugfs", "-R", "cat /note.txt", img});
    EXPECT_NE(cat.out.find("file of "), std::string::npos) << cat.out << cat.err;
  }
  // Every file's bytes, to compare before and after a refused command.
  bool Opens(const std::string& img, const std::string& key, const std::string& hdr = "") {
    std::vector<std::string> a = {"cryptsetup", "open", "--test-passphrase", "--key-file", key, img};
    if (!hdr.empty()) a.insert(a.end(), {"--header", hdr});
    return RunProgram(a).exit_code == 0;
  }
  std::vector<std::string> Snapshot(const std::vector<std::string>& files) {
    std::vector<std::string> out;
    for (const auto& f : files) out.push_back(Sha256File(f));
    return out;
  }
  TempDir dir_;
  std::vector<std::string> loops_;
};

// Issue 10 case 4: `decrypt A --header B.hdr` (B's header, same passphrase) garbled A and B's
// header. Every command that takes the pair is refused naming both, and nothing changes.
TEST_F(BindingTest, AnotherDevicesHeaderIsRefusedByEveryCommandBeforeAnyWrite) {
  const std::string a_img = dir_ / "a.img", b_img = dir_ / "b.img", ha = dir_ / "a.hdr", hb = dir_ / "b.hdr";
  MakeExt4(a_img, 24, 1);
  MakeExt4(b_img, 24, 2);
  const std::string a = Loop(a_img), b = Loop(b_img);
  ASSERT_EQ(Encrypt(a, ha).exit_code, 0);
  ASSERT_EQ(Encrypt(b, hb).exit_code, 0);
  // cryptsetup accepts the headers with the binding token and shows it
  RunResult dump = RunProgram({"cryptsetup", "luksDump", "--header", hb, b});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("diskseal-device"), std::string::npos) << dump.out;
  EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "--header", hb, "--key-file", dir_ / "key", b})
                .exit_code, 0);

  const std::vector<std::string> all = {a_img, b_img, ha, hb};
  const auto before = Snapshot(all);
  const std::vector<std::vector<std::string>> commands = {
      {"decrypt", a, "--header", hb, "-d", dir_ / "key"},
      {"reencrypt", a, "--header", hb, "-d", dir_ / "key"},
      {"export", a, "--header", hb, "-d", dir_ / "key", "-o", dir_ / "out.bin"},
      {"import", a, "--header", hb, "-d", dir_ / "key", "--input", dir_ / "a.img.files/note.txt"},
  };
  for (const auto& c : commands) {
    SCOPED_TRACE(c[0]);
    RunResult r = Diskseal(c[0] == "reencrypt" ? Cat(c, kFast) : c);
    EXPECT_EQ(r.exit_code, 4) << r.err;
    EXPECT_NE(r.err.find(hb), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(a), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("belongs to another device"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(Snapshot(all), before) << c[0] << " changed a device or a header";
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out.bin"));
  // resume of a finished header has nothing to do and writes nothing (an interrupted one is
  // refused: AnInterruptedOperationResumesOnlyOnItsDevice)
  RunResult idle = Diskseal({"resume", a, "--header", hb, "-d", dir_ / "key"});
  EXPECT_EQ(idle.exit_code, 0) << idle.err;
  EXPECT_NE(idle.out.find("no in-place operation"), std::string::npos) << idle.out;
  EXPECT_EQ(Snapshot(all), before);

  // The right pairs still work, and both filesystems come back intact.
  for (const auto& [dev, hdr, img] : {std::tuple{a, ha, a_img}, std::tuple{b, hb, b_img}}) {
    RunResult r = Diskseal({"decrypt", dev, "--header", hdr, "-d", dir_ / "key", "--hotzone-size", "1M"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.find("no longer needed"), std::string::npos) << r.out;
    ExpectIntactExt4(img);
  }
}

// The key-less part (size) refuses before the PBKDF: a wrong passphrase is not even tried.
TEST_F(BindingTest, ADeviceOfAnotherSizeIsRefusedBeforeThePassphrase) {
  const std::string a_img = dir_ / "a.img", b_img = dir_ / "b.img", hb = dir_ / "b.hdr";
  MakeExt4(a_img, 20, 3);
  MakeExt4(b_img, 24, 4);
  ASSERT_EQ(Encrypt(b_img, hb).exit_code, 0);
  const auto before = Snapshot({a_img, b_img, hb});
  RunResult r = Diskseal({"decrypt", a_img, "--header", hb, "-d", dir_ / "bad"});
  EXPECT_EQ(r.exit_code, 4) << r.err;  // not 2 (wrong passphrase): the PBKDF never ran
  EXPECT_NE(r.err.find("25165824 bytes"), std::string::npos) << r.err;
  EXPECT_EQ(Snapshot({a_img, b_img, hb}), before);
}

// An interrupted encryption: its header, with A, is refused by resume; with B, it finishes.
TEST_F(BindingTest, AnInterruptedOperationResumesOnlyOnItsDevice) {
  const std::string a_img = dir_ / "a.img", b_img = dir_ / "b.img", hb = dir_ / "b.hdr";
  MakeExt4(a_img, 24, 5);
  MakeExt4(b_img, 24, 6);
  RunResult s = Encrypt(b_img, hb, {"--stop-after", "6M"});
  ASSERT_EQ(s.exit_code, 9) << s.err;
  const auto before = Snapshot({a_img, b_img, hb});
  for (const char* cmd : {"resume", "decrypt", "encrypt"}) {
    SCOPED_TRACE(cmd);
    std::vector<std::string> args = {cmd, a_img, "--header", hb, "-d", dir_ / "key"};
    RunResult r = Diskseal(std::string(cmd) == "encrypt" ? Cat(args, kFast) : args);
    EXPECT_EQ(r.exit_code, 4) << r.err;
    EXPECT_NE(r.err.find("belongs to another device"), std::string::npos) << r.err;
    EXPECT_EQ(Snapshot({a_img, b_img, hb}), before);
  }
  ExpectIntactExt4(a_img);
  RunResult r = Diskseal({"resume", b_img, "--header", hb, "-d", dir_ / "key"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Diskseal({"decrypt", b_img, "--header", hb, "-d", dir_ / "key"}).exit_code, 0);
  ExpectIntactExt4(b_img);
}

// Never a false refusal: the filesystem written through the volume, or made anew inside it,
// still matches its header; a header cryptsetup made (no binding) works and gets one.
TEST_F(BindingTest, TheRightDeviceIsAcceptedAfterWritesAndANewFilesystem) {
  const std::string img = dir_ / "v.img", hdr = dir_ / "v.hdr", plain = dir_ / "plain.img";
  MakeExt4(img, 24, 7);
  ASSERT_EQ(Encrypt(img, hdr).exit_code, 0);
  // written meanwhile: out through export, changed with debugfs (a real ext4 write), back in
  ASSERT_EQ(Diskseal({"export", img, "--header", hdr, "-d", dir_ / "key", "-o", plain}).exit_code, 0);
  WriteFile(dir_ / "new.txt", "written later\n");
  ASSERT_EQ(RunProgram({"debugfs", "-w", "-R", "write " + (dir_ / "new.txt") + " new.txt", plain}).exit_code, 0);
  RunResult imp = Diskseal({"import", img, "--header", hdr, "-d", dir_ / "key", "--input", plain});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  // a new filesystem made inside the volume (a new UUID; only the right key shows a superblock)
  ASSERT_EQ(RunProgram({"mkfs.ext4", "-q", "-F", "-d", img + ".files", plain}).exit_code, 0);
  imp = Diskseal({"import", img, "--header", hdr, "-d", dir_ / "key", "--input", plain});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  RunResult r = Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "key", "--hotzone-size", "1M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Sha256File(img), Sha256File(plain));

  // cryptsetup's own detached header: no token; diskseal reencrypts it and records one.
  const std::string c_img = dir_ / "c.img", c_hdr = dir_ / "c.hdr";
  MakeExt4(c_img, 24, 8);
  ASSERT_EQ(RunProgram(Cat(Cat({"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q",
                                "--force-offline-reencrypt", "--header", c_hdr, "--key-file", dir_ / "key"},
                               kFast),
                           {c_img}))
                .exit_code,
            0);
  EXPECT_EQ(Diskseal({"dump", c_img, "--header", c_hdr}).out.find("diskseal-device"), std::string::npos);
  RunResult re = Diskseal(Cat({"reencrypt", c_img, "--header", c_hdr, "-d", dir_ / "key"}, kFast));
  ASSERT_EQ(re.exit_code, 0) << re.err;
  auto j = nlohmann::json::parse(Diskseal({"dump", "--json", c_img, "--header", c_hdr}).out);
  bool found = false;
  for (const auto& t : j["tokens"])
    if (t["type"] == "diskseal-device") {
      found = true;
      EXPECT_EQ(t["json"]["size"], std::to_string(24u << 20));
      EXPECT_EQ(t["json"]["fs"]["type"], "ext4");
      EXPECT_EQ(t["json"]["keyslots"], nlohmann::json::array());
    }
  EXPECT_TRUE(found) << j.dump();
  ASSERT_EQ(RunProgram({"cryptsetup", "reencrypt", "--decrypt", "-q", "--force-offline-reencrypt", "--header", c_hdr,
                        "--key-file", dir_ / "key", c_img})
                .exit_code,
            0);
  ExpectIntactExt4(c_img);
}

// Issue 10 case 5: cryptsetup 2.6.1's keyslot rule for reencrypt.
class ReencryptKeyslotTest : public BindingTest {
 protected:
  // A cryptsetup volume: keyslot 0 (key), keyslot 1 (key2), a clevis-like token on 1 and a
  // foreign token on 0.
  void MakeTwoSlotVolume(const std::string& img) {
    MakeExt4(img, 24, 9);
    ASSERT_EQ(RunProgram(Cat(Cat({"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q",
                                  "--force-offline-reencrypt", "--header", hdr_, "--key-file", dir_ / "key"},
                                 kFast),
                             {img}))
                  .exit_code,
              0);
    ASSERT_EQ(RunProgram(Cat(Cat({"cryptsetup", "luksAddKey", "--header", hdr_, "--key-file", dir_ / "key"}, kFast),
                             {img, dir_ / "key2"}))
                  .exit_code,
              0);
    ASSERT_EQ(RunProgram({"cryptsetup", "token", "import", "--header", hdr_, img}, R"({"type":"clevis","keyslots":["1"],"x":1})").exit_code, 0);
    ASSERT_EQ(RunProgram({"cryptsetup", "token", "import", "--header", hdr_, img}, R"({"type":"vendor","keyslots":["0"]})").exit_code, 0);
  }
  nlohmann::json Json(const std::string& img) {
    return nlohmann::json::parse(RunProgram({"cryptsetup", "luksDump", "--dump-json-metadata", "--header", hdr_, img}).out);
  }
  std::string hdr_ = dir_ / "r.hdr";
};

TEST_F(ReencryptKeyslotTest, AKeyFileWithTwoKeyslotsIsRefusedAsCryptsetupDoes) {
  const std::string img = dir_ / "r.img";
  MakeTwoSlotVolume(img);
  const auto before = Snapshot({img, hdr_});
  RunResult cs = RunProgram(Cat(Cat({"cryptsetup", "reencrypt", "-q", "--force-offline-reencrypt", "--header", hdr_,
                                     "--key-file", dir_ / "key"},
                                    kFast),
                                {img}));
  EXPECT_EQ(cs.exit_code, 1) << cs.err;  // cryptsetup's own answer, for reference
  EXPECT_EQ(Snapshot({img, hdr_}), before);
  RunResult r = Diskseal(Cat({"reencrypt", img, "--header", hdr_, "-d", dir_ / "key"}, kFast));
  EXPECT_EQ(r.exit_code, cs.exit_code) << r.err;
  EXPECT_NE(r.err.find("--key-slot"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(Snapshot({img, hdr_}), before);
}

TEST_F(ReencryptKeyslotTest, KeySlotKeepsThatOneAndNoTokenPointsAtARemovedKeyslot) {
  const std::string img = dir_ / "r.img";
  MakeTwoSlotVolume(img);
  RunResult r = Diskseal(Cat({"reencrypt", img, "--header", hdr_, "-d", dir_ / "key", "--key-slot", "0"}, kFast));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("keyslot 1 is not kept"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("token 0 (clevis) loses keyslot 1"), std::string::npos) << r.err;
  EXPECT_TRUE(Opens(img, dir_ / "key", hdr_));
  EXPECT_FALSE(Opens(img, dir_ / "key2", hdr_));
  auto j = Json(img);
  ASSERT_EQ(j["keyslots"].size(), 1u) << j.dump();
  const std::string kept = j["keyslots"].begin().key();
  EXPECT_EQ(j["tokens"]["0"]["keyslots"], nlohmann::json::array());  // as cryptsetup leaves it
  EXPECT_EQ(j["tokens"]["1"]["keyslots"], nlohmann::json::array({kept}));
  EXPECT_EQ(j["tokens"]["0"]["x"], 1);  // its own fields untouched
  RunResult fs = RunProgram({"cryptsetup", "reencrypt", "--decrypt", "-q", "--force-offline-reencrypt",
                             "--header", hdr_, "--key-file", dir_ / "key", img});
  ASSERT_EQ(fs.exit_code, 0) << fs.err;
  ExpectIntactExt4(img);
}

// On a terminal, every keyslot's passphrase is asked and every keyslot lives on under the new
// key, each token following its keyslot. `script` gives the command a real pseudo-terminal.
TEST_F(ReencryptKeyslotTest, OnATerminalEveryKeyslotIsKept) {
  const std::string img = dir_ / "r.img";
  MakeTwoSlotVolume(img);
  PtyResult r = RunOnPty(Cat({DISKSEAL_BIN, "reencrypt", img, "--header", hdr_}, kFast),
                         {{"key slot 0", ReadFileOrDie(dir_ / "key")}, {"key slot 1", ReadFileOrDie(dir_ / "key2")}},
                         true);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(Opens(img, dir_ / "key", hdr_));
  EXPECT_TRUE(Opens(img, dir_ / "key2", hdr_));
  auto j = Json(img);
  EXPECT_EQ(j["keyslots"].size(), 2u) << j.dump();
  for (const auto& [k, t] : j["tokens"].items()) {
    if (t["type"] == "diskseal-device") continue;
    ASSERT_EQ(t["keyslots"].size(), 1u) << t.dump();
    EXPECT_TRUE(j["keyslots"].contains(t["keyslots"][0].get<std::string>())) << t.dump();
  }
  // the clevis token follows key2's keyslot: that keyslot opens with key2
  const std::string clevis_slot = j["tokens"]["0"]["keyslots"][0];
  EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "--key-slot", clevis_slot, "--key-file",
                        dir_ / "key2", "--header", hdr_, img})
                .exit_code,
            0);
}

// Issue 10 case 6: format over a filesystem.
TEST_F(BindingTest, FormatOverAFilesystemNeedsYesOrBatchMode) {
  const std::string img = dir_ / "f.img";
  MakeExt4(img, 20, 10);
  const std::string dev = Loop(img);
  const std::string before = Sha256File(img);
  RunResult r = Diskseal(Cat({"format", dev, "-d", dir_ / "key"}, kFast));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("already contains a 'ext4' superblock signature"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("-q/--batch-mode"), std::string::npos) << r.err;
  EXPECT_EQ(Sha256File(img), before);
  {
    const auto cmd = Cat({DISKSEAL_BIN, "format", dev, "-d", dir_ / "key"}, kFast);
    const std::string ask = "Are you sure? (Type 'yes' in capital letters): ";
    PtyResult no = RunOnPty(cmd, {{ask, "yes"}}, false);  // not in capitals
    EXPECT_EQ(no.exit_code, 1) << no.out;
    EXPECT_NE(no.out.find("WARNING: Device " + dev + " already contains a 'ext4' superblock signature."),
              std::string::npos) << no.out;
    EXPECT_EQ(Sha256File(img), before);
    PtyResult yes = RunOnPty(cmd, {{ask, "YES"}}, false);
    EXPECT_EQ(yes.exit_code, 0) << yes.out;
    EXPECT_TRUE(Opens(dev, dir_ / "key"));
  }
  // swap is a signature too; -q formats over it
  ASSERT_EQ(RunProgram({"mkswap", img}).exit_code, 0);
  EXPECT_EQ(Diskseal(Cat({"format", img, "-d", dir_ / "key"}, kFast)).exit_code, 1);
  RunResult q = Diskseal(Cat({"format", "-q", img, "-d", dir_ / "key"}, kFast));
  EXPECT_EQ(q.exit_code, 0) << q.err;
  // an existing LUKS header still needs --force as well
  EXPECT_EQ(Diskseal(Cat({"format", "-q", img, "-d", dir_ / "key"}, kFast)).exit_code, 5);
}

}  // namespace
}  // namespace ds::test
