// Where cryptsetup users expect diskseal to behave as cryptsetup does, through the CLI: a header
// with a keyslot diskseal cannot use stays readable (both tools run on the same image), nonsense
// sizes are usage errors, and a mistyped command or flag is named with the nearest one.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "luks2/header_io.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::test {
namespace {

using Json = nlohmann::json;

const std::vector<std::string> kFast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

class ParityCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    img_ = dir_ / "disk.img";
    MakeRandomImage(img_, 20u << 20, 15);
    WriteFile(dir_ / "k1", "first pass");
    WriteFile(dir_ / "k2", "second pass");
    WriteFile(dir_ / "k3", "third pass");
  }
  RunResult Cryptsetup(const std::vector<std::string>& args) {
    std::vector<std::string> argv;
    argv.reserve(args.size() + 1);
    argv.push_back(kCryptsetup);
    for (const auto& a : args) argv.push_back(a);
    return RunProgram(argv);
  }
  // img_ as cryptsetup formats it: passphrase "first pass" (k1), fast PBKDF.
  void FormatK1() {
    std::vector<std::string> f = {"luksFormat", "-q", "--type", "luks2", img_, dir_ / "k1"};
    f.insert(f.end(), kFast.begin(), kFast.end());
    ASSERT_EQ(Cryptsetup(f).exit_code, 0);
  }
  const std::string kCryptsetup = "cryptsetup";
  TempDir dir_;
  std::string img_;
};

// Early LUKS2 writers spelled the KDF `argon2`; other writers left the other KDF's fields in a
// keyslot. cryptsetup loads both headers; so must diskseal: the slot it cannot use is shown and
// skipped, every other slot unlocks.
TEST_F(ParityCliTest, KeyslotDisksealCannotUseKeepsTheHeaderReadable) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  std::vector<std::string> f = {"luksFormat", "-q", "--type", "luks2", img_, dir_ / "k1"};
  f.insert(f.end(), kFast.begin(), kFast.end());
  ASSERT_EQ(Cryptsetup(f).exit_code, 0);
  ASSERT_EQ(Cryptsetup({"luksAddKey", "-q", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
                        "--pbkdf-memory", "32", "--pbkdf-parallel", "1", "-d", dir_ / "k1", img_,
                        dir_ / "k2"}).exit_code, 0);
  std::vector<std::string> add3 = {"luksAddKey", "-q", "-d", dir_ / "k1", img_, dir_ / "k3"};
  add3.insert(add3.end(), kFast.begin(), kFast.end());
  ASSERT_EQ(Cryptsetup(add3).exit_code, 0);
  {
    auto dev = PosixEnv()->Open(img_, OpenOptions{.write = true});
    ASSERT_TRUE(dev.ok());
    auto r = luks2::ReadHeader(**dev);
    ASSERT_TRUE(r.ok()) << r.status().message();
    luks2::Metadata md = r->md;
    md.json["keyslots"]["1"]["kdf"]["type"] = "argon2";
    md.json["keyslots"]["2"]["kdf"]["time"] = 4;  // a leftover of argon2 in a pbkdf2 slot
    ASSERT_TRUE(WriteRaw(**dev, md).ok());
  }
  ASSERT_EQ(Cryptsetup({"luksDump", img_}).exit_code, 0) << "cryptsetup loads this header";

  RunResult d = Diskseal({"dump", img_});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_NE(d.out.find("PBKDF:      argon2\n"), std::string::npos) << d.out;
  EXPECT_NE(d.out.find("Unusable:   keyslot 1: kdf type 'argon2' is not supported"), std::string::npos) << d.out;
  RunResult j = Diskseal({"dump", "--json", img_});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  Json dump = Json::parse(j.out);
  ASSERT_EQ(dump["keyslots"].size(), 3u);
  EXPECT_NE(dump["keyslots"][1]["unusable"].get<std::string>().find("argon2"), std::string::npos);
  EXPECT_FALSE(dump["keyslots"][0].contains("unusable"));
  EXPECT_FALSE(dump["keyslots"][2].contains("unusable"));

  const std::string before = Sha256File(img_);
  RunResult t1 = Diskseal({"test-key", img_, "-d", dir_ / "k1", "--json"});
  EXPECT_EQ(t1.exit_code, 0) << t1.err;
  EXPECT_EQ(Json::parse(t1.out)["keyslot"], 0);
  RunResult t3 = Diskseal({"test-key", img_, "-d", dir_ / "k3", "--json"});
  EXPECT_EQ(t3.exit_code, 0) << t3.err;
  EXPECT_EQ(Json::parse(t3.out)["keyslot"], 2);
  RunResult t2 = Diskseal({"test-key", img_, "-d", dir_ / "k2"});
  EXPECT_EQ(t2.exit_code, 2) << t2.err;
  EXPECT_NE(t2.err.find("not tried, unusable: keyslot 1: kdf type 'argon2'"), std::string::npos) << t2.err;
  RunResult named = Diskseal({"test-key", img_, "-d", dir_ / "k2", "--key-slot", "1"});
  EXPECT_EQ(named.exit_code, 7) << named.err;
  EXPECT_NE(named.err.find("diskseal cannot use this keyslot"), std::string::npos) << named.err;
  EXPECT_EQ(Sha256File(img_), before) << "dump and test-key must not write";
}

