// The CLI as users and scripts meet it: exit codes, one-line errors naming the device and rule,
// --json output, keys from files and stdin, and the device untouched on every error path.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "luks2/volume.h"
#include "testlib.h"

namespace ds::test {
namespace {

using Json = nlohmann::json;

const std::vector<std::string> kFast = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    img_ = dir_ / "disk.img";
    MakeRandomImage(img_, 20u << 20, 5);
    WriteFile(dir_ / "key", "pass phrase");
    WriteFile(dir_ / "bad", "nope");
  }
  void Format(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a = {"format", img_, "-d", dir_ / "key"};
    a.insert(a.end(), kFast.begin(), kFast.end());
    a.insert(a.end(), extra.begin(), extra.end());
    RunResult r = Diskseal(a);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // Runs a command expected to fail; checks the exit code, that stderr is one line naming
  // `must_mention`, and that the image did not change.
  void ExpectFailure(const std::vector<std::string>& args, int code, const std::string& must_mention,
                     const std::string& stdin_data = "") {
    const std::string before = Sha256File(img_);
    RunResult r = Diskseal(args, stdin_data);
    EXPECT_EQ(r.exit_code, code) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(must_mention), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(Sha256File(img_), before) << args[0] << " changed the device on an error path";
  }
  TempDir dir_;
  std::string img_;
};

TEST_F(CliTest, HelpListsTheCommandTable) {
  RunResult r = Diskseal({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"format", "dump", "test-key", "keyslot", "token", "header", "repair", "export", "import"})
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
  EXPECT_EQ(Diskseal({"format", "--no-such-flag"}).exit_code, 1);
  EXPECT_EQ(Diskseal({}).exit_code, 1);
}

TEST_F(CliTest, KeysFromStdinLineAndKeyFileDash) {
  std::vector<std::string> a = {"format", img_};
  a.insert(a.end(), kFast.begin(), kFast.end());
  ASSERT_EQ(Diskseal(a, "pass phrase\n").exit_code, 0);  // one line, newline stripped
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "key"}).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_}, "pass phrase\n").exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", "-"}, "pass phrase").exit_code, 0);  // whole stdin
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", "-"}, "pass phrase\n").exit_code, 2);  // newline is key data
}

TEST_F(CliTest, ErrorsAreOneLineWithDocumentedCodes) {
  ExpectFailure({"dump", img_}, 4, "not a LUKS2 device");
  ExpectFailure({"dump", dir_ / "missing.img"}, 4, "missing.img");
  ExpectFailure({"format", img_, "-d", dir_ / "key", "--cipher", "twofish-xts-plain64"}, 7, "twofish");
  ExpectFailure({"format", img_, "-d", dir_ / "key", "--key-size", "384"}, 1, "384");
  ExpectFailure({"format", img_, "-d", dir_ / "key", "--luks2-metadata-size", "8k"}, 1, "metadata-size");
  ExpectFailure({"format", img_, "-d", dir_ / "nokey"}, 4, "nokey");
  Format();
  ExpectFailure({"test-key", img_, "-d", dir_ / "bad"}, 2, img_ + ": no key available");
  ExpectFailure({"format", img_, "-d", dir_ / "key"}, 5, "already holds a LUKS header");
  ExpectFailure({"keyslot", "remove", img_, "0"}, 1, "last one");
  ExpectFailure({"keyslot", "remove", img_, "9"}, 4, "keyslot 9 does not exist");
  ExpectFailure({"token", "export", img_, "--token-id", "3"}, 4, "token 3 does not exist");
  ExpectFailure({"export", img_, "-d", dir_ / "bad", "-o", dir_ / "out"}, 2, "no key available");
  RunResult j = Diskseal({"test-key", "--json", img_, "-d", dir_ / "bad"});
  EXPECT_EQ(j.exit_code, 2);
  Json e = Json::parse(j.out);
  EXPECT_EQ(e["error"]["code"], "permission-denied");
  EXPECT_EQ(e["error"]["exit_code"], 2);
}

