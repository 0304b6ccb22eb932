// The README's key vault walkthrough, run as written against a real server on loopback: the
// first ```sh block of its "## Key vault" section, with only the server's address and data
// directory replaced (the test starts the server itself, on a free loopback port) and `diskseal`
// meaning the binary under test. Every line must succeed in order, so a token that cannot run the
// next command, or a flag that no longer exists, fails here.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <sstream>

#include "testlib.h"
#include "util/bytes.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

// The first ```sh block after `heading` in README.md ("" when there is none).
std::string ShBlockAfter(const std::string& heading) {
  const std::string readme = ReadFileOrDie(std::string(DISKSEAL_SOURCE_DIR) + "/README.md");
  const size_t sec = readme.find("\n" + heading);
  if (sec == std::string::npos) return "";
  const size_t start = readme.find("```sh\n", sec);
  const size_t end = start == std::string::npos ? start : readme.find("```\n", start + 6);
  if (end == std::string::npos) return "";
  return readme.substr(start + 6, end - start - 6);
}

// A block's lines, continuations joined.
std::vector<std::string> JoinedLines(const std::string& block) {
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
  return lines;
}

TEST(ReadmeVaultTest, TheKeyVaultWalkthroughRunsAsWritten) {
  const std::string block = ShBlockAfter("## Key vault");
  ASSERT_FALSE(block.empty()) << "no ```sh block in README's \"## Key vault\"";
  // Break-glass continues the walkthrough (same directory, same shell variables): the escrowed
  // passphrase fetched, unwrapped and used by hand, as an operator would.
  const std::string glass = ShBlockAfter("### Break-glass");
  ASSERT_FALSE(glass.empty()) << "no ```sh block in README's \"### Break-glass\"";
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();

  // The `vault serve` line is the server already started.
  std::vector<std::string> lines = JoinedLines(block);
  ASSERT_FALSE(lines.empty());
  ASSERT_EQ(lines[0].rfind("diskseal vault serve --dir /var/lib/diskseal-vault", 0), 0u) << lines[0];
  const size_t walkthrough_lines = lines.size();
  for (const auto& l : JoinedLines(glass)) lines.push_back(l);
  std::string script = "set -euo pipefail\ncd '" + dir.path() + "'\n";
  const std::regex bin(R"((^|\| )diskseal )");
  // open/close keep their userspace views in the test's own directory, not /run/diskseal.
  const std::regex view(R"((^|\| )diskseal (open|close) )");
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string l = std::regex_replace(lines[i], std::regex("/var/lib/diskseal-vault"), vp.dir());
    l = std::regex_replace(l, std::regex("https://vault\\.example:8443"), vp.url());
    l = std::regex_replace(l, view, "$1diskseal $2 --run-dir '" + dir.path() + "/run' ");
    l = std::regex_replace(l, bin, std::string("$1") + DISKSEAL_BIN + " ");
    const std::string where = i < walkthrough_lines ? "walkthrough line " + std::to_string(i + 1)
                                                    : "break-glass line " + std::to_string(i - walkthrough_lines + 1);
    script += "echo '+ " + where + "' >&2\n" + l + "\n";
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
  // Break-glass opened and closed the view, and left no passphrase behind.
  EXPECT_NE(r.out.find("Opened disk1.img as"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Closed disk1"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir / "disk1.pass"));
  EXPECT_TRUE(std::filesystem::exists(dir / "disk1.wrapped"));
}

// `vault key unwrap` takes a wrapped value in every spelling the vault or a person hands over:
// base64 and base64url, with or without padding and a trailing newline.
TEST(ReadmeVaultTest, UnwrapTakesBase64AndBase64Url) {
  TempDir dir;
  VaultProcess vp(dir / "vault");
  vp.Start();
  const std::string ops = dir / "ops.token";
  ASSERT_EQ(Diskseal({"vault", "token", "create", "--dir", vp.dir(), "--name", "ops", "--allow", "all", "--out", ops}).exit_code, 0);
  const std::vector<std::string> v = {"--vault", vp.url(), "--vault-token-file", ops, "--vault-ca", vp.ca()};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), v.begin(), v.end());
    return a;
  };
  ASSERT_EQ(Diskseal(with({"vault", "key", "create", "kek"})).exit_code, 0);
  // Values whose wrapping gives '+', '/' and padding in some spelling: try a few until all occur.
  bool saw_std_only = false;
  for (int i = 0; i < 16 && !saw_std_only; ++i) {
    const std::string secret = "passphrase number " + std::to_string(i);
    RunResult w = Diskseal(with({"vault", "key", "wrap", "kek"}), secret);
    ASSERT_EQ(w.exit_code, 0) << w.err;
    std::string url = w.out.substr(0, w.out.find_first_of("\n"));
    Bytes raw = *Base64UrlDecode(url);
    const std::string std64 = Base64Encode(raw);
    saw_std_only = std64.find_first_of("+/") != std::string::npos;
    std::string padded_url = url;
    while (padded_url.size() % 4) padded_url += '=';
    std::string unpadded_std = std64;
    while (!unpadded_std.empty() && unpadded_std.back() == '=') unpadded_std.pop_back();
    for (const std::string& in : {url, url + "\n", padded_url + "\n", std64, std64 + "\n", unpadded_std, "  " + std64 + "\r\n"}) {
      RunResult u = Diskseal(with({"vault", "key", "unwrap", "kek"}), in);
      EXPECT_EQ(u.exit_code, 0) << in << ": " << u.err;
      EXPECT_EQ(u.out, secret) << in;
    }
  }
  EXPECT_TRUE(saw_std_only) << "no wrapped value had '+' or '/' in standard base64";
  RunResult bad = Diskseal(with({"vault", "key", "unwrap", "kek"}), "not base64 at all!\n");
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  EXPECT_NE(bad.err.find("vault key unwrap kek: stdin is not base64 or base64url"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace ds::test