std::vector<std::string> Cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

int DisksealLines(const std::string& out) {
  int n = 0;
  for (size_t at = out.find("diskseal: "); at != std::string::npos; at = out.find("diskseal: ", at + 1)) ++n;
  return n;
}

// -y/--verify-passphrase: on a terminal both tools ask twice and refuse a mismatch (exit 2,
// nothing written); without -y, -q formats after one prompt; off a terminal there is nothing to
// verify and the one line of stdin is used.
TEST_F(ParityCliTest, VerifyPassphraseAsksTwiceOnATerminal) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  const std::string cs_img = dir_ / "cs.img", ds_img = dir_ / "ds.img";
  MakeRandomImage(cs_img, 20u << 20, 1);
  MakeRandomImage(ds_img, 20u << 20, 2);
  const std::string cs_before = Sha256File(cs_img), ds_before = Sha256File(ds_img);
  const std::vector<std::string> cs_format = Cat({"cryptsetup", "luksFormat", "-q", "--type", "luks2"}, kFast);
  const std::vector<std::string> ds_format = Cat({DISKSEAL_BIN, "format", "-q"}, kFast);

  TerminalResult c = RunOnTerminal(Cat(cs_format, {"-y", cs_img}), {"one", "two"});
  EXPECT_EQ(c.exit_code, 2) << c.out;
  EXPECT_EQ(c.prompts, 2) << c.out;
  EXPECT_NE(c.out.find("Passphrases do not match"), std::string::npos) << c.out;
  TerminalResult d = RunOnTerminal(Cat(ds_format, {"-y", ds_img}), {"one", "two"});
  EXPECT_EQ(d.exit_code, 2) << d.out;
  EXPECT_EQ(d.prompts, 2) << d.out;
  EXPECT_NE(d.out.find("passphrases do not match"), std::string::npos) << d.out;
  EXPECT_EQ(DisksealLines(d.out), 1) << d.out;
  EXPECT_EQ(Sha256File(cs_img), cs_before);
  EXPECT_EQ(Sha256File(ds_img), ds_before);

  // -q alone: one prompt (batch mode turns verification off in both).
  c = RunOnTerminal(Cat(cs_format, {cs_img}), {"same"});
  EXPECT_EQ(c.exit_code, 0) << c.out;
  EXPECT_EQ(c.prompts, 1) << c.out;
  d = RunOnTerminal(Cat(ds_format, {ds_img}), {"same"});
  EXPECT_EQ(d.exit_code, 0) << d.out;
  EXPECT_EQ(d.prompts, 1) << d.out;

  // Unlocking with -y: asked twice, then the passphrase is tried; each tool on both images.
  for (const std::string& img : {cs_img, ds_img}) {
    c = RunOnTerminal({"cryptsetup", "open", "--test-passphrase", "-y", img}, {"same", "same"});
    EXPECT_EQ(c.exit_code, 0) << c.out;
    EXPECT_EQ(c.prompts, 2) << c.out;
    d = RunOnTerminal({DISKSEAL_BIN, "test-key", "-y", img}, {"same", "same"});
    EXPECT_EQ(d.exit_code, 0) << d.out;
    EXPECT_EQ(d.prompts, 2) << d.out;
    c = RunOnTerminal({"cryptsetup", "open", "--test-passphrase", "--verify-passphrase", img}, {"same", "other"});
    EXPECT_EQ(c.exit_code, 2) << c.out;
    d = RunOnTerminal({DISKSEAL_BIN, "test-key", "--verify-passphrase", img}, {"same", "other"});
    EXPECT_EQ(d.exit_code, 2) << d.out;
    // Off a terminal: one line of stdin, nothing to verify against.
    EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "-y", img}, "same\n").exit_code, 0);
    RunResult p = Diskseal({"test-key", "-y", img}, "same\n");
    EXPECT_EQ(p.exit_code, 0) << p.err;
  }
}