TEST_F(CliTest, DumpJsonSchema) {
  Format({"--label", "mylabel", "--subsystem", "sub", "--uuid", "12345678-1234-4234-8234-123456789abc"});
  RunResult r = Diskseal({"dump", "--json", img_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["schema_version"], 1);
  EXPECT_EQ(j["uuid"], "12345678-1234-4234-8234-123456789abc");
  EXPECT_EQ(j["label"], "mylabel");
  EXPECT_EQ(j["subsystem"], "sub");
  EXPECT_EQ(j["metadata_size"], 16384);
  EXPECT_EQ(j["keyslots_size"], 16744448);
  EXPECT_EQ(j["requirements"], Json::array());
  EXPECT_EQ(j["segments"][0]["type"], "crypt");
  EXPECT_EQ(j["segments"][0]["size"], "dynamic");
  EXPECT_EQ(j["keyslots"][0]["kdf"]["type"], "pbkdf2");
  EXPECT_EQ(j["keyslots"][0]["kdf"]["iterations"], 1000);
  EXPECT_EQ(j["keyslots"][0]["area"]["size"], 258048);
  EXPECT_EQ(j["keyslots"][0]["digest"], 0);
  EXPECT_EQ(j["digests"][0]["segments"], Json::array({0}));
  EXPECT_EQ(j["header_copies"]["primary"]["status"], "ok");
  RunResult ls = Diskseal({"keyslot", "list", "--json", img_});
  EXPECT_EQ(Json::parse(ls.out), j["keyslots"]);
}

// docs/json-schemas.md "benchmark --json": every part measured, checksums in --resilience-hash's
// exact spelling.
TEST_F(CliTest, BenchmarkJsonSchema) {
  RunResult r = Diskseal({"benchmark", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Json j = Json::parse(r.out);
  for (const char* h : {"sha1", "sha256", "sha512"}) EXPECT_GT(j["pbkdf2"][h].get<uint64_t>(), 0u) << h;
  ASSERT_EQ(j["ciphers"].size(), 3u);
  for (const auto& c : j["ciphers"]) EXPECT_GT(c["encrypt_mib_s"].get<int>(), 0) << c.dump();
  ASSERT_GE(j["checksums"].size(), 3u);
  for (const auto& c : j["checksums"]) {
    EXPECT_GT(c["mib_s"].get<int>(), 0) << c.dump();
    RunResult bad = Diskseal({"encrypt", dir_ / "none.img", "--header", dir_ / "none.hdr", "--resilience-hash",
                              c["hash"].get<std::string>() + "x"});
    EXPECT_EQ(bad.exit_code, 1) << bad.err;  // the spelling is exact
  }
}

TEST_F(CliTest, DamagedCopyIsReportedThenRepaired) {
  Format();
  {
    std::string data = ReadFileOrDie(img_);
    data[16384 + 4096 + 10] ^= 0x20;  // the secondary's JSON
    WriteFile(img_, data);
  }
  const std::string damaged = Sha256File(img_);
  Json j = Json::parse(Diskseal({"dump", "--json", img_}).out);
  EXPECT_EQ(j["header_copies"]["secondary"]["status"], "damaged");
  EXPECT_NE(j["header_copies"]["secondary"]["error"].get<std::string>().find("checksum"), std::string::npos);
  // reading commands never repair
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "key"}).exit_code, 0);
  EXPECT_EQ(Sha256File(img_), damaged);
  RunResult r = Diskseal({"repair", img_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("secondary header copy rewritten"), std::string::npos);
  j = Json::parse(Diskseal({"dump", "--json", img_}).out);
  EXPECT_EQ(j["header_copies"]["secondary"]["status"], "ok");
  EXPECT_NE(Diskseal({"repair", img_}).out.find("nothing to repair"), std::string::npos);
  if (HaveProgram("cryptsetup")) {
    EXPECT_EQ(RunProgram({"cryptsetup", "open", "--test-passphrase", "--key-file", dir_ / "key", img_}).exit_code, 0);
  }
}

TEST_F(CliTest, HeaderBackupAndRestore) {
  Format();
  const std::string bk = dir_ / "hdr.bak";
  ASSERT_EQ(Diskseal({"header", "backup", img_, "--header-backup-file", bk}).exit_code, 0);
  EXPECT_EQ(ReadFileOrDie(bk).size(), 16u << 20);
  ExpectFailure({"header", "backup", img_, "--header-backup-file", bk}, 1, "already exists");  // cryptsetup: 1 too
  {
    std::string data = ReadFileOrDie(img_);
    std::memset(data.data(), 0, 65536);  // both copies gone
    WriteFile(img_, data);
  }
  ExpectFailure({"test-key", img_, "-d", dir_ / "key"}, 4, "not a LUKS2 device");
  ExpectFailure({"header", "restore", img_, "--header-backup-file", bk}, 5, "--force");
  ExpectFailure({"header", "restore", img_, "--header-backup-file", dir_ / "key"}, 4, "not a usable LUKS2 header backup");
  ASSERT_EQ(Diskseal({"header", "restore", img_, "--header-backup-file", bk, "--force"}).exit_code, 0);
  EXPECT_EQ(Diskseal({"test-key", img_, "-d", dir_ / "key"}).exit_code, 0);
  // restoring the same volume's backup needs no --force
  EXPECT_EQ(Diskseal({"header", "restore", img_, "--header-backup-file", bk}).exit_code, 0);
}

TEST_F(CliTest, UnknownMandatoryRequirementBlocksUnlockOnly) {
  Format();
  {  // a header from a future version: edited through the library, written with valid checksums
    auto v = luks2::Volume::Load(*PosixEnv(), img_, "", true);
    ASSERT_TRUE(v.ok());
    v->mutable_metadata().json["config"]["requirements"] = {{"mandatory", {"future-feature-x"}}};
    ASSERT_TRUE(v->Commit().ok());
  }
  RunResult d = Diskseal({"dump", "--json", img_});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(Json::parse(d.out)["requirements"], Json::array({"future-feature-x"}));
  ExpectFailure({"test-key", img_, "-d", dir_ / "key"}, 7, "'future-feature-x'");
  ExpectFailure({"export", img_, "-d", dir_ / "key", "-o", dir_ / "o"}, 7, "future-feature-x");
  ExpectFailure({"keyslot", "remove", img_, "0", "--force"}, 7, "future-feature-x");
}

TEST_F(CliTest, ImportExportRoundTripAndExportNeverWrites) {
  Format();
  Bytes plain = RandomData(1u << 20, 77);
  WriteFile(dir_ / "in", std::string(plain.begin(), plain.end()));
  RunResult imp = Diskseal({"import", img_, "-d", dir_ / "key", "--input", dir_ / "in", "--progress-json"});
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  EXPECT_NE(imp.err.find("\"event\":\"done\""), std::string::npos);
  const std::string before = Sha256File(img_);
  ASSERT_EQ(Diskseal({"export", img_, "-d", dir_ / "key", "-o", dir_ / "out"}).exit_code, 0);
  EXPECT_EQ(Sha256File(img_), before);
  std::string out = ReadFileOrDie(dir_ / "out");
  EXPECT_EQ(out.size(), (20u << 20) - (16u << 20));
  EXPECT_EQ(out.substr(0, plain.size()), std::string(plain.begin(), plain.end()));
  RunResult so = Diskseal({"export", img_, "-d", dir_ / "key", "-o", "-"});
  EXPECT_EQ(so.out, out);
  WriteFile(dir_ / "big", std::string(5u << 20, 'x'));
  ExpectFailure({"import", img_, "-d", dir_ / "key", "--input", dir_ / "big"}, 1, "do not fit");
}

TEST_F(CliTest, TokenImportFromStdinExportExact) {
  Format();
  const std::string tok = R"({"type":"clevis","keyslots":["0"],"jwe":{"protected":"e30","iv":"","ciphertext":"","tag":""}})";
  RunResult r = Diskseal({"token", "import", img_, "--json-file", "-", "--json"}, tok);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json::parse(r.out)["token"], 0);
  EXPECT_EQ(Diskseal({"token", "export", img_, "--token-id", "0"}).out, tok + "\n");
  ExpectFailure({"token", "import", img_, "--json-file", "-"}, 1, "not valid JSON", "{broken");
  ExpectFailure({"token", "import", img_, "--json-file", "-"}, 1, "reserved", R"({"type":"luks2-x","keyslots":[]})");
  EXPECT_EQ(Diskseal({"token", "remove", img_, "--token-id", "0"}).exit_code, 0);
}

}  // namespace
}  // namespace ds::test
