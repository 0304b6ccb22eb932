// Encryption with the header at the start of the device (`encrypt --reduce-device-size`) through
// the CLI on real files, checked by the real cryptsetup: it opens and decrypts what diskseal
// encrypted to the original bytes, each tool finishes the other's interrupted run, a filesystem
// that claims the freed tail is refused (ext4, xfs) or shrunk first (--resize-fs, ext4).
// Decryption of such a volume (`decrypt --header NEWFILE`: header exported, data moved back) gives
// back the original bytes, for diskseal's and cryptsetup's volumes, and each tool finishes the
// other's interrupted decryption.
// Runs are interrupted by polling the image or the header file for progress, never after a fixed
// time.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <functional>

#include "testlib.h"

namespace ds::test {
namespace {

const std::vector<std::string> kFast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

// The first `n` bytes of a file (fewer if it is shorter).
std::string Head(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  std::string s(n, '\0');
  f.read(s.data(), std::streamsize(n));
  s.resize(size_t(f.gcount()));
  return s;
}

// A LUKS2 header at the start whose segments show work under way or done (besides the
// backup-final crypt segment, another crypt segment exists).
bool ShiftRunUnderWay(const std::string& img) {
  std::string h = Head(img, 16384);
  if (h.size() < 6 || h.compare(0, 6, std::string("LUKS\xba\xbe", 6)) != 0) return false;
  size_t n = 0;
  for (size_t at = h.find("\"crypt\""); at != std::string::npos; at = h.find("\"crypt\"", at + 1)) ++n;
  return n >= 2;
}

bool FileExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// An exported header (decryption with data shift) whose segments show work done or under way: a
// linear segment besides the backup-final one.
bool DecryptUnderWay(const std::string& hdr) {
  std::string h = Head(hdr, 16384);
  size_t n = 0;
  for (size_t at = h.find("\"linear\""); at != std::string::npos; at = h.find("\"linear\"", at + 1)) ++n;
  return h.find("online-reencrypt-v3") != std::string::npos && n >= 2;
}

class DatashiftCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup-bin missing (scripts/setup installs it)";
    WriteFile(dir_ / "key", "datashift test key");
  }
  std::vector<std::string> Encrypt(const std::string& img, const std::string& reduce,
                                   std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {DISKSEAL_BIN, "encrypt", img, "--reduce-device-size", reduce, "-d", dir_ / "key"};
    a.insert(a.end(), kFast.begin(), kFast.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // cryptsetup decrypts a copy offline (2.6.1 exports the header and moves the data back to
  // offset 0); returns the copy's bytes.
  std::string CryptsetupDecrypt(const std::string& img) {
    const std::string copy = img + ".cs", hdr = img + ".cs.hdr";
    WriteFile(copy, ReadFileOrDie(img));
    std::remove(hdr.c_str());
    RunResult r = RunProgram({"cryptsetup", "reencrypt", "--decrypt", "--force-offline-reencrypt", "-q",
                              "--header", hdr, "--key-file", dir_ / "key", copy});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return ReadFileOrDie(copy);
  }
  // Starts argv and SIGKILLs it as soon as `ready` holds (polled); returns its exit code
  // (128+9 when killed, its own code when it finished first).
  int KillWhen(const std::vector<std::string>& argv, const std::function<bool()>& ready) {
    return RunAndSignalWhen(argv, ready, 0, SIGKILL);
  }
  std::string Plain(const Bytes& b, size_t n) { return std::string(b.begin(), b.begin() + n); }
  std::vector<std::string> Decrypt(const std::string& img, const std::string& hdr) {
    return {DISKSEAL_BIN, "decrypt", img, "--header", hdr, "-d", dir_ / "key"};
  }
  std::vector<std::string> CryptsetupEncrypt(const std::string& img, const std::string& reduce) {
    std::vector<std::string> cs = {"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q",
                                   "--force-offline-reencrypt", "--reduce-device-size", reduce,
                                   "--key-file", dir_ / "key"};
    cs.insert(cs.end(), kFast.begin(), kFast.end());
    cs.push_back(img);
    return cs;
  }
  TempDir dir_;
};

TEST_F(DatashiftCliTest, EncryptWithTheHeaderAtTheStartCryptsetupOpensAndDecrypts) {
  const std::string img = dir_ / "e.img";
  const size_t size = 32u << 20, data = size - (8u << 20);
  Bytes plain = MakeRandomImage(img, size, 31);
  RunResult r = RunProgram(Encrypt(img, "8M"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  RunResult dump = RunProgram({"cryptsetup", "luksDump", img});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("offset: 4194304 [bytes]"), std::string::npos) << dump.out;
  EXPECT_EQ(dump.out.find("online-reencrypt"), std::string::npos) << dump.out;
  EXPECT_EQ(dump.out.find("diskseal-wipe"), std::string::npos) << dump.out;  // the moved copy is wiped
  EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "--key-file", dir_ / "key", img}).exit_code, 0);
  // the plaintext is nowhere in the clear: not at its old place, not in the moved copy's place
  std::string now = ReadFileOrDie(img);
  EXPECT_EQ(now.find(Plain(plain, 4096).substr(0, 64)), std::string::npos);
  EXPECT_EQ(CryptsetupDecrypt(img).substr(0, data), Plain(plain, data));
  RunResult again = RunProgram(Encrypt(img, "8M"));
  EXPECT_EQ(again.exit_code, 5);
  EXPECT_NE(again.err.find("already encrypted"), std::string::npos) << again.err;
}