// -T/--tries: a wrong passphrase typed at a terminal is asked again, 3 times in all by default;
// a pipe or a key file gets one try. Both tools, the same answers.
TEST_F(ParityCliTest, TriesAtATerminal) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  ASSERT_NO_FATAL_FAILURE(FormatK1());
  struct Case {
    std::vector<std::string> flags;
    std::vector<std::string> answers;
    int exit_code, prompts;
  } cases[] = {
      {{}, {"bad1", "bad2", "first pass"}, 0, 3},
      {{}, {"bad1", "bad2", "bad3", "first pass"}, 2, 3},
      {{"-T", "1"}, {"bad", "first pass"}, 2, 1},
      {{"--tries", "5"}, {"b1", "b2", "b3", "b4", "first pass"}, 0, 5},
  };
  for (const auto& c : cases) {
    TerminalResult cs = RunOnTerminal(Cat(Cat({"cryptsetup", "open", "--test-passphrase"}, c.flags), {img_}), c.answers);
    EXPECT_EQ(cs.exit_code, c.exit_code) << cs.out;
    EXPECT_EQ(cs.prompts, c.prompts) << cs.out;
    TerminalResult ds = RunOnTerminal(Cat(Cat({DISKSEAL_BIN, "test-key"}, c.flags), {img_}), c.answers);
    EXPECT_EQ(ds.exit_code, c.exit_code) << ds.out;
    EXPECT_EQ(ds.prompts, c.prompts) << ds.out;
    // Each wrong passphrase said once, on one line naming the device.
    const int wrong = c.exit_code == 0 ? c.prompts - 1 : c.prompts;
    EXPECT_EQ(DisksealLines(ds.out), wrong) << ds.out;
  }
  // One try off a terminal, whatever -T says.
  EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "-T", "3", img_}, "bad\nfirst pass\n").exit_code, 2);
  EXPECT_EQ(Diskseal({"test-key", "-T", "3", img_}, "bad\nfirst pass\n").exit_code, 2);
  EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "-T", "3", "-d", dir_ / "k2", img_}).exit_code, 2);
  EXPECT_EQ(Diskseal({"test-key", "-T", "3", "-d", dir_ / "k2", img_}).exit_code, 2);
  RunResult zero = Diskseal({"test-key", "-T", "0", img_});
  EXPECT_EQ(zero.exit_code, 1) << zero.err;
  EXPECT_NE(zero.err.find("--tries"), std::string::npos) << zero.err;
}

// -l is --keyfile-size; keyslot add reads the new key from --new-keyfile (cryptsetup 2.6.1's
// name; --new-key-file still works), with --new-keyfile-size. What one tool adds the other opens.
TEST_F(ParityCliTest, KeyfileFlagsHaveCryptsetupsNames) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  WriteFile(dir_ / "long", "first pass and the rest of a long file");
  std::vector<std::string> f = {"luksFormat", "-q", "--type", "luks2", img_, dir_ / "long", "-l", "10"};
  ASSERT_EQ(Cryptsetup(Cat(f, kFast)).exit_code, 0);
  EXPECT_EQ(Cryptsetup({"open", "--test-passphrase", "-d", dir_ / "long", "-l", "10", img_}).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "long", "-l", "10"}).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "long", "--keyfile-size", "10"}).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "long"}).exit_code, 2);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "k1"}).exit_code, 0);

  // diskseal adds with cryptsetup's flag names, cryptsetup opens; and the reverse.
  RunResult a = Diskseal(Cat({"keyslot", "add", img_, "-d", dir_ / "k1", "--new-keyfile", dir_ / "long",
                              "--new-keyfile-size", "5", "--json"}, kFast));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const int added = Json::parse(a.out)["keyslot"].get<int>();
  WriteFile(dir_ / "first", "first");
  EXPECT_EQ(Cryptsetup({"open", "--test-passphrase", "-d", dir_ / "first", "--key-slot", std::to_string(added), img_}).exit_code, 0);
  a = Diskseal(Cat({"keyslot", "add", img_, "-d", dir_ / "k1", "--new-key-file", dir_ / "k2"}, kFast));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(Cryptsetup({"open", "--test-passphrase", "-d", dir_ / "k2", img_}).exit_code, 0);
  ASSERT_EQ(Cryptsetup(Cat({"luksAddKey", "-q", "-d", dir_ / "k1", "--new-keyfile", dir_ / "k3", img_}, kFast)).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "k3"}).exit_code, 0);
}

