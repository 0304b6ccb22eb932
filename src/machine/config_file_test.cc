// The machine configuration file (/etc/diskseal/diskseal.conf): what it accepts, and that every
// malformed line is refused with the file, the line and the key named.
#include <gtest/gtest.h>

#include "machine/config_file.h"
#include "testlib.h"

namespace ds::machine {
namespace {

std::string Error(std::string_view text) {
  auto r = ParseMachineConfig(text, "/etc/diskseal/diskseal.conf");
  EXPECT_FALSE(r.ok()) << text;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  return r.status().message();
}

TEST(MachineConfigTest, ReadsEveryKeyWithCommentsAndBlanks) {
  auto r = ParseMachineConfig(
      "# diskseal machine defaults\n"
      "\n"
      "vault = https://vault.example:8443\n"
      "  vault-token-file=/etc/diskseal/host.token  \n"
      "vault-ca =\t/etc/diskseal/vault-ca.pem\r\n"
      "   # indented comment\n"
      "kek = fleet-kek\n"
      "kek-alg = RSA-OAEP-256\n"
      "header-dir = /var/lib/diskseal/headers#1\n"
      "state-dir = /srv/diskseal state\n"
      "os-prepared-mapping = no",
      "f.conf");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->entries.size(), 8u);
  EXPECT_EQ(r->Find("os-prepared-mapping")->value, "no");
  EXPECT_EQ(r->Find("vault")->value, "https://vault.example:8443");
  EXPECT_EQ(r->Find("vault")->line, 3);
  EXPECT_EQ(r->Find("vault-token-file")->value, "/etc/diskseal/host.token");
  EXPECT_EQ(r->Find("vault-ca")->value, "/etc/diskseal/vault-ca.pem");
  EXPECT_EQ(r->Find("kek")->value, "fleet-kek");
  EXPECT_EQ(r->Find("kek-alg")->value, "RSA-OAEP-256");
  EXPECT_EQ(r->Find("header-dir")->value, "/var/lib/diskseal/headers#1");
  EXPECT_EQ(r->Find("state-dir")->value, "/srv/diskseal state");
  EXPECT_EQ(r->Find("state-dir")->line, 10);
  EXPECT_EQ(r->Find("absent"), nullptr);
}

TEST(MachineConfigTest, EmptyAndCommentOnlyFilesSetNothing) {
  for (const char* text : {"", "\n\n", "# vault = https://x\n#kek = k\n"}) {
    auto r = ParseMachineConfig(text, "f");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->entries.empty());
  }
}

TEST(MachineConfigTest, MalformedLinesNameTheFileLineAndKey) {
  EXPECT_EQ(Error("vault = https://v:1\nvualt = https://v:2\n"),
            "/etc/diskseal/diskseal.conf:2: unknown key 'vualt' (did you mean 'vault'?); known keys: vault, "
            "vault-token-file, vault-ca, kek, kek-alg, header-dir, state-dir, os-prepared-mapping");
  EXPECT_EQ(Error("# c\n\nvault https://v:1\n"),
            "/etc/diskseal/diskseal.conf:3: expected 'key = value', got 'vault https://v:1'");
  EXPECT_EQ(Error("kek =   \n"), "/etc/diskseal/diskseal.conf:1: key 'kek' has no value");
  EXPECT_EQ(Error("= x\n"), "/etc/diskseal/diskseal.conf:1: a value without a key: '= x'");
  EXPECT_EQ(Error("kek = a\nkek = b\n"), "/etc/diskseal/diskseal.conf:2: key 'kek' is set again (first on line 1)");
  EXPECT_EQ(Error("vault-token-file = host.token\n"),
            "/etc/diskseal/diskseal.conf:1: key 'vault-token-file' must be an absolute path, not 'host.token'");
  EXPECT_EQ(Error("\n\n\n\nvault = http://v:8443\n"),
            "/etc/diskseal/diskseal.conf:5: key 'vault' must be an https:// URL, not 'http://v:8443'");
  EXPECT_EQ(Error("kek-alg = RSA1_5\n"),
            "/etc/diskseal/diskseal.conf:1: key 'kek-alg' must be RSA-OAEP, RSA-OAEP-256 or A256KW, not 'RSA1_5'");
  EXPECT_EQ(Error("os-prepared-mapping = off\n"),
            "/etc/diskseal/diskseal.conf:1: key 'os-prepared-mapping' must be yes or no, not 'off'");
  // Far from every key: no suggestion.
  EXPECT_EQ(Error("listen = 0.0.0.0\n").find("did you mean"), std::string::npos);
}

TEST(MachineConfigTest, LoadDistinguishesTheDefaultFileFromANamedOne) {
  ds::test::TempDir tmp;
  Env& env = *PosixEnv();
  const std::string missing = tmp / "absent.conf";
  auto none = LoadMachineConfig(env, missing, false);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(none->has_value());
  auto named = LoadMachineConfig(env, missing, true);
  ASSERT_FALSE(named.ok());
  EXPECT_EQ(named.status().code(), Code::kNotFound);
  EXPECT_NE(named.status().message().find(missing), std::string::npos) << named.status().message();

  const std::string file = tmp / "d.conf";
  ds::test::WriteFile(file, "state-dir = /tmp/s\nbad line\n");
  auto bad = LoadMachineConfig(env, file, false);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), file + ":2: expected 'key = value', got 'bad line'");
  ds::test::WriteFile(file, "state-dir = /tmp/s\n");
  auto good = LoadMachineConfig(env, file, true);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  ASSERT_TRUE(good->has_value());
  EXPECT_EQ((*good)->Find("state-dir")->value, "/tmp/s");
}

// The file the package ships parses, and documents every key (commented out: an unconfigured
// machine behaves as without a file).
TEST(MachineConfigTest, ShippedFileParsesAndDocumentsEveryKey) {
  const std::string path = std::string(DISKSEAL_SOURCE_DIR) + "/packaging/diskseal.conf";
  auto cfg = LoadMachineConfig(*PosixEnv(), path, true);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_TRUE((*cfg)->entries.empty()) << "the shipped file sets nothing by default";
  const std::string text = ds::test::ReadFileOrDie(path);
  for (const auto& k : ConfigKeys())
    EXPECT_NE(text.find("\n# " + std::string(k.name) + " = "), std::string::npos) << k.name;
}

}  // namespace
}  // namespace ds::machine