TEST_F(DatashiftCliTest, CryptsetupFinishesWhatDisksealStarted) {
  const std::string img = dir_ / "a.img";
  const size_t size = 64u << 20, data = size - (1u << 20);
  Bytes plain = MakeRandomImage(img, size, 32);
  int rc = KillWhen(Encrypt(img, "1M"), [&] { return ShiftRunUnderWay(img); });
  if (rc == 0) GTEST_SKIP() << "diskseal finished before it could be interrupted";
  RunResult dump = RunProgram({"cryptsetup", "luksDump", img});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("online-reencrypt-v2"), std::string::npos) << dump.out;
  EXPECT_NE(dump.out.find("datashift"), std::string::npos) << dump.out;
  RunProgram({"cryptsetup", "repair", "-q", "--key-file", dir_ / "key", img});
  RunResult fin = RunProgram({"cryptsetup", "reencrypt", "--resume-only", "--force-offline-reencrypt", "-q",
                              "--key-file", dir_ / "key", img});
  ASSERT_EQ(fin.exit_code, 0) << fin.err;
  EXPECT_EQ(CryptsetupDecrypt(img).substr(0, data), Plain(plain, data));
}

TEST_F(DatashiftCliTest, DisksealFinishesWhatCryptsetupStarted) {
  for (bool same_command : {true, false}) {
    SCOPED_TRACE(same_command ? "encrypt again" : "resume");
    const std::string img = dir_ / "c.img";
    const size_t size = 64u << 20, data = size - (1u << 20);
    Bytes plain = MakeRandomImage(img, size, 33);
    std::vector<std::string> cs = {"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q",
                                   "--force-offline-reencrypt", "--reduce-device-size", "1M",
                                   "--key-file", dir_ / "key"};
    cs.insert(cs.end(), kFast.begin(), kFast.end());
    cs.push_back(img);
    int rc = KillWhen(cs, [&] { return ShiftRunUnderWay(img); });
    if (rc == 0) GTEST_SKIP() << "cryptsetup finished before it could be interrupted";
    RunResult r = same_command ? RunProgram(Encrypt(img, "1M"))
                               : Diskseal({"resume", img, "-d", dir_ / "key"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(CryptsetupDecrypt(img).substr(0, data), Plain(plain, data));
  }
}

TEST_F(DatashiftCliTest, KillNineThenTheSameCommandFinishes) {
  const std::string img = dir_ / "k.img";
  const size_t size = 64u << 20, data = size - (1u << 20);
  Bytes plain = MakeRandomImage(img, size, 34);
  // first kill: as soon as the header is at the start; then as soon as more work is recorded
  int rc = KillWhen(Encrypt(img, "1M"), [&] { return Head(img, 6) == std::string("LUKS\xba\xbe", 6); });
  for (int i = 0; i < 3 && rc != 0; ++i) {
    const std::string before = Head(img, 16384);
    rc = KillWhen(Encrypt(img, "1M"), [&] { return Head(img, 16384) != before; });
  }
  RunResult fin = RunProgram(Encrypt(img, "1M"));
  EXPECT_TRUE(fin.exit_code == 0 || fin.exit_code == 5) << fin.err;
  EXPECT_EQ(CryptsetupDecrypt(img).substr(0, data), Plain(plain, data));
}

TEST_F(DatashiftCliTest, DecryptWithTheHeaderAtTheStartGivesBackTheOriginalBytes) {
  for (bool by_cryptsetup : {false, true}) {
    SCOPED_TRACE(by_cryptsetup ? "encrypted by cryptsetup" : "encrypted by diskseal");
    const std::string img = dir_ / "d.img", hdr = dir_ / "d.hdr";
    std::remove(hdr.c_str());
    const size_t size = 32u << 20, data = size - (8u << 20);
    Bytes plain = MakeRandomImage(img, size, 36);
    RunResult e = RunProgram(by_cryptsetup ? CryptsetupEncrypt(img, "8M") : Encrypt(img, "8M"));
    ASSERT_EQ(e.exit_code, 0) << e.err;
    RunResult r = RunProgram(Decrypt(img, hdr));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(Head(img, data), Plain(plain, data));
    EXPECT_FALSE(FileExists(hdr + ".diskseal-new"));
    RunResult dump = RunProgram({"cryptsetup", "luksDump", "--header", hdr, img});
    ASSERT_EQ(dump.exit_code, 0) << dump.err;
    EXPECT_EQ(dump.out.find("online-reencrypt"), std::string::npos) << dump.out;
    RunResult again = RunProgram(Decrypt(img, hdr));
    EXPECT_EQ(again.exit_code, 5) << again.err;  // already plaintext
    EXPECT_EQ(Head(img, data), Plain(plain, data));
  }
}

TEST_F(DatashiftCliTest, DecryptRefusesBadInputAndLeavesTheDeviceUntouched) {
  const std::string img = dir_ / "b.img", hdr = dir_ / "b.hdr";
  MakeRandomImage(img, 32u << 20, 37);
  ASSERT_EQ(RunProgram(Encrypt(img, "8M")).exit_code, 0);
  const std::string before = Sha256File(img);
  RunResult no_hdr = Diskseal({"decrypt", img, "-d", dir_ / "key"});
  EXPECT_EQ(no_hdr.exit_code, 1) << no_hdr.err;
  EXPECT_NE(no_hdr.err.find("--header"), std::string::npos) << no_hdr.err;
  WriteFile(dir_ / "bad", "not the key");
  RunResult bad = Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "bad"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_FALSE(FileExists(hdr));
  EXPECT_FALSE(FileExists(hdr + ".diskseal-new"));
  RunResult hash = Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "key", "--resilience-hash", "md5"});
  EXPECT_EQ(hash.exit_code, 1) << hash.err;
  EXPECT_NE(hash.err.find("--resilience-hash does not apply"), std::string::npos) << hash.err;
  EXPECT_FALSE(FileExists(hdr));
  WriteFile(hdr, "something precious");
  RunResult exists = RunProgram(Decrypt(img, hdr));
  EXPECT_EQ(exists.exit_code, 5) << exists.err;
  EXPECT_NE(exists.err.find("refusing to overwrite"), std::string::npos) << exists.err;
  EXPECT_EQ(ReadFileOrDie(hdr), "something precious");
  EXPECT_EQ(Sha256File(img), before);
}