// -i is --iter-time (cryptsetup's meaning, and diskseal's everywhere else): import takes its input
// as --input, and the old `import -i FILE` is refused with the new spelling named, writing nothing.
TEST_F(ParityCliTest, ImportInputIsNotDashI) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  ASSERT_NO_FATAL_FAILURE(FormatK1());
  WriteFile(dir_ / "plain", std::string(8192, 'p'));
  const std::string before = Sha256File(img_);
  RunResult old = Diskseal({"import", img_, "-d", dir_ / "k1", "-i", dir_ / "plain"});
  EXPECT_EQ(old.exit_code, 1) << old.err;
  EXPECT_EQ(std::count(old.err.begin(), old.err.end(), '\n'), 1) << old.err;
  EXPECT_NE(old.err.find("--input FILE"), std::string::npos) << old.err;
  EXPECT_NE(old.err.find("--iter-time"), std::string::npos) << old.err;
  EXPECT_EQ(Sha256File(img_), before);
  RunResult ok = Diskseal({"import", img_, "-d", dir_ / "k1", "--input", dir_ / "plain"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  RunResult out = Diskseal({"export", img_, "-d", dir_ / "k1", "-o", "-"});
  ASSERT_EQ(out.exit_code, 0) << out.err;
  EXPECT_EQ(out.out.substr(0, 8192), std::string(8192, 'p'));
}

// A usage error is exit 1 in both tools: a keyslot or token id already taken, a header backup
// over an existing file, encrypt without a place for the header, datashift with --header.
TEST_F(ParityCliTest, UsageErrorsExitOneAsInCryptsetup) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  ASSERT_NO_FATAL_FAILURE(FormatK1());
  WriteFile(dir_ / "tok.json", R"({"type":"vendor","keyslots":[]})");
  ASSERT_EQ(Cryptsetup({"token", "import", "--token-id", "0", "--json-file", dir_ / "tok.json", img_}).exit_code, 0);
  const std::string before = Sha256File(img_);
  WriteFile(dir_ / "exists", "x");
  struct Case {
    std::vector<std::string> cs, ds;
    const char* says;
  } cases[] = {
      {Cat({"luksAddKey", "-q", "-S", "0", "-d", dir_ / "k1", img_, dir_ / "k2"}, kFast),
       Cat({"keyslot", "add", img_, "-d", dir_ / "k1", "--new-keyfile", dir_ / "k2", "--key-slot", "0"}, kFast),
       "keyslot 0 is already in use"},
      {{"token", "import", "--token-id", "0", "--json-file", dir_ / "tok.json", img_},
       {"token", "import", img_, "--token-id", "0", "--json-file", dir_ / "tok.json"},
       "token 0 already exists"},
      {{"luksHeaderBackup", img_, "--header-backup-file", dir_ / "exists"},
       {"header", "backup", img_, "--header-backup-file", dir_ / "exists"},
       "already exists"},
      {Cat({"reencrypt", "--encrypt", "-q", "-d", dir_ / "k1", dir_ / "plain.img"}, kFast),
       Cat({"encrypt", dir_ / "plain.img", "-d", dir_ / "k1"}, kFast),
       "needs --header FILE (detached header) or --reduce-device-size SIZE"},
  };
  MakeRandomImage(dir_ / "plain.img", 8u << 20, 3);
  const std::string plain_before = Sha256File(dir_ / "plain.img");
  for (const auto& c : cases) {
    RunResult cs = Cryptsetup(c.cs);
    EXPECT_EQ(cs.exit_code, 1) << c.cs[0] << ": " << cs.err;
    RunResult ds = Diskseal(c.ds);
    EXPECT_EQ(ds.exit_code, 1) << c.ds[0] << ": " << ds.err;
    EXPECT_NE(ds.err.find(c.says), std::string::npos) << ds.err;
  }
  RunResult shift = Diskseal({"encrypt", dir_ / "plain.img", "--header", dir_ / "h", "-d", dir_ / "k1",
                              "--resilience", "datashift"});
  EXPECT_EQ(shift.exit_code, 1) << shift.err;
  EXPECT_EQ(Sha256File(img_), before);
  EXPECT_EQ(Sha256File(dir_ / "plain.img"), plain_before);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "h"));
}

