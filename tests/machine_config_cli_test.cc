// /etc/diskseal/diskseal.conf as the CLI reads it (--config FILE here): it fills the flags of the
// machine commands that the command line did not give, a flag always wins, and a malformed file
// stops the command with the file, the line and the key named (exit 1) before anything runs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "testlib.h"

namespace ds::test {
namespace {

// One record of enable's state (machine/state.cc's shape), enough for `status` to list it.
void WriteRecord(const std::string& state_dir, const std::string& name, const std::string& mountpoint) {
  ASSERT_EQ(Run({"mkdir", "-p", state_dir + "/volumes"}).exit_code, 0);
  nlohmann::ordered_json j = {{"name", name}, {"device", "/dev/diskseal-test-absent"}, {"mountpoint", mountpoint},
                              {"fstype", "ext4"}, {"header", state_dir + "/headers/" + name + ".luks2"},
                              {"key_file", state_dir + "/keys/" + name + ".key"}, {"step", "configured"}};
  WriteFile(state_dir + "/volumes/" + name + ".json", j.dump(2) + "\n");
}

std::vector<std::string> Mountpoints(const RunResult& r) {
  std::vector<std::string> out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.out << r.err;
  if (j.is_discarded()) return out;
  // The machine's own mounted data volumes are listed too (another test's loop mount may be
  // one at this moment): only the recorded ones of this test count.
  for (const auto& v : j["volumes"]) {
    std::string mp = v["mountpoint"].get<std::string>();
    if (mp.rfind("/data-from-", 0) == 0) out.push_back(mp);
  }
  return out;
}

class MachineConfigCli : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteRecord(dir_ / "state-a", "aaaaaaaa-0000-4000-8000-000000000001", "/data-from-file");
    WriteRecord(dir_ / "state-b", "bbbbbbbb-0000-4000-8000-000000000002", "/data-from-flag");
    WriteFile(dir_ / "etc-fstab", "");
  }
  TempDir dir_;
};

TEST_F(MachineConfigCli, FileFillsFlagsAndAFlagWins) {
  const std::string conf = dir_ / "diskseal.conf";
  WriteFile(conf, "# test machine\nstate-dir = " + (dir_ / "state-a") + "\n");
  RunResult from_file = Diskseal({"status", "--json", "--config", conf, "--etc-dir", dir_.path()});
  ASSERT_EQ(from_file.exit_code, 0) << from_file.err;
  EXPECT_EQ(Mountpoints(from_file), std::vector<std::string>{"/data-from-file"});
  RunResult flag = Diskseal({"status", "--json", "--config", conf, "--etc-dir", dir_.path(), "--state-dir", dir_ / "state-b"});
  ASSERT_EQ(flag.exit_code, 0) << flag.err;
  EXPECT_EQ(Mountpoints(flag), std::vector<std::string>{"/data-from-flag"});
}

TEST_F(MachineConfigCli, MalformedFileNamesLineAndKeyAndStopsTheCommand) {
  const std::string conf = dir_ / "bad.conf";
  WriteFile(conf, "state-dir = " + (dir_ / "state-a") + "\n\nvault-tokn-file = /etc/diskseal/t\n");
  RunResult r = Diskseal({"status", "--json", "--config", conf});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err, "diskseal: " + conf + ":3: unknown key 'vault-tokn-file' (did you mean 'vault-token-file'?); known keys: vault, "
                   "vault-token-file, vault-ca, kek, kek-alg, header-dir, state-dir, os-prepared-mapping\n");
  // --json: the error object on stdout, nothing else.
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["error"]["exit_code"], 1);

  WriteFile(conf, "vault = https://127.0.0.1:1\nvault-token-file = relative.token\n");
  r = Diskseal({"doctor", "--config", conf, "--root", dir_.path()});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err, "diskseal: " + conf + ":2: key 'vault-token-file' must be an absolute path, not 'relative.token'\n");
}

TEST_F(MachineConfigCli, NamedFileMustExist) {
  const std::string missing = dir_ / "absent.conf";
  RunResult r = Diskseal({"status", "--config", missing});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("configuration file " + missing), std::string::npos) << r.err;
}

// enable on a configured machine needs no vault flags: the file's vault and token file are used
// (here a token file that does not exist, so the run stops at the vault client, before discovery
// or anything else touches the machine). Without the file the same command asks for --vault.
TEST_F(MachineConfigCli, EnableTakesTheVaultFromTheFile) {
  const std::string conf = dir_ / "diskseal.conf";
  const std::string token = dir_ / "no-such.token";
  WriteFile(conf, "vault = https://127.0.0.1:1\nvault-token-file = " + token + "\nstate-dir = " + (dir_ / "state-a") + "\n");
  RunResult with = Diskseal({"enable", "--volume-type", "Data", "--config", conf});
  EXPECT_NE(with.exit_code, 0);
  EXPECT_NE(with.err.find(token), std::string::npos) << with.err;
  EXPECT_EQ(with.err.find("no --vault given"), std::string::npos) << with.err;

  WriteFile(conf, "state-dir = " + (dir_ / "state-a") + "\n");
  RunResult without = Diskseal({"enable", "--volume-type", "Data", "--config", conf});
  EXPECT_EQ(without.exit_code, 1);
  EXPECT_NE(without.err.find("no --vault given"), std::string::npos) << without.err;
}

// Commands on one device or file do what their flags say: the file is not theirs.
TEST_F(MachineConfigCli, OnlyMachineCommandsTakeTheFile) {
  RunResult r = Diskseal({"format", "--config", dir_ / "x.conf", dir_ / "img"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown flag --config"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ds::test