TEST_F(DatashiftCliTest, CryptsetupFinishesTheDecryptionDisksealStarted) {
  const std::string img = dir_ / "ds.img", hdr = dir_ / "ds.hdr";
  const size_t size = 64u << 20, data = size - (1u << 20);
  Bytes plain = MakeRandomImage(img, size, 38);
  ASSERT_EQ(RunProgram(Encrypt(img, "1M")).exit_code, 0);
  int rc = KillWhen(Decrypt(img, hdr), [&] { return DecryptUnderWay(hdr); });
  if (rc == 0) GTEST_SKIP() << "diskseal finished before it could be interrupted";
  RunResult dump = RunProgram({"cryptsetup", "luksDump", "--header", hdr, img});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("online-reencrypt-v3"), std::string::npos) << dump.out;
  RunProgram({"cryptsetup", "repair", "-q", "--header", hdr, "--key-file", dir_ / "key", img});
  RunResult fin = RunProgram({"cryptsetup", "reencrypt", "--resume-only", "--force-offline-reencrypt", "-q",
                              "--header", hdr, "--key-file", dir_ / "key", img});
  ASSERT_EQ(fin.exit_code, 0) << fin.err;
  EXPECT_EQ(Head(img, data), Plain(plain, data));
}

TEST_F(DatashiftCliTest, DisksealFinishesTheDecryptionCryptsetupStarted) {
  for (bool same_command : {true, false}) {
    SCOPED_TRACE(same_command ? "decrypt again" : "resume");
    const std::string img = dir_ / "cd.img", hdr = dir_ / "cd.hdr";
    std::remove(hdr.c_str());
    const size_t size = 64u << 20, data = size - (1u << 20);
    Bytes plain = MakeRandomImage(img, size, 39);
    ASSERT_EQ(RunProgram(CryptsetupEncrypt(img, "1M")).exit_code, 0);
    int rc = KillWhen({"cryptsetup", "reencrypt", "--decrypt", "--force-offline-reencrypt", "-q", "--header", hdr,
                       "--key-file", dir_ / "key", img},
                      [&] { return DecryptUnderWay(hdr); });
    if (rc == 0) GTEST_SKIP() << "cryptsetup finished before it could be interrupted";
    RunResult r = same_command ? RunProgram(Decrypt(img, hdr))
                               : Diskseal({"resume", img, "--header", hdr, "-d", dir_ / "key"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(Head(img, data), Plain(plain, data));
  }
}

TEST_F(DatashiftCliTest, DecryptKillNineThenTheSameCommandFinishes) {
  const std::string img = dir_ / "dk.img", hdr = dir_ / "dk.hdr";
  const size_t size = 64u << 20, data = size - (1u << 20);
  Bytes plain = MakeRandomImage(img, size, 40);
  ASSERT_EQ(RunProgram(Encrypt(img, "1M")).exit_code, 0);
  // first kill: while the exported header is still a temp file (the front copy under way), then
  // as soon as the header file exists, then as soon as more work is recorded
  int rc = KillWhen(Decrypt(img, hdr), [&] { return FileExists(hdr + ".diskseal-new"); });
  if (rc != 0) rc = KillWhen(Decrypt(img, hdr), [&] { return FileExists(hdr); });
  for (int i = 0; i < 3 && rc != 0; ++i) {
    const std::string before = Head(hdr, 16384);
    rc = KillWhen(Decrypt(img, hdr), [&] { return Head(hdr, 16384) != before; });
  }
  RunResult fin = RunProgram(Decrypt(img, hdr));
  EXPECT_TRUE(fin.exit_code == 0 || fin.exit_code == 5) << fin.err;
  EXPECT_EQ(Head(img, data), Plain(plain, data));
}

// A run cut during the front copy leaves only NEWFILE.diskseal-new (complete, synced) and a torn
// front; the same command redoes the copy from its untouched source, renames, finishes. The state
// is made with cryptsetup's --init-only (its header after the copy) and a front torn by hand.
TEST_F(DatashiftCliTest, DecryptFinishesAnInterruptedHeaderExport) {
  const std::string img = dir_ / "t.img", hdr = dir_ / "t.hdr";
  const size_t size = 32u << 20, data = size - (8u << 20);
  Bytes plain = MakeRandomImage(img, size, 41);
  ASSERT_EQ(RunProgram(Encrypt(img, "8M")).exit_code, 0);
  RunResult init = RunProgram({"cryptsetup", "reencrypt", "--decrypt", "--init-only", "--force-offline-reencrypt", "-q",
                               "--header", hdr + ".diskseal-new", "--key-file", dir_ / "key", img});
  ASSERT_EQ(init.exit_code, 0) << init.err;
  {
    std::fstream f(img, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096);
    std::string zeros(1u << 20, '\0');
    f.write(zeros.data(), std::streamsize(zeros.size()));
  }
  RunResult r = RunProgram(Decrypt(img, hdr));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("finishing the header export"), std::string::npos) << r.err;
  EXPECT_FALSE(FileExists(hdr + ".diskseal-new"));
  EXPECT_EQ(Head(img, data), Plain(plain, data));
}

TEST_F(DatashiftCliTest, RefusesWhenAFilesystemClaimsTheTail) {
  struct Case {
    std::string mkfs;
    std::vector<std::string> argv;
    size_t size;
    std::string name;
  };
  const std::string img = dir_ / "fs.img";
  std::vector<Case> cases = {{"mkfs.ext4", {"mkfs.ext4", "-q", "-F", img}, 64u << 20, "ext4"},
                             {"mkfs.xfs", {"mkfs.xfs", "-q", "-f", img}, 320u << 20, "xfs"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    if (!HaveProgram(c.mkfs)) continue;
    std::remove(img.c_str());
    { std::ofstream(img, std::ios::binary).close(); }
    ASSERT_EQ(truncate(img.c_str(), off_t(c.size)), 0);
    RunResult mk = RunProgram(c.argv);
    ASSERT_EQ(mk.exit_code, 0) << mk.err;
    const std::string before = Sha256File(img);
    RunResult r = RunProgram(Encrypt(img, "8M"));
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("the " + c.name + " filesystem on it is " + std::to_string(c.size) + " bytes"),
              std::string::npos) << r.err;
    EXPECT_EQ(Sha256File(img), before);
  }
}

// ---- reencryption (a new volume key) of a volume whose header is at the start ----

// Segments of a header at the start that show a reencryption under way: besides the old segment
// and the two backups, a new or a hot one exists (four "crypt" segments at least).
bool ReencryptUnderWay(const std::string& img) {
  std::string h = Head(img, 16384);
  size_t n = 0;
  for (size_t at = h.find("\"crypt\""); at != std::string::npos; at = h.find("\"crypt\"", at + 1)) ++n;
  return h.find("online-reencrypt") != std::string::npos && n >= 4;
}

// The plaintext of an attached volume as diskseal reads it (export: the reader that the interop
// tests check against cryptsetup byte for byte). Used after a reencryption because cryptsetup
// 2.6.1 refuses to decrypt-with-datashift any volume whose key was replaced, even by its own
// `reencrypt` ("Failed to initialize LUKS2 reencryption in metadata"; a volume with a second
// keyslot on the same key decrypts): so cryptsetup's word here is luksDump, its unlock and its
// finishing of our interrupted runs.
std::string ExportPlain(const std::string& img, const std::string& key) {
  RunResult r = Diskseal({"export", img, "-d", key, "-o", "-"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

TEST_F(DatashiftCliTest, ReencryptWithTheHeaderAtTheStartKeepsTheBytesAndCryptsetupAgrees) {
  for (const char* res : {"checksum", "journal"}) {
    SCOPED_TRACE(res);
    const std::string img = dir_ / "r.img";
    const size_t size = 32u << 20, data = size - (4u << 20);
    Bytes plain = MakeRandomImage(img, size, 40);
    ASSERT_EQ(RunProgram(CryptsetupEncrypt(img, "4M")).exit_code, 0);
    const std::string before = Head(img, 16384);
    std::vector<std::string> re = {DISKSEAL_BIN, "reencrypt", img, "-d", dir_ / "key", "--resilience", res,
                                   "--sector-size", "4096", "--hotzone-size", "1M"};
    re.insert(re.end(), kFast.begin(), kFast.end());
    RunResult r = RunProgram(re);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    RunResult dump = RunProgram({"cryptsetup", "luksDump", img});
    ASSERT_EQ(dump.exit_code, 0) << dump.err;
    EXPECT_EQ(dump.out.find("online-reencrypt"), std::string::npos) << dump.out;
    EXPECT_NE(dump.out.find("sector: 4096"), std::string::npos) << dump.out;
    EXPECT_NE(Head(img, 16384), before);
    // cryptsetup unlocks the new keyslot and its digest accepts the key behind it
    EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "--key-file", dir_ / "key", img}).exit_code, 0);
    EXPECT_EQ(ExportPlain(img, dir_ / "key").substr(0, data), Plain(plain, data));
  }
}

TEST_F(DatashiftCliTest, ReencryptKilledEitherToolFinishesIt) {
  for (bool diskseal_first : {true, false}) {
    SCOPED_TRACE(diskseal_first ? "diskseal killed, cryptsetup resumes" : "cryptsetup killed, diskseal resumes");
    const std::string img = dir_ / "rk.img";
    const size_t size = 64u << 20, data = size - (4u << 20);
    Bytes plain = MakeRandomImage(img, size, 41);
    ASSERT_EQ(RunProgram(CryptsetupEncrypt(img, "4M")).exit_code, 0);
    std::vector<std::string> cmd;
    if (diskseal_first) {
      cmd = {DISKSEAL_BIN, "reencrypt", img, "-d", dir_ / "key", "--hotzone-size", "512k", "--threads", "1"};
    } else {
      cmd = {"/usr/sbin/cryptsetup", "reencrypt", "--force-offline-reencrypt", "-q", "--hotzone-size", "1M",
             "--key-file", dir_ / "key"};
    }
    cmd.insert(cmd.end(), kFast.begin(), kFast.end());
    if (!diskseal_first) cmd.push_back(img);
    int rc = KillWhen(cmd, [&] { return ReencryptUnderWay(img); });
    if (rc == 0) GTEST_SKIP() << "finished before it could be interrupted";
    // cryptsetup wants a crash-interrupted hotzone recovered by `repair` before it resumes.
    if (diskseal_first) RunProgram({"cryptsetup", "repair", "-q", "--key-file", dir_ / "key", img});
    RunResult fin = diskseal_first
                        ? RunProgram({"cryptsetup", "reencrypt", "--resume-only", "--force-offline-reencrypt", "-q",
                                      "--key-file", dir_ / "key", img})
                        : Diskseal({"resume", img, "-d", dir_ / "key"});
    ASSERT_EQ(fin.exit_code, 0) << fin.err;
    RunResult dump = RunProgram({"cryptsetup", "luksDump", img});
    EXPECT_EQ(dump.out.find("online-reencrypt"), std::string::npos) << dump.out;
    EXPECT_EQ(ExportPlain(img, dir_ / "key").substr(0, data), Plain(plain, data));
  }
}

TEST_F(DatashiftCliTest, ResizeFsShrinksExt4AndItsFilesSurvive) {
  for (const char* p : {"mkfs.ext4", "debugfs", "e2fsck", "resize2fs"})
    if (!HaveProgram(p)) GTEST_SKIP() << p << " missing";
  const std::string img = dir_ / "x.img";
  const size_t size = 64u << 20;
  { std::ofstream(img, std::ios::binary).close(); }
  ASSERT_EQ(truncate(img.c_str(), off_t(size)), 0);
  ASSERT_EQ(RunProgram({"mkfs.ext4", "-q", "-F", "-b", "4096", img}).exit_code, 0);
  Bytes content = RandomData(3u << 20, 35);
  WriteFile(dir_ / "payload", std::string(content.begin(), content.end()));
  RunResult w = RunProgram({"debugfs", "-w", "-R", "write " + (dir_ / "payload") + " payload", img});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  RunResult r = RunProgram(Encrypt(img, "8M", {"--resize-fs"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string dec = dir_ / "dec.img";
  WriteFile(dec, CryptsetupDecrypt(img));
  RunResult fsck = RunProgram({"e2fsck", "-f", "-n", dec});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
  RunResult cat = RunProgram({"debugfs", "-R", "cat payload", dec});
  EXPECT_EQ(cat.out, std::string(content.begin(), content.end()));
  // the filesystem now ends where the data does
  RunResult dumpe2 = RunProgram({"dumpe2fs", "-h", dec});
  EXPECT_NE(dumpe2.out.find("Block count:              " + std::to_string((size - (8u << 20)) / 4096)),
            std::string::npos) << dumpe2.out;
}

}  // namespace
}  // namespace ds::test
