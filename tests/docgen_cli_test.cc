// Man pages and bash completion come from the same CLI11 tree as --help (src/cli/docgen.h): every
// command --help lists has a page, every flag a command's --help shows is in its page and in its
// completion words, and the completion script completes commands and flags in bash.
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "testlib.h"

namespace ds::test {
namespace {

// The subcommand names of `diskseal --help` ("Subcommands:" then "  name  summary" lines).
std::vector<std::string> CommandsFromHelp() {
  RunResult r = Diskseal({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> out;
  std::istringstream in(r.out);
  std::string line;
  bool in_subs = false;
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) { in_subs = true; continue; }
    std::smatch m;
    if (in_subs && std::regex_match(line, m, std::regex(R"(\s+([a-z][a-z0-9-]*)\s+.*)"))) out.push_back(m[1]);
  }
  return out;
}

// The long flags a command's --help shows (each command's help read once per test binary: the
// sanitizer build starts slowly).
std::set<std::string> FlagsFromHelp(const std::string& command) {
  static std::map<std::string, std::set<std::string>> cache;
  if (auto it = cache.find(command); it != cache.end()) return it->second;
  RunResult r = Diskseal({command, "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> out;
  std::regex flag(R"(--[a-z][a-z0-9-]*)");
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    // Only the option column (the first 30 characters), not flags named in descriptions.
    const std::string col = line.substr(0, std::min<size_t>(line.size(), 30));
    for (auto it = std::sregex_iterator(col.begin(), col.end(), flag); it != std::sregex_iterator(); ++it)
      out.insert(it->str());
  }
  cache[command] = out;
  return out;
}

std::string RoffEscaped(const std::string& flag) {
  std::string s;
  for (char c : flag) s += c == '-' ? std::string("\\-") : std::string(1, c);
  return s;
}

TEST(DocGen, EveryCommandHasAManPageWithEveryFlagOfItsHelp) {
  TempDir man;
  RunResult g = Diskseal({"--help-man", man.path()});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const std::vector<std::string> commands = CommandsFromHelp();
  ASSERT_GT(commands.size(), 20u);
  const std::string main_page = ReadFileOrDie(man / "diskseal.8");
  EXPECT_NE(main_page.find(".TH DISKSEAL 8"), std::string::npos);
  for (const std::string& c : commands) {
    EXPECT_NE(main_page.find("\\fB" + RoffEscaped(c) + "\\fR"), std::string::npos) << c << " not in diskseal(8)";
    const std::string page = ReadFileOrDie(man / ("diskseal-" + c + ".8"));
    for (const std::string& f : FlagsFromHelp(c))
      EXPECT_NE(page.find(RoffEscaped(f)), std::string::npos) << f << " of " << c << " not in its man page";
  }
  // Nested commands are sections of their command's page.
  EXPECT_NE(ReadFileOrDie(man / "diskseal-keyslot.8").find(".SH COMMAND keyslot add"), std::string::npos);
  // Machine commands document --config; the groff parser accepts every page without a warning.
  EXPECT_NE(ReadFileOrDie(man / "diskseal-enable.8").find("\\-\\-config"), std::string::npos);
  if (HaveProgram("groff")) {
    for (const std::string& c : commands) {
      RunResult w = RunProgram({"groff", "-man", "-Tutf8", "-ww", "-z", man / ("diskseal-" + c + ".8")});
      EXPECT_EQ(w.err, "") << c;
    }
  }
}

TEST(DocGen, BashCompletionCompletesCommandsAndEachCommandsFlags) {
  RunResult g = Diskseal({"--help-bash-completion"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  TempDir tmp;
  WriteFile(tmp / "diskseal.bash", g.out);
  auto complete = [&](const std::string& words, int cword) {
    RunResult r = RunProgram({"bash", "-c", "source " + (tmp / "diskseal.bash") + "; COMP_WORDS=(" + words +
                                                "); COMP_CWORD=" + std::to_string(cword) +
                                                "; _diskseal; printf '%s\\n' \"${COMPREPLY[@]}\""});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  EXPECT_EQ(complete("diskseal re", 1), "reencrypt\nresume\nrecover\nrepair\n");
  EXPECT_EQ(complete("diskseal keyslot a", 2), "add\n");
  // After a flag that takes a value, and before the command: the value is skipped.
  EXPECT_EQ(complete("diskseal enable --state-dir /x --volume-t", 4), "--volume-type\n");
  // The word after a value flag is left to bash's default (file names).
  EXPECT_EQ(complete("diskseal enable --config ''", 3), "\n");
  // Every flag of every command's --help completes from its own spelling (one bash per command:
  // each line is "flag: what completion offered").
  for (const std::string& c : CommandsFromHelp()) {
    std::string script = "source " + (tmp / "diskseal.bash") + "\n";
    const std::set<std::string> flags = FlagsFromHelp(c);
    for (const std::string& f : flags)
      script += "COMP_WORDS=(diskseal " + c + " " + f + "); COMP_CWORD=2; _diskseal; echo \"" + f + ": ${COMPREPLY[*]}\"\n";
    RunResult r = RunProgram({"bash", "-c", script});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::istringstream in(r.out);
    std::string line;
    size_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      const std::string f = line.substr(0, line.find(':'));
      EXPECT_NE((line.substr(line.find(':') + 1) + " ").find(" " + f + " "), std::string::npos) << c << ": " << line;
    }
    EXPECT_EQ(n, flags.size()) << c;
  }
}

}  // namespace
}  // namespace ds::test