// Every error is one line with one "diskseal: " in front, naming the device, without a prefix
// said twice ("diskseal: diskseal doctor: doctor: ..."); the minimum for --reduce-device-size is
// stated in bytes.
TEST_F(ParityCliTest, ErrorsHaveOnePrefixAndNameTheDevice) {
  ASSERT_NO_FATAL_FAILURE(FormatK1());
  MakeRandomImage(dir_ / "small.img", 4u << 20, 4);
  MakeRandomImage(dir_ / "plain.img", 8u << 20, 5);
  struct Case {
    std::vector<std::string> args;
    std::string names;  // the device or object the line must name
    const char* says;
  } cases[] = {
      {{"test-key", img_, "-d", dir_ / "k2"}, img_, "no key available"},
      {{"dump", dir_ / "plain.img"}, dir_ / "plain.img", "not a LUKS2 device"},
      {{"dump", dir_ / "missing.img"}, dir_ / "missing.img", "No such file"},
      {{"encrypt", dir_ / "plain.img", "-d", dir_ / "k1", "--reduce-device-size", "64k"}, dir_ / "plain.img",
       "--reduce-device-size 65536 must be a multiple of 8 KiB of at least 196608 bytes"},
      {{"encrypt", dir_ / "small.img", "-d", dir_ / "k1", "--reduce-device-size", "4M"}, dir_ / "small.img",
       "4194304 bytes is too small for --reduce-device-size 4194304: the device needs at least 6291456 bytes"},
      {{"keyslot", "remove", img_, "5"}, img_, "keyslot 5 does not exist"},
      {{"token", "export", img_, "--token-id", "3"}, img_, "token 3 does not exist"},
      {{"decrypt", img_, "-d", dir_ / "k1"}, img_, "decrypt needs --header FILE"},
      {{"reencrypt", dir_ / "plain.img", "-d", dir_ / "k1"}, dir_ / "plain.img", "not a LUKS2 device"},
      {{"open", img_, "v", "--userspace", "--run-dir", dir_ / "run", "-d", dir_ / "k2"}, img_, "no key available"},
      {{"close", "nosuch", "--run-dir", dir_ / "run"}, "nosuch", "no open volume of this name"},
      {{"format", img_, "-d", dir_ / "k1"}, img_, "already holds a LUKS header"},
      {{"import", img_, "-d", dir_ / "k1", "--input", dir_ / "missing.bin"}, dir_ / "missing.bin", "No such file"},
      {{"doctor", "--root", dir_ / "noroot"}, dir_ / "noroot", "No such file"},
  };
  const std::string before = Sha256File(img_);
  for (const auto& c : cases) {
    RunResult r = Diskseal(c.args);
    EXPECT_NE(r.exit_code, 0) << c.args[0];
    ASSERT_FALSE(r.err.empty()) << c.args[0];
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("diskseal: ", 0), 0u) << r.err;
    EXPECT_EQ(DisksealLines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.names), std::string::npos) << "names " << c.names << ": " << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    // No part said twice in a row ("doctor: doctor:", "img: img:").
    std::vector<std::string> parts;
    for (size_t at = 0, next; at < r.err.size(); at = next + 2) {
      next = r.err.find(": ", at);
      if (next == std::string::npos) next = r.err.size();
      parts.push_back(r.err.substr(at, next - at));
    }
    for (size_t i = 1; i < parts.size(); ++i) EXPECT_NE(parts[i], parts[i - 1]) << r.err;
  }
  EXPECT_EQ(Sha256File(img_), before);
}

