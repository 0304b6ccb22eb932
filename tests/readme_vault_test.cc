// The README's key vault walkthrough, run as written against a real server on loopback: the
// first ```sh block of its "## Key vault" section, with only the server's address and data
// directory replaced (the test starts the server itself, on a free loopback port) and `diskseal`
// meaning the binary under test. Every line must succeed in order, so a token that cannot run the
// next command, or a flag that no longer exists, fails here.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "testlib.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

std::string WalkthroughBlock() {
  const std::string readme = ReadFileOrDie(std::string(DISKSEAL_SOURCE_DIR) + "/README.md");
  const size_t sec = readme.find("\n## Key vault");
  if (sec == std::string::npos) return "";
  const size_t start = readme.find("```sh\n", sec);
  const size_t end = start == std::string::npos ? start : readme.find("```\n", start + 6);
  if (end == std::string::npos) return "";
  return readme.substr(start + 6, end - start - 6);
}

TEST(ReadmeVaultTest, TheKeyVaultWalkthroughRunsAsWritten) {
  const std::string block = WalkthroughBlock();
  ASSERT_FALSE(block.empty()) << "no ```sh block in README's \"## Key vault\"";
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();

  // Lines with their continuations joined; the `vault serve` line is the server already started.
  std::vector<std::string> lines;
  std::istringstream in(block);
  std::string line, cur;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\\') {
      cur += line.substr(0, line.size() - 1);
      continue;
    }
    lines.push_back(cur + line);
    cur.clear();
  }
  ASSERT_FALSE(lines.empty());
  ASSERT_EQ(lines[0].rfind("diskseal vault serve --dir /var/lib/diskseal-vault", 0), 0u) << lines[0];
  std::string script = "set -euo pipefail\ncd '" + dir.path() + "'\n";
  const std::regex bin(R"((^|\| )diskseal )");
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string l = std::regex_replace(lines[i], std::regex("/var/lib/diskseal-vault"), vp.dir());
    l = std::regex_replace(l, std::regex("https://vault\\.example:8443"), vp.url());
    l = std::regex_replace(l, bin, std::string("$1") + DISKSEAL_BIN + " ");
    script += "echo '+ line " + std::to_string(i + 1) + "' >&2\n" + l + "\n";
  }
  RunResult r = RunProgram({"bash", "-c", script});
  ASSERT_EQ(r.exit_code, 0) << "README walkthrough failed:\n" << r.err << "\nscript:\n" << script;

  // What it did: the escrowed volume is pinned and its header escrowed with the host token; the
  // token revoked at the end no longer works.
  EXPECT_NE(r.err.find("passphrase and header escrowed and verified"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("final header escrowed"), std::string::npos) << r.err;
  RunResult dump = Diskseal({"dump", dir / "disk1.img", "--header", dir / "disk1.hdr"});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  EXPECT_NE(dump.out.find("diskseal-escrow"), std::string::npos) << dump.out;
  RunResult revoked = Diskseal({"vault", "secret", "get", "disk1", "--vault", vp.url(), "--vault-token-file",
                                dir / "host1.token", "--vault-ca", vp.ca()});
  EXPECT_EQ(revoked.exit_code, 2) << revoked.err;
}

}  // namespace
}  // namespace ds::test
