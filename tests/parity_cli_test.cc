// Where cryptsetup users expect diskseal to behave as cryptsetup does, through the CLI: a header
// with a keyslot diskseal cannot use stays readable (both tools run on the same image), nonsense
// sizes are usage errors, and a mistyped command or flag is named with the nearest one.
#include <gtest/gtest.h>

#include <algorithm>
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