// open (and every unlock, and resume) while cryptsetup reencrypt works on the volume: diskseal's
// device claims do not see cryptsetup, its reencryption lock does. Said as such, not as an
// interrupted operation to resume (which would run the two at once).
TEST_F(ParityCliTest, CryptsetupReencryptRunningIsNamedNotInterrupted) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  const std::string img = dir_ / "big.img", hdr = dir_ / "big.hdr";
  MakeRandomImage(img, 64u << 20, 6);
  std::vector<std::string> argv = Cat({"cryptsetup", "reencrypt", "--encrypt", "-q", "--header", hdr, "-d",
                                       dir_ / "k1", "--hotzone-size", "64k", img}, kFast);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int null = ::open("/dev/null", O_RDWR);
    dup2(null, 0), dup2(null, 1), dup2(null, 2);
    execvp(args[0], args.data());
    _exit(127);
  }
  // Wait (bounded) until cryptsetup holds its reencryption lock, then freeze it there.
  std::string lock;
  bool held = false;
  for (int i = 0; i < 20000 && !held; ++i) {
    auto dev = PosixEnv()->Open(hdr, OpenOptions{});
    if (dev.ok()) {
      auto r = luks2::ReadHeader(**dev);
      if (r.ok()) {
        lock = "/run/cryptsetup/LN_LUKS2-reencryption-" + r->md.uuid;
        const int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
          held = ::flock(fd, LOCK_SH | LOCK_NB) != 0;
          ::close(fd);
        }
      }
    }
    if (held) kill(pid, SIGSTOP);
    else usleep(500);
  }
  ASSERT_TRUE(held) << "cryptsetup never held " << lock;
  const std::string hdr_before = Sha256File(hdr);
  for (const std::vector<std::string>& a : std::vector<std::vector<std::string>>{
           {"open", img, "v", "--userspace", "--run-dir", dir_ / "run", "--header", hdr, "-d", dir_ / "k1"},
           {"test-key", img, "--header", hdr, "-d", dir_ / "k1"},
           {"resume", img, "--header", hdr, "-d", dir_ / "k1"}}) {
    RunResult r = Diskseal(a);
    EXPECT_EQ(r.exit_code, 5) << a[0] << ": " << r.err;
    EXPECT_NE(r.err.find(img + ": cryptsetup reencrypt is working on it now (it holds " + lock), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("interrupted"), std::string::npos) << r.err;
  }
  Diskseal({"close", "v", "--run-dir", dir_ / "run"});  // only if the open above wrongly worked
  EXPECT_EQ(Sha256File(hdr), hdr_before);
  kill(pid, SIGCONT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  RunResult after = Diskseal({"test-key", img, "--header", hdr, "-d", dir_ / "k1"});
  EXPECT_EQ(after.exit_code, 0) << after.err;
}

// Views opened with another --run-dir: list and close without --run-dir find them through their
// mounts; with --run-dir only that directory is looked at.
TEST_F(ParityCliTest, ListAndCloseFindViewsOfAnotherRunDir) {
  if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
  if (!std::filesystem::exists("/dev/fuse")) GTEST_SKIP() << "no FUSE";
  ASSERT_NO_FATAL_FAILURE(FormatK1());
  const std::string name = "parity-" + std::to_string(getpid());
  const std::string run = dir_ / "run", other = dir_ / "other";
  RunResult o = Diskseal({"open", "--userspace", "--run-dir", run, "-d", dir_ / "k1", img_, name});
  ASSERT_EQ(o.exit_code, 0) << o.err;
  auto listed = [&](const std::vector<std::string>& extra) {
    RunResult l = Diskseal(Cat({"list", "--json"}, extra));
    EXPECT_EQ(l.exit_code, 0) << l.err;
    for (const auto& e : Json::parse(l.out))
      if (e["name"] == name) return e["path"].get<std::string>();
    return std::string();
  };
  EXPECT_EQ(listed({}), run + "/" + name);
  EXPECT_EQ(listed({"--run-dir", run}), run + "/" + name);
  EXPECT_EQ(listed({"--run-dir", other}), "");
  RunResult wrong = Diskseal({"close", name, "--run-dir", other});
  EXPECT_EQ(wrong.exit_code, 4) << wrong.err;
  EXPECT_NE(wrong.err.find("without --run-dir, close looks in every run directory"), std::string::npos) << wrong.err;
  RunResult c = Diskseal({"close", name});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("Closed " + name + " (--run-dir " + run + ")"), std::string::npos) << c.out;
  EXPECT_EQ(listed({}), "");
  EXPECT_EQ(Diskseal({"close", name}).exit_code, 4);
}

