// The in-place engine through the CLI, on real files, checked by the real cryptsetup: what we
// encrypt it decrypts to the original bytes; kill -9 at arbitrary instants and running the same
// command again loses nothing; each tool finishes what the other started.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "testlib.h"

namespace ds::test {
namespace {

const std::vector<std::string> kFast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

class EngineCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup-bin missing (scripts/setup installs it)";
    WriteFile(dir_ / "key", "engine test key");
    WriteFile(dir_ / "bad", "wrong");
  }
  std::vector<std::string> Encrypt(const std::string& img, const std::string& hdr,
                                   std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {DISKSEAL_BIN, "encrypt", img, "--header", hdr, "-d", dir_ / "key"};
    a.insert(a.end(), kFast.begin(), kFast.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // cryptsetup decrypts a copy offline; returns its bytes.
  std::string CryptsetupDecrypt(const std::string& img, const std::string& hdr) {
    std::string copy = img + ".cs", hcopy = hdr + ".cs";
    WriteFile(copy, ReadFileOrDie(img));
    WriteFile(hcopy, ReadFileOrDie(hdr));
    RunResult r = RunProgram({"cryptsetup", "reencrypt", "--decrypt", "--force-offline-reencrypt", "-q",
                              "--header", hcopy, "--key-file", dir_ / "key", copy});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return ReadFileOrDie(copy);
  }
  TempDir dir_;
};

TEST_F(EngineCliTest, EncryptInPlaceCryptsetupDecryptsToTheOriginal) {
  for (const char* res : {"checksum", "journal"}) {
    for (const char* sector : {"512", "4096"}) {
      SCOPED_TRACE(std::string(res) + "/" + sector);
      const std::string img = dir_ / "e.img", hdr = dir_ / "e.hdr";
      std::remove(hdr.c_str());
      Bytes plain = MakeRandomImage(img, 24u << 20, 3);
      RunResult r = RunProgram(Encrypt(img, hdr, {"--resilience", res, "--sector-size", sector, "--hotzone-size", "1M"}));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_NE(r.err.find("\"event\":\"done\""), std::string::npos);  // JSON progress off a TTY
      EXPECT_NE(ReadFileOrDie(img).substr(0, 4096), std::string(plain.begin(), plain.begin() + 4096));
      EXPECT_EQ(CryptsetupDecrypt(img, hdr), std::string(plain.begin(), plain.end()));
      nlohmann::json j = nlohmann::json::parse(Diskseal({"dump", "--json", img, "--header", hdr}).out);
      EXPECT_EQ(j["requirements"], nlohmann::json::array());
      EXPECT_EQ(j["segments"].size(), 1u);
      // running it again on a finished volume refuses, changing nothing
      RunResult again = RunProgram(Encrypt(img, hdr));
      EXPECT_EQ(again.exit_code, 5);
      EXPECT_NE(again.err.find("already encrypted"), std::string::npos);
    }
  }
}

TEST_F(EngineCliTest, KillNineAnywhereThenTheSameCommandFinishes) {
  const std::string img = dir_ / "k.img", hdr = dir_ / "k.hdr";
  Bytes plain = MakeRandomImage(img, 64u << 20, 9);
  const std::vector<std::string> cmd = Encrypt(img, hdr, {"--hotzone-size", "512k"});
  int kills = 0;
  for (int ms : {5, 30, 60, 90, 130, 180, 250, 350}) {
    int rc = RunAndSignal(cmd, ms, SIGKILL);
    if (rc == 0) break;  // finished before the kill: nothing more to interrupt
    ++kills;
  }
  RunResult fin = RunProgram(cmd);
  EXPECT_TRUE(fin.exit_code == 0 || fin.exit_code == 5) << fin.err;  // 5: was already finished
  EXPECT_EQ(CryptsetupDecrypt(img, hdr), std::string(plain.begin(), plain.end())) << kills << " kills";
}

TEST_F(EngineCliTest, SigtermStopsAtACommitPointResumable) {
  const std::string img = dir_ / "t.img", hdr = dir_ / "t.hdr";
  Bytes plain = MakeRandomImage(img, 64u << 20, 10);
  // The handlers are installed before anything is written, so whenever the signal lands the run
  // stops at a commit point (9), or had already finished (0).
  int rc = RunAndSignal(Encrypt(img, hdr, {"--hotzone-size", "256k", "--threads", "1"}), 20, SIGTERM, hdr);
  EXPECT_TRUE(rc == 9 || rc == 0) << rc;  // 9: interrupted at a commit point
  if (rc == 9) {
    nlohmann::json j = nlohmann::json::parse(Diskseal({"dump", "--json", img, "--header", hdr}).out);
    EXPECT_EQ(j["requirements"], nlohmann::json::array({"online-reencrypt-v2"}));
    for (auto& s : j["segments"]) EXPECT_EQ(std::find(s["flags"].begin(), s["flags"].end(), "in-reencryption"), s["flags"].end());
  }
  EXPECT_EQ(Diskseal({"resume", img, "--header", hdr, "-d", dir_ / "bad"}).exit_code, rc == 9 ? 2 : 0);
  RunResult r = Diskseal({"resume", img, "--header", hdr, "-d", dir_ / "key"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(CryptsetupDecrypt(img, hdr), std::string(plain.begin(), plain.end()));
}

TEST_F(EngineCliTest, CryptsetupFinishesWhatDisksealStarted) {
  const std::string img = dir_ / "a.img", hdr = dir_ / "a.hdr";
  Bytes plain = MakeRandomImage(img, 64u << 20, 11);
  RunAndSignal(Encrypt(img, hdr, {"--hotzone-size", "512k"}), 30, SIGKILL, hdr);
  ASSERT_TRUE(std::ifstream(hdr)) << "the header was never put in place";
  RunProgram({"cryptsetup", "repair", "-q", "--header", hdr, "--key-file", dir_ / "key", img});
  RunResult r = RunProgram({"cryptsetup", "reencrypt", "--resume-only", "--force-offline-reencrypt", "--header", hdr,
                            "--key-file", dir_ / "key", img});
  EXPECT_TRUE(r.exit_code == 0 || r.err.find("not in progress") != std::string::npos ||
              r.err.find("No LUKS2 reencryption") != std::string::npos) << r.err;
  EXPECT_EQ(CryptsetupDecrypt(img, hdr), std::string(plain.begin(), plain.end()));
}

TEST_F(EngineCliTest, DisksealFinishesWhatCryptsetupStarted) {
  const std::string img = dir_ / "c.img", hdr = dir_ / "c.hdr";
  Bytes plain = MakeRandomImage(img, 64u << 20, 12);
  std::vector<std::string> init = {"cryptsetup", "reencrypt", "--encrypt", "--init-only", "--type", "luks2", "-q",
                                   "--header", hdr, "--key-file", dir_ / "key"};
  init.insert(init.end(), kFast.begin(), kFast.end());
  init.push_back(img);
  ASSERT_EQ(RunProgram(init).exit_code, 0);
  RunAndSignal({"/usr/sbin/cryptsetup", "reencrypt", "--resume-only", "--force-offline-reencrypt", "--hotzone-size", "1M",
                "--header", hdr, "--key-file", dir_ / "key", img}, 150, SIGKILL);
  RunResult r = Diskseal({"resume", img, "--header", hdr, "-d", dir_ / "key"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(CryptsetupDecrypt(img, hdr), std::string(plain.begin(), plain.end()));
}

TEST_F(EngineCliTest, DecryptInPlaceWhatEitherToolEncrypted) {
  for (bool by_cryptsetup : {false, true}) {
    SCOPED_TRACE(by_cryptsetup ? "cryptsetup encrypted" : "diskseal encrypted");
    const std::string img = dir_ / "x.img", hdr = dir_ / "x.hdr";
    std::remove(hdr.c_str());
    Bytes plain = MakeRandomImage(img, 24u << 20, 21);
    if (by_cryptsetup) {
      std::vector<std::string> a = {"cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "-q",
                                    "--force-offline-reencrypt", "--header", hdr, "--key-file", dir_ / "key"};
      a.insert(a.end(), kFast.begin(), kFast.end());
      a.push_back(img);
      ASSERT_EQ(RunProgram(a).exit_code, 0);
    } else {
      ASSERT_EQ(RunProgram(Encrypt(img, hdr)).exit_code, 0);
    }
    EXPECT_EQ(Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "bad"}).exit_code, 2);
    RunResult r = Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "key", "--hotzone-size", "1M"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("holds plaintext again"), std::string::npos);
    EXPECT_EQ(r.out.find("no longer needed"), std::string::npos);  // the header could still serve another device
    EXPECT_EQ(ReadFileOrDie(img), std::string(plain.begin(), plain.end()));
    EXPECT_EQ(Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "key"}).exit_code, 5);  // already plaintext
  }
}

// --resilience-hash is recorded as asked, shown by dump (text and JSON) as cryptsetup's luksDump
// shows it, and the operation finishes to the original bytes; cryptsetup reads the header.
TEST_F(EngineCliTest, ResilienceHashIsRecordedShownAndFinishes) {
  const std::string img = dir_ / "rh.img", hdr = dir_ / "rh.hdr";
  MakeRandomImage(img, 8u << 20, 21);
  const std::string before = Sha256File(img);
  std::vector<std::string> enc = {"encrypt", img, "--header", hdr, "-d", dir_ / "key", "--resilience-hash", "sha1",
                                  "--init-only"};
  enc.insert(enc.end(), kFast.begin(), kFast.end());
  RunResult r = Diskseal(enc);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  RunResult js = Diskseal({"dump", "--json", img, "--header", hdr});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  bool seen = false;
  const nlohmann::json dumped = nlohmann::json::parse(js.out);
  for (const auto& k : dumped["keyslots"])
    if (k["type"] == "reencrypt") {
      EXPECT_EQ(k["area"]["type"], "checksum");
      EXPECT_EQ(k["area"]["hash"], "sha1");
      EXPECT_GT(k["area"]["sector_size"].get<int>(), 0);
      seen = true;
    }
  EXPECT_TRUE(seen) << js.out;
  RunResult txt = Diskseal({"dump", img, "--header", hdr});
  EXPECT_NE(txt.out.find("\tHash:       sha1\n"), std::string::npos) << txt.out;
  RunResult cs = RunProgram({"cryptsetup", "luksDump", hdr});
  ASSERT_EQ(cs.exit_code, 0) << cs.err;
  EXPECT_NE(cs.out.find("sha1"), std::string::npos) << cs.out;
  ASSERT_EQ(Diskseal({"resume", img, "--header", hdr, "-d", dir_ / "key"}).exit_code, 0);
  ASSERT_EQ(Diskseal({"decrypt", img, "--header", hdr, "-d", dir_ / "key", "--resilience-hash", "blake2s-256"}).exit_code,
            0);
  EXPECT_EQ(Sha256File(img), before);
}

TEST_F(EngineCliTest, BadInputChangesNothing) {
  const std::string img = dir_ / "b.img";
  MakeRandomImage(img, 20u << 20, 13);
  const std::string before = Sha256File(img);
  auto expect = [&](const std::vector<std::string>& args, int code, const std::string& msg) {
    RunResult r = Diskseal(args);
    EXPECT_EQ(r.exit_code, code) << r.err;
    EXPECT_NE(r.err.find(msg), std::string::npos) << r.err;
    EXPECT_EQ(Sha256File(img), before);
  };
  expect({"encrypt", img, "-d", dir_ / "key"}, 1, "--header FILE");  // usage, as cryptsetup
  expect({"encrypt", img, "--header", dir_ / "h", "-d", dir_ / "key", "--resilience", "datashift"}, 1, "data shift");
  expect({"encrypt", img, "--header", dir_ / "h", "-d", dir_ / "key", "--resilience", "bogus"}, 1, "--resilience");
  // a checksum hash cryptsetup would not read back: refused before anything is written
  expect({"encrypt", img, "--header", dir_ / "h", "-d", dir_ / "key", "--resilience-hash", "crc32c"}, 1,
         img + ": --resilience-hash must be one of");
  EXPECT_FALSE(std::filesystem::exists(dir_ / "h"));
  WriteFile(dir_ / "garbage.hdr", std::string(70000, 'x'));
  expect({"encrypt", img, "--header", dir_ / "garbage.hdr", "-d", dir_ / "key"}, 5, "refusing to overwrite");
  expect({"encrypt", dir_ / "missing.img", "--header", dir_ / "h2", "-d", dir_ / "key"}, 4, "missing.img");
  WriteFile(dir_ / "odd.img", std::string(1000, 'o'));
  EXPECT_EQ(Diskseal({"encrypt", dir_ / "odd.img", "--header", dir_ / "h3", "-d", dir_ / "key"}).exit_code, 1);
  // an image that is already LUKS
  std::vector<std::string> fmt = {"format", img, "-d", dir_ / "key"};
  fmt.insert(fmt.end(), kFast.begin(), kFast.end());
  ASSERT_EQ(Diskseal(fmt).exit_code, 0);
  const std::string luks = Sha256File(img);
  RunResult r = Diskseal({"encrypt", img, "--header", dir_ / "h4", "-d", dir_ / "key"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_NE(r.err.find("already a LUKS volume"), std::string::npos);
  EXPECT_EQ(Sha256File(img), luks);
}

}  // namespace
}  // namespace ds::test
