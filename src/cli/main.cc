// diskseal's entry point: builds the CLI from the command table, parses, runs one command, and
// turns its Status into one line on stderr and a documented exit code.
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "util/secure_buffer.h"

int main(int argc, char** argv) {
  ds::HardenProcess();
  CLI::App app{"diskseal: encrypt Linux disks in place into standard LUKS2"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "diskseal 0.1.0");
  ds::cli::Globals g;
  g.env = ds::PosixEnv();
  g.out = &std::cout;
  g.err = &std::cerr;
  std::vector<std::pair<CLI::App*, ds::cli::Runner>> runners;
  for (const auto& c : ds::cli::CommandTable()) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    runners.emplace_back(sub, c.setup(*sub, g));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  ds::Status s = ds::cli::Dispatch(std::move(runners))();
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