// A block device given as --header (an empty partition or disk): an all-zero one takes the header,
// as in cryptsetup, through format and encrypt, and cryptsetup reads the result; one holding a
// signature is refused without --force and left as it was.
TEST_F(ParityCliTest, HeaderDeviceIsUsedWhenEmptyAndRefusedWithASignature) {
  if (!HaveProgram("cryptsetup") || !HaveProgram("losetup") || !HaveProgram("mkfs.ext4"))
    GTEST_SKIP() << "needs cryptsetup, losetup and mkfs.ext4";
  struct Loops {
    std::vector<std::string> devs;
    ~Loops() {
      for (const auto& d : devs) RunProgram({"losetup", "-d", d});
    }
  } loops;
  auto loop = [&](const std::string& name) {
    const std::string file = dir_ / name;
    WriteFile(file, std::string(16u << 20, '\0'));
    RunResult r = RunProgram({"losetup", "-f", "--show", file});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string dev = r.out.substr(0, r.out.find('\n'));
    if (!dev.empty()) loops.devs.push_back(dev);
    return dev;
  };
  const std::string data = dir_ / "data.img", plain = dir_ / "data.orig";
  MakeRandomImage(data, 8u << 20, 7);
  const std::string plain_sum = Sha256File(data);

  // cryptsetup takes an all-zero header device; so does diskseal, for encrypt and format.
  const std::string zero_cs = loop("zero-cs");
  ASSERT_FALSE(zero_cs.empty());
  MakeRandomImage(dir_ / "cs.img", 8u << 20, 8);
  ASSERT_EQ(Cryptsetup(Cat({"luksFormat", "-q", "--type", "luks2", "--header", zero_cs, dir_ / "cs.img", dir_ / "k1"}, kFast)).exit_code, 0);
  const std::string zero = loop("zero");
  ASSERT_FALSE(zero.empty());
  RunResult e = Diskseal(Cat({"encrypt", data, "--header", zero, "-d", dir_ / "k1"}, kFast));
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_EQ(Cryptsetup({"luksDump", zero}).exit_code, 0);
  EXPECT_EQ(Cryptsetup({"open", "--test-passphrase", "--header", zero, data, "-d", dir_ / "k1"}).exit_code, 0);
  RunResult out = Diskseal({"export", data, "--header", zero, "-d", dir_ / "k1", "-o", plain});
  ASSERT_EQ(out.exit_code, 0) << out.err;
  EXPECT_EQ(Sha256File(plain), plain_sum);
  RunResult again = Diskseal(Cat({"encrypt", data, "--header", zero, "-d", dir_ / "k1"}, kFast));
  EXPECT_EQ(again.exit_code, 5) << again.err;  // the header device now holds this volume's header
  EXPECT_NE(again.err.find("already encrypted"), std::string::npos) << again.err;

  const std::string zero2 = loop("zero2");
  RunResult f = Diskseal(Cat({"format", "-q", dir_ / "cs.img", "--header", zero2, "-d", dir_ / "k1"}, kFast));
  ASSERT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(Cryptsetup({"luksDump", zero2}).exit_code, 0);

  // A header device holding a filesystem: refused without --force, nothing written anywhere.
  const std::string fsdev = loop("fs");
  ASSERT_EQ(RunProgram({"mkfs.ext4", "-q", fsdev}).exit_code, 0);
  MakeRandomImage(dir_ / "d2.img", 8u << 20, 9);
  const std::string d2_sum = Sha256File(dir_ / "d2.img"), fs_sum = Sha256File(fsdev);
  for (const std::vector<std::string>& a : std::vector<std::vector<std::string>>{
           Cat({"encrypt", dir_ / "d2.img", "--header", fsdev, "-d", dir_ / "k1"}, kFast),
           Cat({"format", "-q", dir_ / "d2.img", "--header", fsdev, "-d", dir_ / "k1"}, kFast)}) {
    RunResult r = Diskseal(a);
    EXPECT_EQ(r.exit_code, 1) << a[0] << ": " << r.err;
    EXPECT_NE(r.err.find(fsdev + ": the header device holds a 'ext4' signature"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
    EXPECT_EQ(Sha256File(fsdev), fs_sum);
    EXPECT_EQ(Sha256File(dir_ / "d2.img"), d2_sum);
  }
  RunResult forced = Diskseal(Cat({"encrypt", dir_ / "d2.img", "--header", fsdev, "-d", dir_ / "k1", "--force"}, kFast));
  ASSERT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_EQ(Cryptsetup({"luksDump", fsdev}).exit_code, 0);
  EXPECT_EQ(Cryptsetup({"open", "--test-passphrase", "--header", fsdev, dir_ / "d2.img", "-d", dir_ / "k1"}).exit_code, 0);
}

TEST_F(ParityCliTest, NonsenseHotzoneSizeIsAUsageError) {
  const std::string before = Sha256File(img_);
  struct Bad {
    const char* value;
    const char* says;
  } cases[] = {{"0", "must be positive"},
               {"1000", "not a multiple of 4k of at least 64k"},
               {"4k", "not a multiple of 4k of at least 64k"},
               {"100000", "not a multiple of 4k"},
               {"1000T", "more than half of this machine's memory"},
               {"12q", "not a size: 12q"},
               {"-1", "not a size"}};
  for (const auto& c : cases) {
    for (const char* cmd : {"encrypt", "reencrypt"}) {
      std::vector<std::string> a = {cmd, img_, "--header", dir_ / "hdr", "-d", dir_ / "k1",
                                    "--hotzone-size", c.value};
      RunResult r = Diskseal(a);
      EXPECT_EQ(r.exit_code, 1) << cmd << " " << c.value << ": " << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_NE(r.err.find("--hotzone-size"), std::string::npos) << r.err;
      EXPECT_NE(r.err.find(c.says), std::string::npos) << c.value << ": " << r.err;
    }
  }
  RunResult e = Diskseal({"enable", "--volume-type", "Data", "--hotzone-size", "0",
                          "--state-dir", dir_ / "state"});
  EXPECT_EQ(e.exit_code, 1) << e.err;
  EXPECT_NE(e.err.find("must be positive"), std::string::npos) << e.err;
  EXPECT_EQ(Sha256File(img_), before);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "hdr"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "state"));
}

