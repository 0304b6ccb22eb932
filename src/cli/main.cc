// diskseal's entry point: builds the CLI from the command table, parses, runs one command, and
// turns its Status into one line on stderr and a documented exit code.
#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdint>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/docgen.h"
#include "cli/machine_config.h"
#include "util/bytes.h"
#include "util/secure_buffer.h"

namespace {


// " (did you mean 'X'?)" for the candidate nearest to `word`, when one is near enough to be a
// typo (a prefix also counts: `--json-f` for `--json-file`).
std::string Suggest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    size_t d = c.rfind(word, 0) == 0 && word.size() >= 3 ? 1 : ds::EditDistance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  if (best.empty() || best_d > std::max<size_t>(2, word.size() / 3)) return "";
  return " (did you mean '" + best + "'?)";
}

// After CLI11 refused the command line: names the unknown command or flag, with the nearest known
// one. Empty when the problem is something else (a missing argument, a bad value).
std::string ExplainUnknown(CLI::App& app, int argc, char** argv) {
  CLI::App* cur = &app;
  std::string path = "diskseal";
  for (int i = 1; i < argc; ++i) {
    const std::string t = argv[i];
    if (t == "--") break;
    // A flag (not "-" for stdin, not a negative number given as a value).
    if (t.size() > 1 && t[0] == '-' && !std::isdigit(static_cast<unsigned char>(t[1]))) {
      const std::string name = t[1] == '-' ? t.substr(0, t.find('=')) : t.substr(0, 2);
      if (cur->get_option_no_throw(name)) continue;
      std::vector<std::string> known;
      for (const CLI::Option* o : cur->get_options()) {
        for (const auto& l : o->get_lnames()) known.push_back("--" + l);
        for (const auto& sn : o->get_snames()) known.push_back("-" + sn);
      }
      return "unknown flag " + name + " for '" + path + "'" + Suggest(name, known) + "; see " + path +
             " --help";
    }
    CLI::App* sub = nullptr;
    for (CLI::App* c : cur->get_subcommands({}))
      if (c->check_name(t)) sub = c;
    if (sub) {
      cur = sub;
      path += " " + t;
      continue;
    }
    if (cur->get_require_subcommand_min() > 0 && !cur->get_subcommands({}).empty() &&
        cur->get_subcommands([](CLI::App* a) { return a->parsed(); }).empty()) {
      std::vector<std::string> names;
      for (CLI::App* c : cur->get_subcommands({})) names.push_back(c->get_name());
      return "unknown command '" + t + "' for '" + path + "'" + Suggest(t, names) + "; see " + path +
             " --help";
    }
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  ds::HardenProcess();
  CLI::App app{"diskseal: encrypt Linux disks in place into standard LUKS2"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "diskseal " DISKSEAL_VERSION);
  ds::cli::Globals g;
  g.env = ds::PosixEnv();
  g.out = &std::cout;
  g.err = &std::cerr;
  std::vector<std::pair<CLI::App*, ds::cli::Runner>> runners;
  std::string config_path;  // --config of the one command parsed
  // Declaring every command's flags costs more than the rest of a short command's start (CLI11's
  // options: ~14,000 allocations, 0.1 s in the QEMU guest, where an online run's start is part of
  // the rate the bench measures). When argv[1] names a command, only that one is declared in full;
  // the others keep their name and summary. Otherwise (--help, a typo) all are, so that help and
  // "did you mean" see every flag.
  std::string chosen;
  if (argc >= 2)
    for (const auto& c : ds::cli::CommandTable())
      if (argv[1] == std::string_view(c.name)) chosen = c.name;
  for (const auto& c : ds::cli::CommandTable()) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    if (!chosen.empty() && chosen != c.name) continue;
    runners.emplace_back(sub, c.setup(*sub, g));
    if (ds::cli::ReadsMachineConfig(c.name)) ds::cli::AddConfigOption(*sub, config_path);
  }
  // Hidden: the man pages and bash completion, from this same tree (scripts/package).
  if (argc == 3 && std::string(argv[1]) == "--help-man") {
    ds::Status s = ds::cli::WriteManPages(*g.env, app, DISKSEAL_VERSION, argv[2]);
    if (!s.ok()) std::cerr << "diskseal: " << s.message() << "\n";
    return ds::ExitCode(s);
  }
  if (argc == 2 && std::string(argv[1]) == "--help-bash-completion") {
    std::cout << ds::cli::BashCompletion(app);
    return 0;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0) {
      const std::string unknown = ExplainUnknown(app, argc, argv);
      if (!unknown.empty()) {
        std::cerr << "diskseal: " << unknown << "\n";
        return 1;
      }
      // A refused value (--hotzone-size 0, --key-slot 40): one line naming the flag and the rule.
      if (dynamic_cast<const CLI::ValidationError*>(&e)) {
        std::cerr << "diskseal: " << e.what() << "\n";
        return 1;
      }
    }
    int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  // /etc/diskseal/diskseal.conf (or --config) fills the flags the command line did not give.
  ds::Status s = ds::Status::Ok();
  for (CLI::App* sub : app.get_subcommands())
    if (s.ok() && ds::cli::ReadsMachineConfig(sub->get_name())) s = ds::cli::ApplyMachineConfig(*g.env, *sub, config_path);
  if (s.ok()) s = ds::cli::Dispatch(std::move(runners))();
  std::cout.flush();
  if (s.ok()) return 0;
  std::cerr << "diskseal: " << s.message() << "\n";
  if (g.json) {
    nlohmann::ordered_json j;
    j["error"] = {{"code", ds::CodeName(s.code())},
                  {"exit_code", ds::ExitCode(s)},
                  {"message", s.message()}};
    std::cout << j.dump() << "\n";
  }
  return ds::ExitCode(s);
}