TEST_F(ParityCliTest, UnknownCommandOrFlagNamesTheNearest) {
  struct Case {
    std::vector<std::string> args;
    const char* says;
  } cases[] = {
      {{"dumpp", "x.img"}, "unknown command 'dumpp' for 'diskseal' (did you mean 'dump'?)"},
      {{"tset-key", "x.img"}, "(did you mean 'test-key'?)"},
      {{"keyslot", "ad", "x.img"}, "unknown command 'ad' for 'diskseal keyslot' (did you mean 'add'?)"},
      {{"dump", "--jsn", "x.img"}, "unknown flag --jsn for 'diskseal dump' (did you mean '--json'?)"},
      {{"format", "x.img", "--pbkdf-force-iteration", "1000"}, "(did you mean '--pbkdf-force-iterations'?)"},
      {{"encrypt", "x.img", "--hotzone", "4M"}, "(did you mean '--hotzone-size'?)"},
  };
  for (const auto& c : cases) {
    RunResult r = Diskseal(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // Nothing near: no guess, but still what is wrong and where to look.
  RunResult far = Diskseal({"frobnicate"});
  EXPECT_EQ(far.exit_code, 1);
  EXPECT_NE(far.err.find("unknown command 'frobnicate' for 'diskseal'; see diskseal --help"), std::string::npos) << far.err;
  RunResult flag = Diskseal({"dump", "--zzzzzzzz", "x.img"});
  EXPECT_EQ(flag.exit_code, 1);
  EXPECT_NE(flag.err.find("unknown flag --zzzzzzzz for 'diskseal dump'; see diskseal dump --help"), std::string::npos) << flag.err;
  // Other usage errors keep CLI11's own words.
  RunResult missing = Diskseal({"dump"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("device is required"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace ds::test
